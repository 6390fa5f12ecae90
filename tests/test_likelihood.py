"""AIS against known normalising constants, its input checks, and `imagebm likelihood`."""

import json
import math
from dataclasses import replace

import pytest
import torch
from _image_fixtures import tiny_digits_run

from imagebm.cli import main
from imagebm.likelihood import bits_per_dim, image_likelihood
from imagebm.models import ImageEBMConfig, build_model
from imagebm.train import ImageRun, preset
from trajebm.engine.errors import UsageError
from trajebm.likelihood import ais, beta_schedule

DIM, SCALE, SHIFT = 4, 0.5, 1.0
TRUE_LOG_Z = 0.5 * DIM * math.log(2 * math.pi * SCALE**2)


def gaussian(x, cond=None):
    return ((x - SHIFT) ** 2).sum(1) / (2 * SCALE**2)


def exact_samples(n):
    return SHIFT + SCALE * torch.randn(n, DIM, generator=torch.Generator().manual_seed(1))


def bracket(result, sigmas=3.0):
    return (result.lower - sigmas * result.lower_stderr <= TRUE_LOG_Z
            <= result.upper + sigmas * result.upper_stderr)


def test_bounds_bracket_a_gaussians_log_z_and_tighten_with_more_steps():
    runs = {k: ais(gaussian, (DIM,), num_chains=200, steps=k, leapfrog_steps=5, step_size=0.3,
                   target_samples=exact_samples(200)) for k in (10, 200)}
    for r in runs.values():
        assert r.upper_from == "target_samples" and bracket(r), r.summary()
        assert r.lower <= r.log_z
    short, long = runs[10], runs[200]
    assert long.upper - long.lower < 0.5 * (short.upper - short.lower)
    assert abs(long.log_z - TRUE_LOG_Z) < abs(short.log_z - TRUE_LOG_Z)
    assert abs(long.log_z - TRUE_LOG_Z) < 0.1


def test_a_box_is_integrated_over_exactly():
    # N(0, 1) truncated to [0, 2] and the uniform density on [0, 1]^3 (log Z = 0)
    truncated = math.log(math.sqrt(2 * math.pi) * 0.5 * math.erf(2 / math.sqrt(2)))
    r = ais(lambda x, c=None: 0.5 * x.pow(2).sum(1), (1,), num_chains=200, steps=100,
            leapfrog_steps=5, bounds=(0.0, 2.0))
    assert abs(r.log_z - truncated) < 0.03 and r.upper_from == "forward_resampled"
    assert ((r.samples >= 0) & (r.samples <= 2)).all()
    flat = ais(lambda x, c=None: x.sum((1, 2)) * 0, (3, 2), num_chains=100, steps=50,
               leapfrog_steps=5, bounds=(0.0, 1.0), target_samples=torch.rand(100, 3, 2))
    assert abs(flat.log_z) < 0.05 and flat.lower <= 0.05 and flat.upper >= -0.05


def test_conditions_are_per_chain_and_runs_are_seeded():
    def scaled(x, cond):
        return 0.5 * (x / cond.view(-1, 1)).pow(2).sum(1)

    cond = torch.tensor([0.5, 2.0]).repeat_interleave(100)
    state = torch.random.get_rng_state()
    r = ais(scaled, (2,), num_chains=200, steps=100, leapfrog_steps=5, cond=cond,
            reverse=False, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    per_cond = torch.logsumexp(r.log_weights.view(2, 100), 1) - math.log(100)
    truth = torch.tensor([2 * math.log(2 * math.pi * s**2) / 2 for s in (0.5, 2.0)])
    assert torch.allclose(per_cond.float(), truth, atol=0.1), per_cond
    again = ais(scaled, (2,), num_chains=200, steps=100, leapfrog_steps=5, cond=cond,
                reverse=False, seed=3)
    assert torch.equal(r.log_weights, again.log_weights) and r.upper is None


def test_schedules_rise_from_zero_to_one():
    for name in ("sigmoid", "linear"):
        b = beta_schedule(50, name)
        assert len(b) == 51 and b[0] == 0 and b[-1] == 1
        assert all(x < y for x, y in zip(b[:-1], b[1:], strict=True))
    assert beta_schedule(2, [0.0, 0.3, 1.0]) == [0.0, 0.3, 1.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_chains=0), "num_chains"),
    (dict(steps=0), "steps"),
    (dict(shape=()), "shape"),
    (dict(shape=(2, -1)), "shape"),
    (dict(shape="ab"), "shape"),
    (dict(init_std=0.0), "init_std"),
    (dict(target_samples=torch.zeros(5, 3)), "target_samples"),
    (dict(cond=torch.zeros(3)), "cond has 3 rows"),
    (dict(schedule="cosine"), "schedule"),
    (dict(schedule=[0.0, 1.0]), "schedule"),
    (dict(bounds=(1.0, 0.0)), "bounds"),
])
def test_bad_settings_raise_one_line_usage_errors(kwargs, message):
    args = {"shape": (DIM,), "num_chains": 4, "steps": 2, **kwargs}
    with pytest.raises(UsageError, match=message) as err:
        ais(gaussian, args.pop("shape"), **args)
    assert "\n" not in str(err.value)


def test_bits_per_dim_of_the_uniform_density_is_eight():
    assert bits_per_dim(0.0, 64) == pytest.approx(8.0)
    assert bits_per_dim(64 * math.log(2), 64) == pytest.approx(7.0)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("likelihood") / "run", steps=4,
                           chain_steps=5)


def check_scores(part):
    nats, bpd = part["log_likelihood_nats"], part["bits_per_dim"]
    assert nats["estimate"] <= nats["upper"] and bpd["lower"] <= bpd["estimate"]
    assert all(math.isfinite(v) for v in (*nats.values(), *bpd.values()))


def test_cli_bounds_a_conditional_digits_run(digits_run, tmp_path):
    out = tmp_path / "lik"
    assert main(["likelihood", "--run", str(digits_run), "--out", str(out), "--num", "40",
                 "--chains", "3", "--steps", "8", "--leapfrog-steps", "2"]) == 0
    report = json.loads((out / "likelihood.json").read_text())
    assert report["dimensions"] == 64 and report["test_images"] == 40
    assert report["uniform_bits_per_dim"] == pytest.approx(8.0)
    for part in ("conditional", "marginal"):
        check_scores(report[part])
    assert len(report["log_z_per_class"]["estimate"]) == 10
    assert (out / "run.json").exists()


def test_an_unconditional_model_is_scored_against_one_log_z(digits_run):
    cfg = replace(preset("digits"), conditional=False)
    torch.manual_seed(0)
    model = build_model(ImageEBMConfig(arch="small", image_size=8, channels=1, width=8))
    report = image_likelihood(ImageRun(digits_run, cfg, model, {}), num=10, chains=4, ais_steps=5,
                              leapfrog_steps=2)
    check_scores(report["unconditional"])
    assert report["log_z"]["settings"]["bounds"] == [0.0, 1.0]


def test_cli_rejects_bad_settings_with_one_line(digits_run, tmp_path, capsys):
    code = main(["likelihood", "--run", str(digits_run), "--out", str(tmp_path / "o"),
                 "--num", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "num must be positive" in lines[0]
    assert not (tmp_path / "o").exists()
