"""Langevin (both conventions) and HMC reach known distributions; options do what they say."""

import math

import pytest
import torch

from trajebm.engine.sampling import (
    LangevinConfig,
    hmc,
    langevin,
    paper_to_textbook,
    textbook_to_paper,
)

MU = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 2.0]])
PRECISION = torch.linalg.inv(COV)
FREE = dict(grad_clip=None, bounds=None)


def gaussian_energy(x, cond=None):
    d = x - MU
    return 0.5 * (d @ PRECISION * d).sum(1)


def check_gaussian(x, mean_tol=0.1, cov_tol=0.15):
    assert torch.allclose(x.mean(0), MU, atol=mean_tol), x.mean(0)
    assert torch.allclose(torch.cov(x.T), COV, atol=cov_tol), torch.cov(x.T)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_textbook_langevin_samples_correlated_gaussian():
    x0 = 3 * torch.randn(4000, 2)
    x = langevin(gaussian_energy, x0, convention="textbook", step_size=0.05, steps=800, **FREE)
    check_gaussian(x)


def test_paper_langevin_with_matched_noise_samples_correlated_gaussian():
    lam, sigma = textbook_to_paper(0.05, temperature=1.0)
    x0 = 3 * torch.randn(4000, 2)
    x = langevin(gaussian_energy, x0, convention="paper", step_size=lam, noise=sigma,
                 steps=800, **FREE)
    check_gaussian(x)


def test_conventions_convert_both_ways():
    eta, temperature = paper_to_textbook(10.0, 0.005)
    assert eta == 20.0 and temperature == pytest.approx(0.005**2 / 20)
    assert textbook_to_paper(eta, temperature) == pytest.approx((10.0, 0.005))


def test_temperature_scales_variance():
    standard = lambda x, c=None: 0.5 * x.pow(2).sum(1)  # noqa: E731
    x = langevin(standard, torch.zeros(8000, 1), convention="textbook", step_size=0.05,
                 steps=400, temperature=0.25, **FREE)
    assert x.var().item() == pytest.approx(0.25, rel=0.1)


def mixture_energy(weights=(0.25, 0.75), means=(-1.5, 1.5), std=0.6):
    w, m = torch.tensor(weights), torch.tensor(means)

    def energy(x, cond=None):
        log_p = torch.log(w) - 0.5 * ((x - m) / std) ** 2
        return -torch.logsumexp(log_p, dim=1)

    return energy


def mixture_right_mass(weights=(0.25, 0.75), means=(-1.5, 1.5), std=0.6):
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return sum(w * (1 - phi((0 - m) / std)) for w, m in zip(weights, means, strict=True))


def test_langevin_gets_mixture_weights_right():
    x = langevin(mixture_energy(), torch.randn(8000, 1), convention="textbook",
                 step_size=0.05, steps=3000, **FREE)
    assert (x > 0).float().mean().item() == pytest.approx(mixture_right_mass(), abs=0.03)


def test_hmc_samples_gaussian_with_sane_acceptance():
    result = hmc(gaussian_energy, 3 * torch.randn(4000, 2), steps=150, leapfrog_steps=5,
                 step_size=0.3)
    check_gaussian(result.samples)
    assert 0.6 < result.acceptance_rate < 1.0


def test_hmc_rejects_more_with_huge_steps():
    small = hmc(gaussian_energy, torch.randn(500, 2), steps=20, step_size=0.2).acceptance_rate
    huge = hmc(gaussian_energy, torch.randn(500, 2), steps=20, step_size=3.0).acceptance_rate
    assert huge < 0.5 < small


def test_hmc_gets_mixture_weights_right():
    result = hmc(mixture_energy(), torch.randn(8000, 1), steps=300, leapfrog_steps=8,
                 step_size=0.25, return_chain=True)
    assert result.chain.shape == (301, 8000, 1)
    frac = (result.samples > 0).float().mean().item()
    assert frac == pytest.approx(mixture_right_mass(), abs=0.03)


def test_product_of_experts_samples_the_product():
    # N(1, 1) * N(3, 0.5^2) = N(mean 2.6, var 0.2)
    e1 = lambda x, c=None: 0.5 * (x - 1.0).pow(2).sum(1)  # noqa: E731
    e2 = lambda x, c=None: 0.5 * ((x - 3.0) / 0.5).pow(2).sum(1)  # noqa: E731
    x = langevin([e1, e2], torch.zeros(8000, 1), convention="textbook", step_size=0.02,
                 steps=500, **FREE)
    assert x.mean().item() == pytest.approx(2.6, abs=0.03)
    assert x.var().item() == pytest.approx(0.2, rel=0.1)
    h = hmc([e1, e2], torch.zeros(4000, 1), steps=100, step_size=0.3)
    assert h.samples.mean().item() == pytest.approx(2.6, abs=0.03)


def steep(x, cond=None):
    return 1000.0 * x.flatten(1).sum(1)


def test_value_clipping_limits_each_element_step():
    x = langevin(steep, torch.zeros(4, 3), steps=1, step_size=2.0, noise=0.0, grad_clip=0.01,
                 bounds=None)
    assert torch.allclose(x, torch.full((4, 3), -0.02))


def test_norm_clipping_limits_each_samples_step():
    x = langevin(steep, torch.zeros(4, 3), steps=1, step_size=2.0, noise=0.0, grad_clip=0.01,
                 clip_mode="norm", bounds=None)
    assert torch.allclose(x.norm(dim=1), torch.full((4,), 0.02))
    assert torch.allclose(x, x[:, :1].expand_as(x))


def test_bounds_keep_samples_inside():
    x = langevin(steep, torch.rand(16, 3, 4, 4), steps=5, step_size=1.0, noise=0.5,
                 grad_clip=None, bounds=(0.0, 1.0))
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert (x == 0.0).float().mean() > 0.9


def test_mask_freezes_masked_elements():
    x0 = torch.rand(8, 1, 6, 6)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 3:, :] = 1.0
    x = langevin(steep, x0, LangevinConfig(steps=10), mask=mask)
    assert torch.equal(x[..., :3, :], x0[..., :3, :])
    assert not torch.equal(x[..., 3:, :], x0[..., 3:, :])


def test_return_chain_records_every_state():
    x0 = torch.randn(5, 2)
    x, chain = langevin(gaussian_energy, x0, steps=7, return_chain=True, **FREE)
    assert chain.shape == (8, 5, 2)
    assert torch.equal(chain[0], x0) and torch.equal(chain[-1], x)


def test_keep_last_graph_lets_gradients_reach_parameters():
    model = torch.nn.Linear(2, 1)
    energy = lambda x, c=None: model(x).squeeze(-1) ** 2  # noqa: E731
    x = langevin(energy, torch.randn(6, 2), steps=3, convention="textbook", step_size=0.1,
                 keep_last_graph=True, **FREE)
    x.sum().backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    detached = langevin(energy, torch.randn(6, 2), steps=3, **FREE)
    assert not detached.requires_grad


def test_bad_energy_shape_is_reported():
    with pytest.raises(ValueError, match="energy must return shape"):
        langevin(lambda x, c=None: x, torch.randn(3, 2), steps=1)


def test_config_validation():
    with pytest.raises(ValueError):
        LangevinConfig(convention="euler")
    with pytest.raises(ValueError):
        LangevinConfig(step_size=0.0)
