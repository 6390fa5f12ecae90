"""The flow-matching model: a bimodal conditional (where fc predicts the mean), the ODE
integrators, save -> load, `trajebm train --model flow` and a rollout. Exact resume:
tests/test_models.py (every variant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _traj_fixtures import small_dataset

from trajebm.cli import main
from trajebm.engine.errors import UsageError
from trajebm.modelio import load_model, save_model
from trajebm.models import FlowMatching, build_model, model_config
from trajebm.plan import BEST_PLANNER, PlanConfig, make_planner
from trajebm.variants import describe, variant_config

UP = 0.7
"""Given c, the next value is c + 1 with this probability, else c - 1."""
SAMPLES = 4000
TOLERANCE = 0.05
"""On the weight of the upper mode: the sampling error's sd is sqrt(0.21 / 4000) = 0.007, the
rest is what 1,500 steps of training leave (about 0.03 in trial runs)."""


def bimodal_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(next values (n, 1), conditions (n, 2) = [c, a]) with c, a ~ N(0, 1)."""
    cond = torch.randn(n, 2)
    sign = torch.where(torch.rand(n) < UP, 1.0, -1.0)
    return cond[:, :1] + sign[:, None], cond


def fit_bimodal(kind: str, steps: int = 1500):
    """A 1-D model of ``kind`` fitted to :func:`bimodal_batch` by its own loss and Adam."""
    torch.manual_seed(0)
    model = build_model(model_config(kind, state_dim=1, action_dim=1, context=1, hidden=64,
                                     layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, cond = bimodal_batch(256)
        opt.zero_grad()
        model.loss(x, cond).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def bimodal_flow() -> FlowMatching:
    return fit_bimodal("flow")


def test_flow_samples_both_modes_with_their_weights_where_fc_predicts_the_mean(bimodal_flow):
    c = 0.5
    cond = torch.tensor([[c, 0.3]]).repeat(SAMPLES, 1)
    torch.manual_seed(1)
    change = bimodal_flow.propose(cond)[:, 0] - c
    up, down = change[change > 0], change[change < 0]
    assert len(up) / SAMPLES == pytest.approx(UP, abs=TOLERANCE)
    assert up.mean().item() == pytest.approx(1.0, abs=0.1)
    assert down.mean().item() == pytest.approx(-1.0, abs=0.1)
    assert ((change.abs() - 1).abs() < 0.3).float().mean() > 0.95  # little mass between modes
    fc = fit_bimodal("fc")
    mean = fc.propose(cond[:1])[0, 0].item() - c
    assert mean == pytest.approx(2 * UP - 1, abs=0.1)  # the mean, c + 0.4: no mode at all


def test_more_integration_steps_converge_and_midpoint_beats_euler(bimodal_flow):
    model = bimodal_flow
    cond = torch.tensor([[0.5, 0.3]]).repeat(500, 1)
    x0 = torch.randn(500, 1, generator=torch.Generator().manual_seed(2))
    model.config.integrator = "midpoint"
    exact = model.integrate(x0, cond, 400)
    errors = {}
    for integrator in ("euler", "midpoint"):
        model.config.integrator = integrator
        errors[integrator] = [(model.integrate(x0, cond, n) - exact).abs().mean().item()
                              for n in (2, 5, 20, 80)]
    for errs in errors.values():
        assert errs == sorted(errs, reverse=True) and errs[-1] < 0.02
    assert all(m < e for m, e in zip(errors["midpoint"], errors["euler"], strict=True))


def test_save_load_gives_identical_samples(bimodal_flow, tmp_path):
    save_model(bimodal_flow, tmp_path / "model.pt")
    loaded = load_model(tmp_path)
    assert loaded.config == bimodal_flow.config and isinstance(loaded, FlowMatching)
    cond = torch.randn(64, 2)
    torch.manual_seed(3)
    a = bimodal_flow.propose(cond)
    torch.manual_seed(3)
    b = loaded.propose(cond)
    assert torch.equal(a, b)
    with pytest.raises(UsageError, match=">= 1 integration steps"):
        loaded.propose(cond, steps=0)


def test_config_checks_and_variants():
    with pytest.raises(UsageError, match="integrator must be one of euler, midpoint"):
        model_config("flow", integrator="rk4")
    with pytest.raises(UsageError, match="ode_steps >= 1"):
        model_config("flow", ode_steps=0)
    assert describe()["flow-uncond"]["model.conditional"] is False
    cfg = variant_config("flow:segment=3,ode_steps=5,integrator=euler")
    assert (cfg.model.segment, cfg.model.ode_steps, cfg.model.integrator) == (3, 5, "euler")
    assert cfg.train == variant_config("fc").train  # the same training budget as fc


TINY = "hidden=32,layers=2,warmup_steps=2,checkpoint_every=1000,validate_every=0,batch_size=64"


@pytest.mark.parametrize("spec", ["flow:", "flow-uncond:", "flow:segment=3,integrator=euler,"])
def test_flow_trains_from_the_command_line_and_rolls_out(tmp_path_factory, tmp_path, spec):
    data = small_dataset(tmp_path_factory.getbasetemp())
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", spec + TINY, "--steps", "6",
                 "--out", str(run), "--quiet"]) == 0
    model = load_model(run)
    assert model.kind == "flow" and not model.energy_based and not model.deterministic
    out = tmp_path / "pred.npz"
    assert main(["rollout", "--model", str(run), "--data", str(data), "--horizon", "7",
                 "--samples", "3", "--episodes", "2", "--out", str(out)]) == 0
    pred = np.load(out)["predicted"]
    assert pred.shape == (2, 3, 7, 31) and np.isfinite(pred).all()
    assert not np.array_equal(pred[:, 0], pred[:, 1])  # samples, not copies



def test_flow_plans_with_sampling_planners_only():
    model = build_model(model_config("flow", hidden=8, layers=1))
    cfg = PlanConfig()
    assert BEST_PLANNER["flow"] == "mppi"
    assert make_planner("mppi", cfg, model, None).name == "mppi"
    with pytest.raises(UsageError, match="the flow model samples them"):
        make_planner("shooting", cfg, model, None)
    with pytest.raises(UsageError, match="needs an energy"):
        make_planner("langevin", cfg, model, None)
