"""Image EBM architectures: paper sizes, spectral norm, labels, bad input, save -> load, grads."""

from __future__ import annotations

import io

import pytest
import torch
from torch.nn.utils import parametrize

from imagebm.models import (
    ARCHITECTURES,
    BoundedSpectralNorm,
    ImageEBM,
    ImageEBMConfig,
    ResBlock,
    build_model,
    paper_config,
)
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import langevin


def tiny(arch: str = "small", **kw) -> ImageEBM:
    """``arch`` at 8 base filters and a small size it accepts, one channel, seeded."""
    size = {"small": 8, "dsprites": 16, "resnet128": 32}.get(arch, 8)
    settings = {"arch": arch, "image_size": size, "channels": 1, "width": 8, **kw}
    torch.manual_seed(0)
    return build_model(ImageEBMConfig(**settings))


def inputs(model: ImageEBM, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    labels = torch.randint(max(cfg.num_classes, 1), (batch,), generator=g)
    return x, labels if cfg.num_classes else None


def normalised_layers(model: ImageEBM) -> list[tuple[torch.nn.Module, bool]]:
    """Every spectrally normalised layer and whether its normalisation is the bounded one."""
    return [(m, isinstance(m.parametrizations.weight[0], BoundedSpectralNorm))
            for m in model.modules() if parametrize.is_parametrized(m, "weight")]


def top_singular(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().flatten(1), ord=2))


