"""Named trajectory-model variants: complete training configs in one registry.

A variant names a :class:`~trajebm.fit.FitConfig` — the model kind with its settings, the
trainer's and the data's — and a spec ``NAME[:key=value,...]`` changes any of it
(:mod:`trajebm.engine.settings`): ``ebm:context_noise=0.05,sampler_steps=40`` or
``fc:steps=12000``. ``trajebm variants`` lists them with their differences from the default;
``trajebm train --model SPEC`` and ``trajebm compare --models SPEC...`` take specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trajebm.engine.settings import Registry, differences, override, parse_spec
from trajebm.fit import FitConfig
from trajebm.models import (
    DSMConfig,
    EBMConfig,
    EnsembleConfig,
    FCConfig,
    FlowConfig,
    ModelConfig,
)
from trajebm.models.ebm import paper_sampler


def _beta1(cfg: FitConfig, value: Any) -> FitConfig:
    return replace(cfg, train=replace(cfg.train, betas=(float(value), cfg.train.betas[1])))


def paper_settings(cfg: FitConfig, on: Any = True) -> FitConfig:
    """docs/paper.md §2 exactly: batch 1024, Adam betas (0, 0.999), the next state fed as is."""
    if not on:
        return cfg
    model = cfg.model
    if isinstance(model, EBMConfig | DSMConfig):
        model = replace(model, delta_input=False)
    return replace(cfg, model=model, batch_size=1024,
                   train=replace(cfg.train, betas=(0.0, 0.999)))


ALIASES = {"buffer_capacity": "model.contrastive.buffer_size", "beta1": _beta1,
           "paper": paper_settings}
"""Keys besides the fields' own names: the old name of the buffer size, Adam's beta1 alone,
and ``paper=true`` (the paper's batch, betas and input)."""

VARIANTS: Registry[FitConfig] = Registry("model", FitConfig, ALIASES)
"""The named variants (module docstring)."""


def _variant(name: str, model: ModelConfig, paper: bool = False) -> None:
    VARIANTS.register(name, lambda: paper_settings(FitConfig(model=replace(model)), paper))


_variant("ebm", EBMConfig())
_variant("ebm-uncond", EBMConfig(conditional=False))
_variant("ebm-paper", EBMConfig(), paper=True)
_variant("ebm-proposal", EBMConfig(proposal=True, init_noise=0.1))
# ebm-proposal with a chain that samples: noise 0.01 (10x the paper's) and 40 steps, chosen by
# the energy score on validation starts (docs/results/uncertainty.md).
_variant("ebm-spread", EBMConfig(proposal=True, init_noise=0.1,
                                sampler=replace(paper_sampler(), steps=40, noise=0.01)))
_variant("ebm-dsm", DSMConfig())
_variant("ebm-dsm-uncond", DSMConfig(conditional=False))
_variant("flow", FlowConfig())
_variant("flow-uncond", FlowConfig(conditional=False))
_variant("fc", FCConfig())
_variant("fc-paper", FCConfig(residual=False))
_variant("ensemble", EnsembleConfig())
_variant("fc-uncond", FCConfig(conditional=False))
_variant("ensemble-uncond", EnsembleConfig(conditional=False))

DEFAULT_MODEL = "ebm-proposal"
"""The variant ``trajebm train`` and the demo use: the best EBM of the comparison."""


def variant_config(spec: str, base: Mapping[str, Any] | None = None) -> FitConfig:
    """The :class:`FitConfig` of a variant spec ``NAME[:key=value,...]``.

    ``base`` holds settings every variant starts from (``trajebm compare --base``): they apply
    where they fit the variant's model kind, the variant's own settings win over them, and the
    spec's overrides over both.
    """
    name, overrides = parse_spec(spec)
    cfg = VARIANTS.get(name, where=spec)
    if base:
        plain = FitConfig(model=type(cfg.model)())
        start = override(plain, base, ALIASES, where="base", elsewhere=VARIANTS.known,
                         warn=False)
        cfg = override(start, differences(cfg, plain), ALIASES, where=spec)
    return override(cfg, overrides, ALIASES, where=spec, elsewhere=VARIANTS.known,
                    what="model")


def describe() -> dict[str, dict[str, Any]]:
    """Each variant's differences from the default :class:`FitConfig` (a plain CD EBM)."""
    return VARIANTS.describe()
