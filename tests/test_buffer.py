"""Replay buffer: replay fraction, condition storage, uint8 round trip, state_dict round trip."""

import pytest
import torch

from trajebm.engine.buffer import ReplayBuffer, uniform_init


def filled(n=500, **kwargs):
    buf = ReplayBuffer(1000, (3,), uniform_init(10.0, 11.0, (3,)), seed=1, **kwargs)
    buf.push(torch.rand(n, 3))
    return buf


def test_replays_the_configured_fraction_once_it_holds_more_than_a_batch():
    buf = filled(500, replay_prob=0.95)
    outs = [buf.sample(400) for _ in range(50)]
    replayed = torch.cat([o.replayed for o in outs])
    x = torch.cat([o.x for o in outs])
    assert replayed.float().mean().item() == pytest.approx(0.95, abs=0.01)
    assert (x[replayed] < 1.0).all() and (x[~replayed] >= 10.0).all()
    assert not buf.sample(500).replayed.any()


def test_custom_fraction_and_init_receive_the_condition():
    init = lambda n, cond, g: cond[:, :2] + 100.0  # noqa: E731
    buf = ReplayBuffer(100, (2,), init, cond_shape=(4,), replay_prob=0.3)
    buf.push(torch.zeros(50, 2), torch.ones(50, 4))
    cond = torch.full((40, 4), 7.0)
    out = [buf.sample(40, cond) for _ in range(50)]
    replayed = torch.cat([o.replayed for o in out])
    x = torch.cat([o.x for o in out])
    assert replayed.float().mean().item() == pytest.approx(0.3, abs=0.04)
    assert torch.all(x[~replayed] == 107.0)
    out = out[0]
    assert torch.all(out.cond[~out.replayed] == 7.0) and torch.all(out.cond[out.replayed] == 1.0)


def test_conditions_are_stored_with_their_samples():
    buf = ReplayBuffer(64, (2,), uniform_init(shape=(2,)), cond_shape=(1,),
                       cond_dtype=torch.long, replay_prob=1.0)
    labels = torch.arange(40)[:, None]
    buf.push(labels.float().repeat(1, 2), labels)
    out = buf.sample(10, torch.full((10, 1), -1))
    assert out.replayed.all()
    assert torch.equal(out.x[:, 0].long(), out.cond[:, 0])


def test_ring_buffer_overwrites_oldest():
    buf = ReplayBuffer(10, (1,), uniform_init(shape=(1,)), replay_prob=1.0)
    buf.push(torch.zeros(8, 1))
    buf.push(torch.ones(5, 1))
    assert len(buf) == 10
    assert buf.data.sum().item() == 5 and buf.pos == 3


def test_uint8_storage_round_trips_within_one_bin():
    buf = ReplayBuffer(300, (3, 4, 4), uniform_init(shape=(3, 4, 4)), dtype=torch.uint8,
                       replay_prob=1.0)
    x = torch.rand(300, 3, 4, 4)
    buf.push(x)
    assert buf.data.dtype == torch.uint8
    decoded = buf._decode(buf.data)
    assert (decoded - x).abs().max() < 1 / 256
    assert decoded.min() >= 0 and decoded.max() < 1
    assert not torch.equal(buf._decode(buf.data), decoded)  # fresh de-quantisation noise


def test_state_dict_round_trip_continues_identically():
    a = filled(300)
    b = ReplayBuffer(1000, (3,), uniform_init(10.0, 11.0, (3,)), seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        sa, sb = a.sample(400), b.sample(400)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.replayed, sb.replayed)
        a.push(sa.x)
        b.push(sb.x)


def test_mismatched_inputs_are_rejected():
    buf = filled()
    with pytest.raises(ValueError, match="shape"):
        buf.push(torch.rand(4, 2))
    with pytest.raises(ValueError, match="cond"):
        buf.push(torch.rand(4, 3), torch.rand(4, 1))
    other = ReplayBuffer(10, (3,), uniform_init(shape=(3,)))
    with pytest.raises(ValueError, match="capacity"):
        other.load_state_dict(buf.state_dict())