PAPER_WIDTHS = {
    "resnet32": [128, 128, 256, 256, 256, 256],
    "resnet32large": [128, 128, 128, 256, 256, 256, 512, 512, 512],
    "resnet32wider": [256, 256, 256, 512, 512, 512, 1024, 1024, 1024],
    "resnet128": [64, 128, 256, 512, 512, 512],
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_arch_at_paper_size_gives_one_energy_per_image(arch):
    cfg = paper_config(arch)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x, labels = inputs(model, batch=2)
    with torch.no_grad():
        e = model(x, labels)
    assert e.shape == (2,) and torch.isfinite(e).all()
    assert not torch.equal(e[0], e[1])
    widths = [(b.conv1 if isinstance(b, ResBlock) else b.conv).conv.out_channels
              for b in model.blocks]
    if arch in PAPER_WIDTHS:
        assert widths == PAPER_WIDTHS[arch]
        assert model.head.in_features == PAPER_WIDTHS[arch][-1]
    if arch == "dsprites":
        assert [model.stem.out_channels, *widths] == [32, 64, 128, 128, 128]
        assert (model.fc[0].in_features, model.fc[0].out_features) == (2048, 128)


def test_paper_settings_follow_the_table():
    assert paper_config("resnet32large").dropout == 0.5
    assert paper_config("resnet128").activation == "swish"
    assert paper_config("resnet32").num_classes == 10
    assert paper_config("resnet32", num_classes=0, width=16).num_classes == 0
    assert isinstance(build_model(paper_config("resnet128", width=4)).blocks[0].act,
                      torch.nn.SiLU)


@pytest.mark.parametrize("arch,sizes", [("small", [8, 16, 28, 32, 64]),
                                        ("dsprites", [16, 28, 32, 64])])
def test_small_nets_take_digit_and_dsprites_sizes(arch, sizes):
    for size in sizes:
        model = tiny(arch, image_size=size)
        x, _ = inputs(model, batch=2)
        assert model(x).shape == (2,)
    assert build_model(paper_config("dsprites", image_size=32)).fc[0].in_features == 128 * 2 * 2


@pytest.mark.parametrize("arch,size,rule", [("dsprites", 8, "at least 16"),
                                            ("resnet32", 28, "multiples of 8"),
                                            ("resnet128", 48, "multiples of 32"),
                                            ("small", 2, "at least 4")])
def test_sizes_a_layout_cannot_take_are_refused(arch, size, rule):
    with pytest.raises(UsageError, match=rule):
        ImageEBMConfig(arch=arch, image_size=size)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_spectral_norm_holds_every_hidden_layer_near_one(arch):
    model = tiny(arch).train()
    layers = normalised_layers(model)
    kinds = [bounded for _, bounded in layers]
    assert kinds.count(True) == sum(isinstance(b, ResBlock) for b in model.blocks)
    weighted = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert [m for m in weighted if not parametrize.is_parametrized(m)] == [model.head]
    with torch.no_grad():
        for layer, _ in layers:
            original = layer.parametrizations.weight.original
            original.copy_(torch.randn_like(original))
        assert min(top_singular(layer.parametrizations.weight.original)
                   for layer, _ in layers) > 2.0
        x, labels = inputs(model, batch=1)
        for _ in range(50):
            model(x, labels)
    model.eval()
    for layer, _ in layers:
        assert top_singular(layer.weight) == pytest.approx(1.0, abs=0.03)


def test_bounded_second_convs_start_near_zero_and_are_left_alone_below_one():
    model = tiny("resnet32").train()
    x, _ = inputs(model, batch=1)
    model(x)
    bounded = [layer for layer, b in normalised_layers(model) if b]
    assert bounded
    for layer in bounded:
        original = layer.parametrizations.weight.original
        assert top_singular(original) < 0.1
        assert torch.equal(layer.weight, original)


def test_bounded_spectral_norm_only_scales_down():
    big = torch.nn.Linear(3, 3)
    small = torch.nn.Linear(3, 3)
    with torch.no_grad():
        big.weight.copy_(torch.diag(torch.tensor([3.0, 0.5, 0.1])))
        small.weight.copy_(torch.diag(torch.tensor([0.6, 0.5, 0.1])))
    for layer in (big, small):
        parametrize.register_parametrization(layer, "weight", BoundedSpectralNorm(layer.weight))
    assert top_singular(big.weight) == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(big.weight, big.parametrizations.weight.original / 3.0, atol=1e-5)
    assert torch.equal(small.weight, small.parametrizations.weight.original)
    keys = set(big.state_dict())
    assert {"parametrizations.weight.0._u", "parametrizations.weight.0._v"} <= keys


def test_spectral_norm_can_be_switched_off():
    assert normalised_layers(tiny("resnet32", spectral_norm=False)) == []


def test_conditional_energy_depends_on_the_label_through_class_rows():
    model = tiny(num_classes=3).eval()
    x, _ = inputs(model, batch=4)
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    before = model(x, zeros).detach()
    assert torch.allclose(before, model(x, ones), atol=1e-6)
    with torch.no_grad():
        model.blocks[0].conv1.out_gain[1].mul_(1.5)
        model.blocks[1].conv2.in_bias[1].add_(0.5)
    assert torch.equal(model(x, zeros), before)
    assert (model(x, ones) - before).abs().min() > 1e-4
    onehot = torch.nn.functional.one_hot(ones, 3).float()
    assert torch.allclose(model(x, onehot), model(x, ones), atol=1e-6)


def test_gradient_steps_separate_classes_and_leave_unused_rows_alone():
    model = tiny(num_classes=3).train()
    x, _ = inputs(model, batch=8)
    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    for _ in range(10):
        model.zero_grad()
        (model(x, zeros).mean() - model(x, ones).mean()).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(1e-2 * p.grad.sign())
    gain = model.blocks[0].conv1.out_gain
    assert gain.grad[2].abs().max() == 0 and gain.grad[:2].abs().max() > 0
    assert torch.all(gain[2] == 1.0)
    model.eval()
    with torch.no_grad():
        assert (model(x, ones) - model(x, zeros)).min() > 0.1


def error_of(fn) -> str:
    with pytest.raises(UsageError) as info:
        fn()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_arch_lists_the_valid_ones():
    message = error_of(lambda: ImageEBMConfig(arch="resnet50"))
    assert all(name in message for name in ARCHITECTURES)
    assert "resnet50" in error_of(lambda: paper_config("resnet50"))


@pytest.mark.parametrize("field,value", [("channels", 0), ("num_classes", -1),
                                         ("activation", "relu"), ("dropout", 1.0),
                                         ("width", 0)])
def test_bad_config_values_are_refused(field, value):
    assert field.split("_")[0] in error_of(lambda: ImageEBMConfig(**{field: value}))


def test_images_the_model_was_not_built_for_are_refused():
    model = tiny()
    message = error_of(lambda: model(torch.rand(2, 3, 8, 8)))
    assert "(B, 1, 8, 8)" in message and "(2, 3, 8, 8)" in message
    assert "(2, 1, 16, 16)" in error_of(lambda: model(torch.rand(2, 1, 16, 16)))
    assert "(1, 8, 8)" in error_of(lambda: model(torch.rand(1, 8, 8)))
    assert "uint8" in error_of(lambda: model(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)))


