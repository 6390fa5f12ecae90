"""Compiled Langevin chains follow the eager reference; the trajectory EBM's hoisted chain
energy equals its forward; a compiled training run resumes exactly. Compilation takes seconds,
so the energies are tiny and each test compiles few graphs."""

from dataclasses import replace

import pytest
import torch
import torch._dynamo.utils
from torch import nn

from trajebm.engine.buffer import ReplayBuffer
from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.engine.train import Contrastive, ContrastiveConfig, TensorBatches, TrainConfig, Trainer
from trajebm.models import build_model, model_config


class Energy(nn.Module):
    def __init__(self, dim=3, cond_dim=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + cond_dim, 16), nn.SiLU(), nn.Linear(16, 1))

    def forward(self, x, cond):
        return self.net(torch.cat([x, cond], 1)).squeeze(-1)


def chains(energy, x0, cond, cfg, compiled, **kwargs):
    torch.manual_seed(7)
    return langevin(energy, x0, cond, cfg, compile=compiled, **kwargs)


@pytest.mark.parametrize("cfg", [
    LangevinConfig(steps=8, step_size=0.05, noise=0.01, grad_clip=0.05, bounds=(-1.0, 1.0),
                   step_size_end=0.01),
    LangevinConfig(steps=8, step_size=0.02, convention="textbook", grad_clip=None, bounds=None,
                   temperature=0.5),
], ids=["paper-clip-bounds-annealed", "textbook"])
def test_compiled_chain_follows_the_eager_chain(cfg):
    torch.manual_seed(0)
    energy = Energy()
    x0, cond = torch.rand(32, 3) * 2 - 1, torch.randn(32, 2)
    eager, eager_chain = chains(energy, x0, cond, cfg, False, return_chain=True)
    fast, fast_chain = chains(energy, x0, cond, cfg, True, return_chain=True)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_chain, eager_chain, rtol=0, atol=1e-5)
    assert not fast.requires_grad
    # the eager last step keeps its graph: the gradient reaches the energy's weights
    kept = chains(energy, x0, cond, cfg, True, keep_last_graph=True)
    torch.testing.assert_close(kept.detach(), eager, rtol=0, atol=1e-5)
    kept.sum().backward()
    assert energy.net[0].weight.grad is not None


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="compile must be"):
        LangevinConfig(compile="fastest")


def small_ebm(**kwargs):
    torch.manual_seed(0)
    config = model_config("ebm", state_dim=5, action_dim=2, context=2, hidden=16, layers=2,
                          **kwargs)
    return build_model(config).eval()


@pytest.mark.parametrize("kwargs", [dict(proposal=True, init_noise=0.1),
                                    dict(delta_input=False, spectral_norm=True)])
def test_chain_energy_equals_the_model_energy(kwargs):
    model = small_ebm(**kwargs)
    cond = torch.randn(9, model.config.cond_dim)
    x = torch.randn(9, model.config.out_dim)
    energy, hidden = model.chain_energy(cond)
    torch.testing.assert_close(energy(x, hidden), model(x, cond), rtol=1e-5, atol=1e-6)
    # and its gradient in x
    xe = x.clone().requires_grad_(True)
    (g_hoisted,) = torch.autograd.grad(energy(xe, hidden).sum(), xe)
    (g_model,) = torch.autograd.grad(model(xe, cond).sum(), xe)
    torch.testing.assert_close(g_hoisted, g_model, rtol=1e-5, atol=1e-6)


def test_compiled_proposals_match_eager_and_compile_once():
    model = small_ebm(proposal=True, init_noise=0.1)
    cond = torch.randn(16, model.config.cond_dim)
    torch.manual_seed(3)
    eager = model.propose(cond)
    torch.manual_seed(3)
    fast = model.propose(cond, compile=True)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model.propose(torch.randn(16, model.config.cond_dim), compile=True)  # a new chain: reused
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def make_trainer(out, steps, compiled):
    model = small_ebm(proposal=True, init_noise=0.1)
    data = torch.randn(64, model.config.out_dim, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(64, model.config.cond_dim, generator=torch.Generator().manual_seed(2))
    config = TrainConfig(steps=steps, lr=1e-3, checkpoint_every=3, progress=False)
    buffer = ReplayBuffer(100, (model.config.out_dim,),
                          lambda n, c, g: model.init_chains(c, g),
                          cond_shape=(model.config.cond_dim,), replay_prob=0.5)
    sampler = replace(model.config.sampler, compile=compiled)
    objective = Contrastive(model, sampler, buffer, ContrastiveConfig(),
                            aux_loss=model.proposal_loss)
    return Trainer(model, TensorBatches(data, cond, batch_size=16), objective, config, out)


def test_compiled_training_resumes_exactly_and_follows_eager_training(tmp_path):
    unbroken = make_trainer(tmp_path / "a", 6, True)
    unbroken.fit()
    first = make_trainer(tmp_path / "b", 4, True)
    first.fit()
    resumed = make_trainer(tmp_path / "b", 6, True)
    resumed.fit(resume=True)
    for a, b in zip(unbroken.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert torch.equal(unbroken.objective.buffer.data, resumed.objective.buffer.data)
    eager = make_trainer(tmp_path / "c", 6, False)
    eager.fit()
    for a, b in zip(unbroken.model.state_dict().values(), eager.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