def test_conditions_must_match_their_samples():
    buf = ReplayBuffer(10, (2,), uniform_init(shape=(2,)), cond_shape=(3,), cond_dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape \(4, \*\(3,\)\)"):
        buf.push(torch.rand(4, 2), torch.zeros(5, 3, dtype=torch.long))  # rows
    with pytest.raises(ValueError, match="shape"):
        buf.push(torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.long))  # per-row shape
    with pytest.raises(ValueError, match="does not cast safely"):
        buf.push(torch.rand(4, 2), torch.rand(4, 3))  # float labels into an int64 buffer
    buf.push(torch.rand(4, 2), torch.zeros(4, 3, dtype=torch.int32))  # widening is fine
    assert len(buf) == 4


def test_load_state_dict_checks_every_field():
    def conditional(**kwargs):
        return ReplayBuffer(10, (2,), uniform_init(shape=(2,)), cond_shape=(3,), **kwargs)

    good = conditional()
    good.push(torch.rand(6, 2), torch.rand(6, 3))
    bad_cond = {**good.state_dict(), "cond": torch.rand(6, 4)}
    with pytest.raises(ValueError, match="cond"):
        conditional().load_state_dict(bad_cond)
    with pytest.raises(ValueError, match="dtype"):
        conditional(cond_dtype=torch.float64).load_state_dict(good.state_dict())
    with pytest.raises(ValueError, match="inconsistent"):
        conditional().load_state_dict({**good.state_dict(), "size": 8})
    with pytest.raises(ValueError, match="inconsistent"):
        conditional().load_state_dict({**good.state_dict(), "pos": 12})
    restored = conditional()
    restored.load_state_dict(good.state_dict())
    assert torch.equal(restored.cond[:6], good.cond[:6])


def test_float64_buffer_returns_float64_samples():
    buf = ReplayBuffer(100, (2,), uniform_init(shape=(2,)), dtype=torch.float64, replay_prob=1.0)
    x = torch.rand(60, 2, dtype=torch.float64) / 3
    buf.push(x)
    out = buf.sample(20)
    assert out.x.dtype == torch.float64 and out.replayed.all()
    assert all((row == x).all(1).any() for row in out.x)  # bit-exact rows of what was pushed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_buffer_on_the_gpu_draws_what_the_cpu_buffer_draws():
    cond_shape = dict(cond_shape=(2,), dtype=torch.uint8)
    x, cond = torch.rand(300, 3), torch.randn(300, 2)
    cpu = ReplayBuffer(500, (3,), uniform_init(0.0, 1.0, (3,)), seed=1, **cond_shape)
    gpu = ReplayBuffer(500, (3,), uniform_init(0.0, 1.0, (3,)), seed=1, device="cuda",
                       **cond_shape)
    for buf in (cpu, gpu):
        buf.push(x, cond)
    for _ in range(2):
        a, b = cpu.sample(100, cond[:100]), gpu.sample(100, cond[:100].cuda())
        assert b.x.is_cuda and b.cond.is_cuda and not b.replayed.is_cuda
        assert torch.equal(a.x, b.x.cpu()) and torch.equal(a.cond, b.cond.cpu())
        cpu.push(a.x, a.cond)
        gpu.push(b.x, b.cond)
    state = gpu.state_dict()
    assert all(not t.is_cuda for t in state.values() if torch.is_tensor(t))
    back = ReplayBuffer(500, (3,), uniform_init(0.0, 1.0, (3,)), seed=9, **cond_shape)
    back.load_state_dict(state)
    assert torch.equal(back.sample(50).x, cpu.sample(50).x)


def test_moving_a_buffer_keeps_its_contents_and_draws():
    a, b = filled(300), filled(300)
    b.to("cpu")
    assert b.device == torch.device("cpu")
    assert torch.equal(a.sample(400).x, b.sample(400).x)