def test_label_errors():
    cond, uncond = tiny(num_classes=3), tiny()
    x = torch.rand(2, 1, 8, 8)
    assert "pass labels" in error_of(lambda: cond(x))
    assert "unconditional" in error_of(lambda: uncond(x, torch.tensor([0, 1])))
    message = error_of(lambda: cond(x, torch.tensor([0, 3])))
    assert "[0, 3)" in message and "to 3" in message
    assert "from -1" in error_of(lambda: cond(x, torch.tensor([-1, 0])))
    assert "(2,)" in error_of(lambda: cond(x, torch.tensor([[0], [1]])))
    assert "(2,)" in error_of(lambda: cond(x, torch.tensor([0, 1, 2])))
    assert "torch.bool" in error_of(lambda: cond(x, torch.tensor([True, False])))
    assert "(2, 3)" in error_of(lambda: cond(x, torch.tensor([0.0, 1.0])))
    assert "tensor" in error_of(lambda: cond(x, [0, 1]))
    assert cond(x, torch.tensor([0, 2], dtype=torch.int32)).shape == (2,)


@pytest.mark.parametrize("arch,kw", [("small", {"num_classes": 4}),
                                     ("resnet32large", {"dropout": 0.5}),
                                     ("dsprites", {})])
def test_state_dict_round_trip_gives_identical_energies(arch, kw):
    model = tiny(arch, **kw).train()
    x, labels = inputs(model)
    with torch.no_grad():
        for _ in range(3):
            model(x, labels)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    other = build_model(model.config)
    model.eval()
    other.eval()
    assert not torch.allclose(other(x, labels), model(x, labels))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other(x, labels), model(x, labels))
    if not kw.get("dropout"):
        model.train()
        other.train()
        assert torch.equal(other(x, labels), model(x, labels))


def test_energy_has_a_per_image_gradient_in_x():
    model = tiny("resnet32", channels=3).train()
    x, _ = inputs(model, batch=3)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all()
    assert (g.flatten(1).norm(dim=1) > 0).all()
    model.eval()
    with torch.no_grad():
        e = model(x)
        moved = x.detach().clone()
        moved[1] += 0.1
        e2 = model(moved)
    assert e2[0] == e[0] and e2[2] == e[2] and e2[1] != e[1]


def test_eval_mode_turns_off_dropout_and_power_iteration():
    model = tiny("resnet32large", dropout=0.5).train()
    x, _ = inputs(model)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        model.eval()
        u = [b.clone() for name, b in model.named_buffers() if name.endswith("_u")]
        assert torch.equal(model(x), model(x))
        after = [b for name, b in model.named_buffers() if name.endswith("_u")]
    assert all(torch.equal(a, b) for a, b in zip(u, after, strict=True))
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    assert g.abs().sum() > 0


def test_langevin_and_the_kl_path_run_on_a_conditional_model():
    model = tiny(num_classes=3).train()
    x, labels = inputs(model)
    x_neg = langevin(model, x, labels, steps=3, keep_last_graph=True)
    samples = x_neg.detach()
    assert samples.shape == x.shape and 0.0 <= samples.min() and samples.max() <= 1.0
    assert not torch.equal(samples, x)
    energies = model(torch.cat([x, x_neg.detach()]), torch.cat([labels, labels]))
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    kl = torch.func.functional_call(model, frozen, (x_neg, labels)).mean()
    (energies.mean() + kl).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
