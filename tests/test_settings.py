"""The one settings mechanism (trajebm.engine.settings) and the options it gives the command
lines (trajebm.cli.options); trajectory variants as its first user."""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import pytest

from trajebm.cli.options import add_option, add_options, config_from, given
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import LangevinConfig
from trajebm.engine.settings import (
    Registry,
    differences,
    field_docs,
    from_dict,
    override,
    parse_spec,
    parse_value,
)
from trajebm.models import DSMConfig, EBMConfig, FCConfig
from trajebm.variants import VARIANTS, describe, variant_config


@dataclass
class Inner:
    steps: int = 5
    """Chain steps."""
    noise: float = 0.1
    """Chain noise."""


@dataclass
class Outer:
    steps: int = 100
    """Training steps."""
    lr: float = 1e-3
    """Learning rate."""
    progress: bool = True
    """Show a progress bar."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas."""
    mode: str | None = None
    """A mode, or none."""
    sampler: Inner = field(default_factory=Inner)
    """The chain."""
    chain: Inner = field(default_factory=Inner)
    """Another chain."""


def test_values_and_specs_parse():
    assert [parse_value(v) for v in ("3", "0.5", "TRUE", "none", "x")] == [3, 0.5, True, None,
                                                                            "x"]
    assert parse_spec("ebm:a=1, b=x,") == ("ebm", {"a": 1, "b": "x"})
    with pytest.raises(UsageError, match="expected key=value"):
        parse_spec("ebm:a")


def test_keys_resolve_by_path_shallowest_name_or_parent_field():
    cfg = override(Outer(), {"steps": 7, "sampler.noise": 0.2, "chain_steps": 9, "lr": 0.5})
    assert (cfg.steps, cfg.sampler.noise, cfg.chain.steps, cfg.lr) == (7, 0.2, 9, 0.5)
    assert cfg.sampler.steps == 5
    with pytest.raises(UsageError, match="'noise' is ambiguous; name one of sampler.noise"):
        override(Outer(), {"noise": 0.3})
    with pytest.raises(UsageError, match="unknown setting 'colour'"):
        override(Outer(), {"colour": 1}, where="spec")


def test_aliases_and_settings_of_other_kinds():
    aliases = {"n": "sampler.noise", "double": lambda c, v: override(c, {"lr": 2 * v})}
    cfg = override(Outer(), {"n": 0.4, "double": 1.0}, aliases)
    assert (cfg.sampler.noise, cfg.lr) == (0.4, 2.0)
    with pytest.warns(UserWarning, match="members does not apply to this config"):
        same = override(Outer(), {"members": 3}, elsewhere=lambda key: key == "members")
    assert same == Outer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        override(Outer(), {"members": 3}, elsewhere=lambda key: True, warn=False)


def test_differences_name_other_kinds_and_from_dict_round_trips():
    diff = differences(Outer(steps=3, sampler=Inner(noise=0.5)), Outer())
    assert diff == {"steps": 3, "sampler.noise": 0.5}
    both = differences(variant_config("fc-paper"), variant_config("ebm"))
    assert both["model"] == "fc" and both["model.residual"] is False
    restored = from_dict(Outer, {"betas": [0.0, 0.9], "sampler": {"steps": 2}})
    assert restored.betas == (0.0, 0.9) and restored.sampler == Inner(steps=2)
    assert from_dict(LangevinConfig, {"bounds": [0, 1]}).bounds == (0, 1)
    with pytest.raises(TypeError, match="no setting 'x'"):
        from_dict(Outer, {"x": 1})


def test_field_docs_are_the_attribute_docstrings():
    assert field_docs(Outer)["lr"] == "Learning rate."
    assert field_docs(EBMConfig)["hidden"] == "Width of the MLP's hidden layers."  # inherited


