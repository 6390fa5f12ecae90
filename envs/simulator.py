"""Batched MuJoCo stepping of a Shadow-hand env: the public simulator API.

:class:`Simulator` steps many episodes at once, in the env's own physics (its ``n_substeps``
MuJoCo steps per action, its control mapping) but outside gymnasium:

* :meth:`Simulator.step` sets the simulator to given state vectors and steps each under its
  action (what a physics-consistency check of predicted states needs);
* :meth:`Simulator.rollout` simulates open-loop action sequences from full physics states with
  ``mujoco.rollout`` on all worker threads;
* :meth:`Simulator.closed_loop` steps states that a callback turns into actions at every step,
  with ``mujoco.batch`` (mujoco >= 4.0);
* :meth:`Simulator.snapshot` captures the states those start from (e.g. right after
  ``env.reset(seed)``).

All of them equal stepping the gymnasium env (tested), whatever the number of workers.
:meth:`Simulator.rollout` and :meth:`Simulator.closed_loop` also take one ``MjModel`` per
episode (copies of the env's with other parameters, e.g. hidden physics in collection).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout

from trajebm.envs.shadow_hand import ShadowHandEnv, StateLayout, control_from_action

FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS
INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION
Act = Callable[[np.ndarray, int], np.ndarray]
"""``act(states (B, D), t) -> actions (B, A)``: the actions applied at step ``t``."""


class Simulator:
    """Steps batches of Shadow-hand states in the physics of ``env`` on ``workers`` threads.

    Parts of the physics state a state vector does not hold (time, actuator activations, the
    goal's mocap body, and velocities unless the layout has them) come from ``env``'s current
    state; :meth:`make` resets a new env with a seed to fix them.
    """

    def __init__(self, env: ShadowHandEnv, workers: int = 1, owns_env: bool = False) -> None:
        if workers <= 0:
            raise ValueError(f"workers must be positive, got {workers}")
        self.env = env
        self.model = env.model
        self.workers = workers
        self._owns_env = owns_env
        self._qpos_at = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_TIME)
        self._qvel_at = self._qpos_at + self.model.nq
        self._pool = rollout.Rollout(nthread=workers)
        self._datas = [mujoco.MjData(self.model) for _ in range(workers)]
        self._scratch = mujoco.MjData(self.model)

    @classmethod
    def make(cls, env_id: str, include_velocities: bool = False, workers: int = 1,
             seed: int = 0) -> Simulator:
        """A simulator of a new env ``env_id`` reset with ``seed`` (closed with the simulator)."""
        env = gym.make(env_id, include_velocities=include_velocities).unwrapped
        env.reset(seed=seed)
        return cls(env, workers, owns_env=True)

    @property
    def layout(self) -> StateLayout:
        """Where the state vector's entries live in MuJoCo's ``qpos`` / ``qvel``."""
        return self.env.layout

    @property
    def state_size(self) -> int:
        """Length of a full physics state (what :meth:`rollout` starts from)."""
        return mujoco.mj_stateSize(self.model, FULL)

    def close(self) -> None:
        """Stop the worker threads (and close the env if this simulator made it)."""
        self._pool.close()
        if self._owns_env:
            self.env.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(full physics state, solver warm-start, integration state) of ``data``."""
        full = np.empty(self.state_size)
        mujoco.mj_getState(self.model, data, full, FULL)
        integration = np.empty(mujoco.mj_stateSize(self.model, INTEGRATION))
        mujoco.mj_getState(self.model, data, integration, INTEGRATION)
        return full, data.qacc_warmstart.copy(), integration

    def physics_states(self, states: np.ndarray) -> np.ndarray:
        """Full physics states (N, :attr:`state_size`) set to the state vectors ``states``
        (N, D): velocities zero unless the state holds them, the rest as in the env now."""
        full = np.empty((len(states), self.state_size))
        mujoco.mj_getState(self.model, self.env.data, full[0], FULL)
        full[:] = full[0]
        data, nq, nv = self._scratch, self.model.nq, self.model.nv
        for i, state in enumerate(states):
            data.qpos[:] = self.env.data.qpos
            self.layout.write_state(self.model, data, state)
            full[i, self._qpos_at : self._qpos_at + nq] = data.qpos
            full[i, self._qvel_at : self._qvel_at + nv] = data.qvel
        return full

    def rollout(self, initial: np.ndarray, warmstart: np.ndarray, actions: np.ndarray,
                models: list[mujoco.MjModel] | None = None) -> np.ndarray:
        """States (B, T+1, D) from full physics states ``initial`` under ``actions`` (B, T, A),
        episode i on ``models[i]`` if given (models of the env's sizes), else on the env's."""
        nsub = self.env.n_substeps
        ctrl = np.repeat(control_from_action(self.model, actions), nsub, axis=1)
        full, _ = self._pool.rollout(models or self.model, self._datas, initial, ctrl,
                                     initial_warmstart=warmstart)
        full = np.concatenate([initial[:, None], full[:, nsub - 1 :: nsub]], axis=1)
        qpos = full[..., self._qpos_at : self._qpos_at + self.model.nq]
        qvel = full[..., self._qvel_at : self._qvel_at + self.model.nv]
        return self.layout.state_from_qpos_qvel(qpos, qvel)

    def step(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Next states (N, D) after one env step from ``states`` (N, D) under ``actions``
        (N, A), each simulated from rest as :meth:`physics_states` sets it."""
        warmstart = np.zeros((len(states), self.model.nv))
        return self.rollout(self.physics_states(states), warmstart, actions[:, None])[:, 1]

    def closed_loop(self, initial: np.ndarray, length: int, act: Act, *,
                    physics: bool = False, models: list[mujoco.MjModel] | None = None
                    ) -> np.ndarray:
        """States (B, T+1, D) from integration states ``initial`` (B, ...) over ``length``
        steps, the actions of each step chosen by ``act`` from the states reached so far;
        episode i runs on ``models[i]`` if given, else on the env's model.

        With ``physics`` the callback also gets the batch's integration states,
        ``act(states, t, integration)``, for a policy that simulates ahead (see
        :meth:`physics_from_integration`).
        """
        from mujoco.batch import Batch

        batch = Batch(self.model, len(initial), nthread=self.workers)
        if models is not None:
            batch.set_models(models)
        batch.state[:] = initial
        qpos, qvel, ctrl = batch.bind("qpos"), batch.bind("qvel"), batch.bind("ctrl")
        states = np.empty((len(initial), length + 1, self.layout.dim))
        states[:, 0] = self.layout.state_from_qpos_qvel(qpos, qvel)
        for t in range(length):
            chosen = act(states[:, t], t, np.array(batch.state)) if physics else \
                act(states[:, t], t)
            ctrl[:] = control_from_action(self.model, chosen)
            batch.step(nstep=self.env.n_substeps)
            states[:, t + 1] = self.layout.state_from_qpos_qvel(qpos, qvel)
        return states

    def physics_from_integration(self, integration: np.ndarray
                                 ) -> tuple[np.ndarray, np.ndarray]:
        """(full physics states, solver warm-starts) of integration states (B, ...): what
        :meth:`rollout` starts from."""
        full = np.empty((len(integration), self.state_size))
        warmstart = np.empty((len(integration), self.model.nv))
        data = self._scratch
        for i, state in enumerate(integration):
            mujoco.mj_setState(self.model, data, state, INTEGRATION)
            mujoco.mj_getState(self.model, data, full[i], FULL)
            warmstart[i] = data.qacc_warmstart
        return full, warmstart

    def state_vectors(self, integration: np.ndarray) -> np.ndarray:
        """The state vectors (B, D) of integration states (B, ...)."""
        data = self._scratch
        out = np.empty((len(integration), self.layout.dim))
        for i, state in enumerate(integration):
            mujoco.mj_setState(self.model, data, state, INTEGRATION)
            out[i] = self.layout.state_from_qpos_qvel(data.qpos, data.qvel)
        return out
