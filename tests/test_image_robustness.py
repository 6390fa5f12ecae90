"""Adversarial robustness: PGD and the gradient-free attack, gradients through the Langevin
refinement, and `imagebm robustness` end to end on a tiny digits run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagebm.attacks import attack_loss, pgd, robust_accuracy, square_attack
from imagebm.classify import EnergyClassifier
from imagebm.cli import main
from imagebm.datasets import load_dataset
from imagebm.models import ImageEBMConfig, build_model
from imagebm.train import preset, train_images
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import LangevinConfig, langevin


@pytest.fixture(scope="module")
def digits():
    """A small softmax MLP trained on scikit-learn digits, with 200 of its test images."""
    torch.manual_seed(0)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    x, y = train.float(), train.labels
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False), test.float()[:200], test.labels[:200]


def tiny(steps: int, **overrides):
    cfg = preset("digits", steps=steps, checkpoint_every=100, snapshot_every=100, **overrides)
    return replace(cfg, model=replace(cfg.model, width=8),
                   sampler=replace(cfg.sampler, steps=3))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 6-step conditional digits run."""
    out = tmp_path_factory.mktemp("robust") / "run"
    train_images(tiny(6), out, progress=False)
    return out


@pytest.mark.parametrize("norm,eps,small", [("linf", 0.3, 0.05), ("l2", 3.0, 0.5)])
def test_pgd_breaks_a_softmax_classifier_at_large_eps(digits, norm, eps, small):
    model, x, y = digits
    clean = robust_accuracy(model, x, y, norm=norm, eps=0.0)
    weak = robust_accuracy(model, x, y, norm=norm, eps=small, steps=10)
    assert clean > 0.8
    assert weak < clean - 0.1
    for loss in ("ce", "margin"):
        assert robust_accuracy(model, x, y, norm=norm, eps=eps, steps=20, loss=loss) <= 0.02
    assert robust_accuracy(model, x, y, norm=norm, eps=eps, attack="square", queries=100) < 0.3


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
def test_attacks_stay_in_the_ball_and_the_image_range_and_pgd_never_lowers_the_loss(
        digits, norm, eps):
    model, x, y = digits
    adv = pgd(model, x, y, norm=norm, eps=eps, steps=5, step_size=4 * eps, restarts=2)
    free = square_attack(model, x, y, norm=norm, eps=eps, queries=20)
    for a in (adv, free):
        delta = (a - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all()
        assert a.min() >= 0 and a.max() <= 1
    clean_loss = F.cross_entropy(model(x), y, reduction="none")
    assert (F.cross_entropy(model(adv), y, reduction="none") >= clean_loss - 1e-6).all()
    adv = pgd(model, x, y, norm=norm, eps=eps, steps=5, step_size=4 * eps, loss="margin")
    assert (attack_loss(model(adv), y, "margin") >= attack_loss(model(x), y, "margin")).all()
    assert torch.equal(pgd(model, x, y, norm=norm, eps=0.0), x)


class Peak(nn.Module):
    """Two logits whose cross-entropy for class 1 peaks at ``x0``: every step lowers it."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("x0", x0)
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x - self.x0).pow(2).flatten(1).sum(1)
        return torch.stack([-d - 1.0, torch.zeros_like(d)], 1)


@pytest.mark.parametrize("norm,loss", [("linf", "ce"), ("l2", "ce"), ("linf", "margin")])
def test_pgd_keeps_the_clean_input_when_no_step_beats_it(norm, loss):
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    adv = pgd(Peak(x0), x0, torch.ones(4, dtype=torch.long), norm=norm, eps=0.2, steps=5,
              restarts=2, loss=loss)
    assert torch.equal(adv, x0)


def test_bad_attack_settings_are_usage_errors(digits):
    model, x, y = digits
    for kw in ({"norm": "l1", "eps": 0.1}, {"norm": "linf", "eps": -0.1},
               {"norm": "l2", "eps": 0.1, "restarts": 0}, {"norm": "l2", "eps": 0.1, "loss": "l1"}):
        with pytest.raises(UsageError):
            pgd(model, x[:2], y[:2], **kw)


def test_langevin_differentiable_matches_the_exact_and_finite_difference_derivative():
    """Quadratic energy, no noise, no clip, no bounds: x_K = (1 - s a)^K x_0 exactly."""
    torch.manual_seed(0)
    a = torch.rand(6, dtype=torch.float64) + 0.5
    cfg = LangevinConfig(steps=5, step_size=0.1, noise=0.0, grad_clip=None, bounds=None)

    def energy(x, cond=None):
        return 0.5 * (a * x * x).sum(1)

    x0 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, dtype=torch.float64)
    out = langevin(energy, x0, None, cfg, differentiable=True)
    (grad,) = torch.autograd.grad((w * out).sum(), x0)
    torch.testing.assert_close(grad, w * (1 - 0.1 * a) ** 5)
    v, h = torch.randn(3, 6, dtype=torch.float64), 1e-4
    with torch.no_grad():
        plus = (w * langevin(energy, x0 + h * v, None, cfg)).sum()
        minus = (w * langevin(energy, x0 - h * v, None, cfg)).sum()
    torch.testing.assert_close((plus - minus) / (2 * h), (grad * v).sum())


def test_input_gradients_flow_through_the_energy_classifiers_refinement():
    torch.manual_seed(0)
    cfg = ImageEBMConfig(arch="small", image_size=8, channels=1, num_classes=10, width=8)
    model = build_model(cfg).double().eval()
    with torch.no_grad():  # a fresh model's energy ignores the class; make the classes differ
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    smooth = LangevinConfig(step_size=5.0, noise=0.0, grad_clip=None, bounds=None)
    refined = EnergyClassifier(model, 3, sampler=smooth)
    plain = EnergyClassifier(model, 0)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.arange(4)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(refined(x), y), x)
    (g_plain,) = torch.autograd.grad(F.cross_entropy(plain(x), y), x)
    assert torch.isfinite(g_ref).all() and (g_ref.flatten(1).norm(dim=1) > 0).all()
    assert not torch.allclose(g_ref, g_plain)  # the chain contributes to the gradient
    v, h = torch.randn_like(x), 1e-5
    with torch.no_grad():
        diff = (F.cross_entropy(refined(x + h * v), y) - F.cross_entropy(refined(x - h * v), y))
    torch.testing.assert_close(diff / (2 * h), (g_ref * v).sum(), rtol=1e-4, atol=1e-8)
    noisy = EnergyClassifier(model, 3)  # the paper's clip and noise: still a non-zero gradient
    (g_noisy,) = torch.autograd.grad(F.cross_entropy(noisy(x), y), x)
    assert torch.isfinite(g_noisy).all() and (g_noisy.flatten(1).norm(dim=1) > 0).all()


def test_cli_end_to_end_writes_both_norms(run_dir, tmp_path):
    out = tmp_path / "rob"
    common = ["--run", str(run_dir), "--out", str(out), "--num", "12", "--langevin-steps", "2",
              "--steps", "2", "--queries", "4", "--quiet"]
    assert main(["robustness", "--norm", "linf", "--eps", "0", "0.2", *common]) == 0
    report = json.loads((out / "robustness.json").read_text())["linf"]
    assert set(report["accuracy"]) == {"softmax", "ebm", "ebm_refined"}
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in report["accuracy"].values())
    assert {"softmax_broken", "convergence", "gradient_flow", "gradient_free", "transfer"} <= set(
        report["guards"])
    assert report["guards"]["gradient_flow"]["ebm_refined"]["finite"]
    assert (out / "robustness.png").stat().st_size > 0 and (out / "run.json").exists()
    assert main(["robustness", "--norm", "l2", "--eps", "0.5", *common]) == 0
    both = json.loads((out / "robustness.json").read_text())
    assert set(both) == {"linf", "l2"} and both["l2"]["eps"] == [0.5]


@pytest.mark.parametrize("bad", [["--norm", "linf", "--eps", "0", "-0.1"],
                                 ["--norm", "l1", "--eps", "0.1"],
                                 ["--norm", "l2", "--eps", "0.1", "--steps", "0"],
                                 ["--norm", "l2", "--eps", "0.1", "--loss", "hinge"]])
def test_cli_bad_input_exits_2_before_writing(run_dir, tmp_path, capsys, bad):
    out = tmp_path / "never"
    args = ["robustness", "--run", str(run_dir), "--out", str(out), "--quiet", *bad]
    assert main(args) == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_unconditional_run_exits_2(tmp_path):
    run = tmp_path / "uncond"
    train_images(tiny(1, conditional=False), run, progress=False)
    out = tmp_path / "never"
    assert main(["robustness", "--run", str(run), "--norm", "linf", "--eps", "0.1", "--out",
                 str(out), "--quiet"]) == 2
    assert not out.exists() and not (run / "softmax").exists()