def test_a_registry_names_complete_configs():
    reg = Registry("preset", Outer, {"n": "sampler.noise"})
    reg.register("fast", lambda: Outer(steps=10))
    assert reg.spec("fast:n=0.3,lr=0.1") == Outer(steps=10, lr=0.1, sampler=Inner(noise=0.3))
    assert reg.describe() == {"fast": {"steps": 10}}
    assert reg.get("fast") is not reg.get("fast")
    with pytest.raises(UsageError, match="unknown preset 'slow'; choose from fast"):
        reg.get("slow")
    with pytest.raises(ValueError, match="registered already"):
        reg.register("fast", Outer)


def test_variants_are_complete_configs_of_one_kind_each():
    assert isinstance(variant_config("ebm").model, EBMConfig)
    assert isinstance(variant_config("ebm-dsm").model, DSMConfig)
    assert isinstance(variant_config("fc-paper").model, FCConfig)
    assert describe()["ebm-proposal"] == {"model.init_noise": 0.1, "model.proposal": True}
    assert set(VARIANTS.names()) >= {"ebm", "ebm-paper", "fc", "ensemble", "ebm-dsm"}


def test_old_variant_keys_keep_working():
    cfg = variant_config("ebm:buffer_capacity=64,beta1=0.5,paper=true,sampler_steps=7,steps=9")
    assert cfg.model.contrastive.buffer_size == 64 and cfg.train.betas == (0.0, 0.999)
    assert cfg.model.sampler.steps == 7 and cfg.train.steps == 9 and cfg.batch_size == 1024
    assert variant_config("ebm:beta1=0.5").train.betas == (0.5, 0.999)
    with pytest.warns(UserWarning, match="members does not apply"):
        assert variant_config("ebm:members=3") == variant_config("ebm")
    with pytest.raises(UsageError, match="unknown setting 'wings'"):
        variant_config("ebm:wings=2")
    with pytest.raises(UsageError, match="hidden must be positive"):
        variant_config("fc:hidden=0")


def test_a_base_applies_where_it_fits_and_the_variant_wins():
    base = {"hidden": 16, "members": 2, "sampler_steps": 5, "conditional": False,
            "batch_size": 32}
    ebm = variant_config("ebm-proposal", base)
    assert (ebm.model.hidden, ebm.model.sampler.steps, ebm.model.conditional) == (16, 5, False)
    assert ebm.model.proposal is True and ebm.batch_size == 32
    ens = variant_config("ensemble", base)
    assert (ens.model.members, ens.model.hidden) == (2, 16)
    assert variant_config("ebm-paper", base).batch_size == 1024  # the variant's own setting
    assert variant_config("ebm-uncond", {"conditional": True}).model.conditional is False


def test_options_come_from_the_dataclass_fields():
    p = argparse.ArgumentParser()
    add_options(p, Outer, ("steps", "lr", "betas", "mode"))
    add_option(p, Outer, "progress", "--quiet", help="no progress bar")
    add_option(p, Inner, "noise", "--chain-noise", override=True)
    help_text = p.format_help()
    assert "Training steps (default: 100)" in help_text and "--chain-noise" in help_text
    args = p.parse_args(["--steps", "3", "--betas", "0", "0.5", "--quiet"])
    cfg = config_from(Outer, args)
    assert (cfg.steps, cfg.betas, cfg.progress, cfg.mode) == (3, (0.0, 0.5), False, None)
    assert given(args, ["noise"]) == {} and given(p.parse_args(["--chain-noise", "1"]),
                                                  ["noise"]) == {"noise": 1.0}


SCRIPT = """
import argparse, warnings
from trajebm.cli.options import run_command
from trajebm.engine.errors import UsageError

def warn_then_fail(args):
    warnings.warn("predicting 12 steps", stacklevel=1)
    raise UsageError("bad input")

parser = argparse.ArgumentParser(prog="tool")
parser.set_defaults(func=warn_then_fail)
raise SystemExit(run_command(parser, []))
"""


def test_commands_print_warnings_and_errors_as_one_line():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["tool: warning: predicting 12 steps",
                                          "tool: error: bad input"]
