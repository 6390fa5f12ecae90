"""Autoregressive rollout prediction for any trajectory model, with optional steering energies.

:func:`rollout_z` is the one rollout loop (in z units: each step the model proposes the next
state or segment from the last k, and the window slides on). :func:`predict_rollouts` is its
public face: it starts from k context states (original units), predicts ``horizon`` steps for
``samples`` particles per context in one batch, and returns them in original units. For an
EBM an ``extra_energy`` (e.g. :func:`goal_energy`) is added to the model's energy at every
step, so rollouts can be steered without retraining (a product of experts).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from trajebm.data.dataset import TrajectoryDataset
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes
from trajebm.engine.sampling import COMPILE_MODES
from trajebm.modelio import load_model
from trajebm.models import GaussianEnsemble, TrajectoryModel

ExtraEnergy = Callable[[Tensor, int], Tensor]
"""``extra(states (N, D) in original units, step) -> (N,)``: added to an EBM's energy."""


def rollout_z(model: TrajectoryModel, window: Tensor, actions: Tensor | None, horizon: int, *,
              steps: int | None = None, temperature: float = 1.0,
              extra: Callable[[Tensor, int], Tensor] | None = None,
              members: Tensor | None = None, progress: Callable[[int], None] | None = None,
              compile: bool | str = False) -> Tensor:
    """The one autoregressive rollout loop, in z units: (N, horizon, D) from (N, k, D).

    ``actions`` (N, >= horizon, A) start at a_t; a segment model that would need actions past
    the last one given repeats it (those extra predictions are dropped). ``extra(x, t)`` adds
    an energy on a z-scored state (N, D) predicted for step ``t`` (EBMs only). ``compile``
    runs an EBM's Langevin steps compiled (compiled once, reused by every step); with ``extra``
    they run eager, as its step index would make every rollout step a new compilation.
    """
    h, d, k = model.config.segment, model.config.state_dim, model.config.context
    out: list[Tensor] = []
    t = 0
    while t < horizon:
        act = None
        if actions is not None:
            act = actions[:, t : t + h]
            if act.shape[1] < h:
                act = torch.cat([act, act[:, -1:].expand(-1, h - act.shape[1], -1)], 1)
        cond = model.make_cond(window, act)
        seg_extra = None
        if extra is not None:
            def seg_extra(x: Tensor, _cond: Tensor | None, t0: int = t) -> Tensor:
                return sum(extra(x[:, j * d : (j + 1) * d], t0 + j) for j in range(h))
        nxt = model.propose(cond, steps=steps, temperature=temperature, extra=seg_extra,
                            members=members, compile=compile and seg_extra is None
                            ).detach().view(len(window), h, d)
        out.append(nxt)
        window = torch.cat([window, nxt], 1)[:, -k:]
        t += h
        if progress is not None:
            progress(h)
    return torch.cat(out, 1)[:, :horizon]


def _tensor(value: Any, name: str, device: torch.device) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(value, dtype=np.float32) if not torch.is_tensor(value)
                            else value, dtype=torch.float32, device=device)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{name}: not a numeric array ({err})") from None
    if not torch.isfinite(t).all():
        raise UsageError(f"{name} contains NaN or inf")
    return t


def check_inputs(model: TrajectoryModel, context: Tensor, actions: Tensor | None,
                 horizon: int | None) -> tuple[Tensor, int]:
    """Validate shapes against the model; return the last k context states and the horizon."""
    cfg = model.config
    if context.dim() != 3:
        raise UsageError(f"context must be (batch, k, state_dim), got shape {tuple(context.shape)}")
    if context.shape[2] != cfg.state_dim:
        raise UsageError(f"context states have {context.shape[2]} dims but the model expects "
                         f"{cfg.state_dim}: state layouts differ")
    if context.shape[1] < cfg.context:
        raise UsageError(f"context has {context.shape[1]} states; the model needs k = "
                         f"{cfg.context}")
    if cfg.conditional and actions is None:
        raise UsageError("this model is action-conditional: give actions (batch, horizon, A)")
    if not cfg.conditional and actions is not None:
        raise UsageError("this model is unconditional: it takes no actions")
    if actions is not None:
        if actions.dim() != 3 or actions.shape[0] != context.shape[0]:
            raise UsageError(f"actions must be (batch={context.shape[0]}, horizon, "
                             f"{cfg.action_dim}), got shape {tuple(actions.shape)}")
        if actions.shape[2] != cfg.action_dim:
            raise UsageError(f"actions have {actions.shape[2]} dims; the model expects "
                             f"{cfg.action_dim}")
        horizon = actions.shape[1] if horizon is None else horizon
        if horizon > actions.shape[1]:
            raise UsageError(f"horizon {horizon} needs {horizon} actions, got {actions.shape[1]}")
    if horizon is None:
        raise UsageError("give a horizon for an unconditional model")
    if horizon <= 0:
        raise UsageError(f"horizon must be positive, got {horizon}")
    return context[:, -cfg.context:], int(horizon)


