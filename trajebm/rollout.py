"""Autoregressive rollout prediction for any trajectory model, with optional steering energies.

:func:`predict_rollouts` starts from k context states (original units), predicts ``horizon``
steps for ``samples`` particles per context in one batch, and returns them in original
units. For the EBM an ``extra_energy`` (e.g. :func:`goal_energy`) is added to the model's
energy at every step, so rollouts can be steered without retraining (a product of experts).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
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
from trajebm.models import ExtraEnergy, TrajectoryModel, load_model, rollout_z


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
    ``langevin_steps``/``temperature`` tune EBM sampling (temperature scales the ensemble's
    variance); ``extra_energy(states (N, D) original units, step) -> (N,)`` is added to the
    EBM's energy, N = batch * samples rows ordered batch-major. Returns a numpy array when
    ``context`` is one, else a CPU tensor. A ``seed`` makes the result reproducible. The
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
    if extra_energy is not None and model.kind != "ebm":
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
            if model.kind == "ensemble":
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


def rollout_dataset(model_path: str, data: str, out: str, horizon: int = 96, samples: int = 16,
                    episodes: int = 8, split: str = "test", langevin_steps: int | None = None,
                    temperature: float = 1.0, seed: int = 0, device: str = "cpu",
                    compile: bool | str = False) -> dict[str, Any]:
    """Predict rollouts from the first k states of ``episodes`` episodes of ``split`` (the
    split the model was trained on) and save an .npz."""
    model = load_model(model_path, device)
    k = model.config.context
    own = model.split
    ds = TrajectoryDataset(data, context=k, test_fraction=own["test_fraction"],
                           seed=own["seed"], dtype="float32")
    check_layout(model, ds.metadata["trajebm"]["state_names"])
    states, actions = ds.trajectories(split, limit=episodes)
    if not len(states):
        raise UsageError(f"the {split} split of {data} is empty")
    horizon = min(horizon, states.shape[1] - k)
    acts = actions[:, k - 1 : k - 1 + horizon] if model.config.conditional else None
    pred = predict_rollouts(model, states[:, :k], acts, horizon, samples, langevin_steps,
                            temperature, seed=seed, device=device, progress=True,
                            compile=compile)
    record = {"predicted": pred, "context": states[:, :k], "truth": states[:, k : k + horizon],
              "actions": np.zeros((0,)) if acts is None else acts,
              "model_kind": np.array(model.kind), "model_path": np.array(str(model_path)),
              "model_dataset_id": np.array(str(model.meta.get("dataset_id"))),
              "dataset_id": np.array(str(ds.metadata.get("dataset_id"))),
              "state_names": np.array(ds.metadata["trajebm"]["state_names"]),
              "seed": np.array(seed)}
    buf = io.BytesIO()
    np.savez(buf, **record)
    atomic_write_bytes(out, buf.getvalue())
    return {"out": out, "shape": pred.shape}


def run_rollout(args: argparse.Namespace) -> int:
    info = rollout_dataset(args.model, args.data, args.out, args.horizon, args.samples,
                           args.episodes, args.split, args.langevin_steps, args.temperature,
                           args.seed, args.device, args.compile)
    print(f"wrote predictions {tuple(info['shape'])} to {info['out']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm rollout``."""
    p = subparsers.add_parser("rollout", help="predict rollouts of a trained model on a dataset")
    p.add_argument("--model", required=True, help="run folder (or model.pt) of `trajebm train`")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--horizon", type=int, default=96)
    p.add_argument("--samples", type=int, default=16, help="samples per start context")
    p.add_argument("--episodes", type=int, default=8, help="start contexts (first episodes)")
    p.add_argument("--split", default="test", help="train | test | all")
    p.add_argument("--langevin-steps", type=int, default=None, help="EBM steps per state")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="compile the EBM's Langevin steps (torch.compile; optional MODE, e.g. "
                        "reduce-overhead for CUDA graphs on a GPU)")
    p.set_defaults(func=run_rollout)
