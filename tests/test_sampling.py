"""Langevin (both conventions) and HMC reach known distributions; options do what they say."""

import math

import pytest
import torch

from trajebm.engine.sampling import (
    Expert,
    LangevinConfig,
    hmc,
    langevin,
    paper_to_textbook,
    step_sizes,
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


def standard(x, cond=None):
    return 0.5 * x.pow(2).sum(1)


def test_temperature_scales_variance():
    x = langevin(standard, torch.zeros(8000, 1), convention="textbook", step_size=0.05,
                 steps=400, temperature=0.25, **FREE)
    assert x.var().item() == pytest.approx(0.25, rel=0.1)


def test_temperature_acts_even_when_the_gradient_clip_saturates():
    stiff = lambda x, c=None: 50.0 * x.pow(2).sum(1)  # noqa: E731 - |grad| >> clip
    runs = {}
    for t in (1.0, 4.0):
        torch.manual_seed(0)
        runs[t] = langevin(stiff, torch.zeros(4000, 1), steps=300, step_size=0.1, noise=0.01,
                           grad_clip=0.1, bounds=None, temperature=t)
    assert runs[4.0].var() > 4 * runs[1.0].var()


def test_textbook_chain_refuses_a_noise_it_would_ignore():
    with pytest.raises(ValueError, match="noise applies to the paper convention only"):
        LangevinConfig(convention="textbook", noise=0.001)
    LangevinConfig(convention="textbook")  # the default noise is fine


def test_annealing_schedule_is_polynomial_from_start_to_end():
    cfg = LangevinConfig(steps=5, step_size=1.0, step_size_end=0.2, anneal_power=2.0)
    expected = [0.8 * (1 - i / 4) ** 2 + 0.2 for i in range(5)]
    assert step_sizes(cfg) == pytest.approx(expected)
    assert step_sizes(cfg)[0] == 1.0 and step_sizes(cfg)[-1] == pytest.approx(0.2)
    assert step_sizes(LangevinConfig(steps=3, step_size=0.5)) == [0.5] * 3
    with pytest.raises(ValueError, match="anneal_power"):
        LangevinConfig(step_size_end=0.1, anneal_power=0.0)


def test_annealed_chain_reaches_the_gaussian_at_least_as_well():
    x0 = 3 * torch.randn(8000, 1)
    coarse = langevin(standard, x0, convention="textbook", step_size=0.5, steps=200, **FREE)
    annealed = langevin(standard, x0, convention="textbook", step_size=0.5,
                        step_size_end=0.02, steps=200, **FREE)
    assert abs(annealed.var().item() - 1.0) < 0.05
    assert abs(annealed.var().item() - 1.0) <= abs(coarse.var().item() - 1.0)


def test_annealed_paper_chain_keeps_its_temperature():
    lam, sigma = textbook_to_paper(0.2)  # temperature 1
    x = langevin(standard, torch.zeros(8000, 1), steps=300, step_size=lam, noise=sigma,
                 step_size_end=lam / 10, **FREE)
    assert x.var().item() == pytest.approx(1.0, rel=0.1)  # without noise scaling: ~10


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


def test_bounds_leave_frozen_elements_alone():
    x0 = torch.full((4, 6), 2.0)  # outside the bounds everywhere
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    x = langevin(steep, x0, steps=3, step_size=1.0, noise=0.1, grad_clip=None,
                 bounds=(0.0, 1.0), mask=mask)
    assert torch.equal(x[:, 3:], x0[:, 3:])
    assert x[:, :3].min() >= 0.0 and x[:, :3].max() <= 1.0


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


def test_keep_last_graph_gives_the_gradient_through_the_last_step():
    torch.manual_seed(1)
    model = torch.nn.Linear(2, 1).double()
    x0 = torch.randn(6, 2, dtype=torch.float64)
    cfg = LangevinConfig(steps=3, step_size=0.1, noise=0.0, **FREE)

    def energy(x, c=None):
        return model(x).squeeze(-1) ** 2

    def loss(keep):
        return langevin(energy, x0, config=cfg, keep_last_graph=keep).pow(2).sum()

    loss(True).backward()
    # finite differences of the last step alone: earlier steps are detached, so perturb the
    # weight only while taking that step from the fixed second state
    x2 = langevin(energy, x0, config=cfg, steps=2)
    numeric = torch.zeros_like(model.weight)
    for i in range(model.weight.numel()):
        values = []
        for h in (1e-6, -1e-6):
            with torch.no_grad():
                model.weight.view(-1)[i] += h
            values.append(langevin(energy, x2, config=cfg, steps=1).pow(2).sum())
            with torch.no_grad():
                model.weight.view(-1)[i] -= h
        numeric.view(-1)[i] = (values[0] - values[1]) / 2e-6
    torch.testing.assert_close(model.weight.grad, numeric, rtol=1e-5, atol=1e-8)
    assert not loss(False).requires_grad


def test_bad_energy_shape_is_reported():
    with pytest.raises(ValueError, match="energy must return shape"):
        langevin(lambda x, c=None: x, torch.randn(3, 2), steps=1)


def test_config_validation():
    with pytest.raises(ValueError):
        LangevinConfig(convention="euler")
    with pytest.raises(ValueError):
        LangevinConfig(step_size=0.0)


def conditional_gaussian(x, cond):
    """N(mean, std^2) per row, cond = (B, 2) holding mean and std."""
    mean, std = cond[:, :1], cond[:, 1:]
    return 0.5 * ((x - mean) / std).pow(2).sum(1)


def rows(n, *values):
    return torch.tensor(values).expand(n, len(values))


def test_a_single_expert_is_the_chain_of_its_energy():
    cond, x0 = rows(64, 1.0, 2.0), torch.randn(64, 1)
    torch.manual_seed(3)
    plain, plain_chain = langevin(conditional_gaussian, x0, cond, steps=20, return_chain=True,
                                  **FREE)
    torch.manual_seed(3)
    # the expert keeps its own condition whatever the chain's one is
    composed, chain = langevin([Expert(conditional_gaussian, cond)], x0, rows(64, 9.0, 9.0),
                               steps=20, return_chain=True, **FREE)
    assert torch.equal(chain, plain_chain) and torch.equal(composed, plain)


def test_experts_with_their_own_conditions_sample_the_product():
    # N(1, 1) * N(3, 0.5^2) = N(2.6, 0.2); one energy, two conditions
    n = 8000
    experts = [Expert(conditional_gaussian, rows(n, 1.0, 1.0)),
               Expert(conditional_gaussian, rows(n, 3.0, 0.5))]
    x = langevin(experts, torch.zeros(n, 1), convention="textbook", step_size=0.02, steps=500,
                 **FREE)
    assert x.mean().item() == pytest.approx(2.6, abs=0.03)
    assert x.var().item() == pytest.approx(0.2, rel=0.1)
    # a bare energy beside an expert takes the chain's condition; weight 4 halves the std:
    # N(1, 1) * N(3, 0.25^2) = N(49/17, 1/17)
    h = hmc([conditional_gaussian, Expert(conditional_gaussian, rows(n, 3.0, 0.5), weight=4.0)],
            torch.zeros(n, 1), rows(n, 1.0, 1.0), steps=150, step_size=0.2)
    assert h.samples.mean().item() == pytest.approx(49 / 17, abs=0.02)
    assert h.samples.var().item() == pytest.approx(1 / 17, rel=0.1)


def test_experts_are_checked():
    with pytest.raises(TypeError, match="wrap an \\(energy, cond\\) pair in Expert"):
        langevin([(conditional_gaussian, rows(2, 0.0, 1.0))], torch.zeros(2, 1), steps=1)
    with pytest.raises(TypeError, match="must be callable"):
        Expert(rows(2, 0.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        Expert(conditional_gaussian, weight=float("nan"))


def test_compiled_experts_follow_the_eager_chain():
    cfg = LangevinConfig(steps=4, step_size=0.05, noise=0.01, grad_clip=0.5, bounds=(-2.0, 2.0))
    x0 = torch.randn(16, 1)
    runs = {}
    for compiled in (False, True, True):  # the second compiled call has new conditions
        experts = [Expert(conditional_gaussian, rows(16, 1.0, 1.0)),
                   Expert(conditional_gaussian, rows(16, -1.0, 0.5), weight=2.0)]
        torch.manual_seed(5)
        runs[compiled] = langevin(experts, x0, config=cfg, compile=compiled)
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-5)