def predict_rollouts(
    model: TrajectoryModel,
    context: Any,
    actions: Any = None,
    horizon: int | None = None,
    samples: int = 1,
    langevin_steps: int | None = None,
    temperature: float = 1.0,
    extra_energy: ExtraEnergy | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    compile: bool | str = False,
) -> Any:
    """Predicted trajectories (batch, samples, horizon, state_dim) in original units.

    ``context`` (batch, >=k, D) in original units; ``actions`` (batch, >=horizon, A) for
    action-conditional models (a_t follows the last context state), None otherwise.
    ``langevin_steps``/``temperature`` tune EBM sampling (for a flow: its ODE steps and the
    variance of its noise; temperature scales the ensemble's variance);
    ``extra_energy(states (N, D) original units, step) -> (N,)`` is added to the EBM's energy,
    N = batch * samples rows ordered batch-major. Returns a numpy array when ``context`` is
    one, else a CPU tensor. A ``seed`` makes the result reproducible. The
    model is left on its device and in its train/eval mode. ``compile`` (True or a
    ``torch.compile`` mode such as ``"reduce-overhead"`` for CUDA graphs) runs the EBM's
    Langevin steps compiled: the same chains to float rounding, faster after a compilation of
    a few seconds (worth it for long rollouts or many calls with one batch size).
    """
    if samples <= 0:
        raise UsageError(f"samples must be positive, got {samples}")
    if temperature <= 0:
        raise UsageError(f"temperature must be positive, got {temperature}")
    if langevin_steps is not None and langevin_steps < 0:
        raise UsageError(f"langevin_steps must be >= 0, got {langevin_steps}")
    if not isinstance(compile, bool) and compile not in COMPILE_MODES:
        raise UsageError(f"compile must be true, false or one of {', '.join(COMPILE_MODES)}, "
                         f"not {compile!r}")
    if extra_energy is not None and not model.energy_based:
        raise UsageError(f"extra_energy steers EBM sampling; the {model.kind} model has no energy")
    home, was_training = model.state_mean.device, model.training
    device = resolve_device(device) if device is not None else home
    as_numpy = not torch.is_tensor(context)
    ctx = _tensor(context, "context", device)
    act = None if actions is None else _tensor(actions, "actions", device)
    ctx, horizon = check_inputs(model, ctx, act, horizon)
    b = len(ctx)
    extra = None
    if extra_energy is not None:
        def extra(x: Tensor, t: int) -> Tensor:
            return extra_energy(model.denormalize(x), t)
    devices = [device] if device.type == "cuda" else []
    try:
        model.to(device).eval()
        window = model.normalize(ctx).repeat_interleave(samples, 0)
        act = None if act is None else act.repeat_interleave(samples, 0)
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), \
                tqdm(total=horizon, desc=f"rollout {model.kind}", disable=not progress,
                     leave=False) as bar:
            if seed is not None:
                torch.manual_seed(seed)
            members = None
            if isinstance(model, GaussianEnsemble):
                members = torch.randint(model.config.members, (len(window),), device=device)
            pred = rollout_z(model, window, act, horizon, steps=langevin_steps,
                             temperature=temperature, extra=extra, members=members,
                             progress=bar.update, compile=compile)
            pred = model.denormalize(pred).reshape(b, samples, horizon, -1).cpu()
    finally:
        model.to(home).train(was_training)
    return pred.numpy() if as_numpy else pred


GOAL_BOUNDS = ("equal", "above", "below")


def goal_energy(goal: Any, dims: Sequence[int], weight: float = 1.0,
                scale: Any = None, bound: str = "equal") -> ExtraEnergy:
    """A quadratic steering energy ``weight * sum(((s[dims] - goal) / scale)^2)``.

    ``goal`` is (len(dims),) or (N, len(dims)) in original units; ``scale`` (default 1)
    sets the per-dimension tolerance, e.g. the model's ``state_std[dims]``. ``bound="above"``
    (``"below"``) penalises only values under (over) the goal: a one-sided constraint such as
    "keep the object above this height". The sampler runs in z units, where this pull has
    stiffness ``weight * (std / scale)**2``: with the paper's step size 1 keep that below 1
    (0.1-0.5 pulls softly to firmly; >= 1 oscillates).
    """
    if bound not in GOAL_BOUNDS:
        raise UsageError(f"bound must be one of {', '.join(GOAL_BOUNDS)}, not {bound!r}")
    dims = list(dims)
    g = torch.as_tensor(np.asarray(goal, dtype=np.float32))
    s = torch.ones(len(dims)) if scale is None else torch.as_tensor(
        np.asarray(scale, dtype=np.float32))
    if g.shape[-1] != len(dims) or s.shape[-1] != len(dims):
        raise UsageError(f"goal and scale need {len(dims)} entries (one per dim)")

    def energy(states: Tensor, step: int) -> Tensor:
        d = (states[:, dims] - g.to(states.device)) / s.to(states.device)
        if bound == "above":
            d = d.clamp(max=0.0)
        elif bound == "below":
            d = d.clamp(min=0.0)
        return weight * d.pow(2).sum(1)

    return energy


def check_layout(model: TrajectoryModel, state_names: Sequence[str], where: str = "dataset"
                 ) -> None:
    """Raise :class:`UsageError` unless the model was trained on the same state layout."""
    names = model.state_names
    if names is not None and list(names) != list(state_names):
        raise UsageError(f"model and {where} have different state layouts "
                         f"({len(names)} vs {len(state_names)} dims); use a model trained on "
                         f"this kind of data")


def usable_horizon(horizon: int, length: int, context: int) -> int:
    """``horizon``, or the most steps episodes of ``length`` states allow after ``context``
    states — with a warning that says how many steps are predicted instead."""
    most = length - context
    if most < 1:
        raise UsageError(f"episodes of {length} states leave no step to predict after "
                         f"k = {context} context states")
    if horizon > most:
        warnings.warn(f"horizon {horizon} is longer than the data allows: predicting {most} "
                      f"steps (episodes of {length} states, k = {context} context states)",
                      stacklevel=2)
        return most
    return horizon


@dataclass
class RolloutConfig:
    """Rollouts of a saved model from the starts of a dataset's episodes."""

    horizon: int = 96
    """Predicted steps per rollout."""
    samples: int = 16
    """Samples per start context."""
    episodes: int = 8
    """Start contexts: the first episodes of the split."""
    split: str = "test"
    """train | val | test | all, of the split the model was trained on."""
    langevin_steps: int | None = None
    """Sampler steps per predicted state: an EBM's Langevin steps, a flow's ODE steps
    (default: as trained)."""
    temperature: float = 1.0
    """Sampler temperature (for the ensemble: the variance's factor)."""
    seed: int = 0
    """Seeds the samples."""
    device: str = "cpu"
    """cpu | cuda."""
    compile: bool | str = False
    """Compile the EBM's Langevin steps (True or a torch.compile mode)."""

    def __post_init__(self) -> None:
        if self.horizon <= 0 or self.samples <= 0 or self.episodes <= 0:
            raise UsageError("horizon, samples and episodes must be positive")


def rollout_dataset(model_path: str | os.PathLike, data: str | os.PathLike,
                    out: str | os.PathLike, config: RolloutConfig | None = None
                    ) -> dict[str, Any]:
    """Predict rollouts from the first k states of ``config.episodes`` episodes of
    ``config.split`` (of the split the model was trained on) and save them as an .npz."""
    cfg = config or RolloutConfig()
    model = load_model(model_path, cfg.device)
    k = model.config.context
    own = model.split
    ds = TrajectoryDataset(data, context=k, test_fraction=own["test_fraction"],
                           seed=own["seed"], dtype="float32")
    check_layout(model, ds.state_names)
    states, actions = ds.trajectories(cfg.split, limit=cfg.episodes)
    if not len(states):
        raise UsageError(f"the {cfg.split} split of {data} is empty")
    horizon = usable_horizon(cfg.horizon, states.shape[1], k)
    acts = actions[:, k - 1 : k - 1 + horizon] if model.config.conditional else None
    pred = predict_rollouts(model, states[:, :k], acts, horizon, cfg.samples,
                            cfg.langevin_steps, cfg.temperature, seed=cfg.seed,
                            device=cfg.device, progress=True, compile=cfg.compile)
    record = {"predicted": pred, "context": states[:, :k], "truth": states[:, k : k + horizon],
              "actions": np.zeros((0,)) if acts is None else acts,
              "model_kind": np.array(model.kind), "model_path": np.array(str(model_path)),
              "model_dataset_id": np.array(str(model.meta.get("dataset_id"))),
              "dataset_id": np.array(str(ds.info.dataset_id)),
              "state_names": np.array(ds.state_names),
              "seed": np.array(cfg.seed)}
    buf = io.BytesIO()
    np.savez(buf, **record)
    atomic_write_bytes(out, buf.getvalue())
    return {"out": str(out), "shape": pred.shape, "horizon": horizon}
