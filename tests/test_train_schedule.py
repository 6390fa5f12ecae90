"""The contrastive objective's energy-penalty schedule (``alpha`` to ``alpha_end``): its values,
exact resume, the collapse guard's rollback, and no change without it."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest
import torch
from test_train import SAMPLER, Energy, make_trainer, params

from trajebm.engine.buffer import ReplayBuffer, uniform_init
from trajebm.engine.train import Contrastive, ContrastiveConfig


def objective(**cfg) -> Contrastive:
    torch.manual_seed(0)
    buffer = ReplayBuffer(50, (2,), uniform_init(-2, 2, (2,)), seed=0)
    return Contrastive(Energy(), SAMPLER, buffer, ContrastiveConfig(**cfg))


def logged(folder) -> dict[int, float]:
    """metrics.csv's alpha column by step."""
    with open(folder / "metrics.csv") as f:
        return {int(r["step"]): float(r["alpha"]) for r in csv.DictReader(f)}


def test_the_schedule_is_geometric_and_exact_at_both_ends():
    obj = objective(alpha=0.03, alpha_end=0.01)
    values = []
    for step in range(11):
        obj.at_step(step, 11)
        values.append(obj.alpha)
    assert values[0] == 0.03 and values[-1] == 0.01
    assert values[5] == pytest.approx(math.sqrt(0.03 * 0.01))
    ratios = [b / a for a, b in zip(values[:-1], values[1:], strict=True)]
    assert ratios == pytest.approx([(0.01 / 0.03) ** 0.1] * 10)
    obj.at_step(0, 1)
    assert obj.alpha == 0.03  # a one-step run keeps alpha


def test_without_alpha_end_the_loss_and_row_are_unchanged():
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    early, late = objective(alpha=0.5), objective(alpha=0.5)
    early.at_step(0, 100)
    late.at_step(99, 100)
    torch.manual_seed(2)  # the chains' noise
    a = early.step(early.model, x, None)
    torch.manual_seed(2)
    b = late.step(late.model, x, None)
    assert torch.equal(a.loss, b.loss) and a.row == b.row and "alpha" not in a.row
    assert a.row["loss"] == pytest.approx(a.row["e_pos"] - a.row["e_neg"] + 0.5 * a.row["l2"])


@pytest.mark.parametrize("bad", [dict(alpha_end=0.0), dict(alpha_end=-0.01),
                                 dict(alpha_end=math.nan), dict(alpha_end=math.inf),
                                 dict(alpha=0.0, alpha_end=0.01)])
def test_a_bad_alpha_end_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match=r"^alpha_end must be positive[^\n]*$"):
        ContrastiveConfig(**bad)


class Interrupted(Exception):
    pass


def interrupt_at(trainer, index: int) -> None:
    """Make ``trainer.fit()`` stop as step ``index`` (0-based) begins, as a killed run would."""
    at_step = trainer.objective.at_step

    def at(step: int, total: int) -> None:
        if step == index:
            raise Interrupted
        at_step(step, total)

    trainer.objective.at_step = at


def test_a_resumed_run_with_a_schedule_equals_an_unbroken_one(tmp_path):
    schedule = dict(alpha=1.0, alpha_end=0.1)
    unbroken = make_trainer(tmp_path / "a", steps=12, **schedule)
    unbroken.fit()
    first = make_trainer(tmp_path / "b", steps=12, **schedule)
    interrupt_at(first, 9)  # after step 9; the last checkpoint holds step 8
    with pytest.raises(Interrupted):
        first.fit()
    resumed = make_trainer(tmp_path / "b", steps=12, **schedule)
    resumed.fit(resume=True)
    for a, b in zip(params(unbroken.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(unbroken.objective.buffer.data, resumed.objective.buffer.data)
    assert logged(tmp_path / "b") == logged(tmp_path / "a")
    assert logged(tmp_path / "a")[12] == 0.1
    constant = make_trainer(tmp_path / "c", steps=12, alpha=1.0)
    constant.fit()
    assert not torch.equal(params(constant.model)[0], params(unbroken.model)[0])


def test_the_collapse_guard_rollback_keeps_the_schedule_on_the_step(tmp_path):
    # the collapse guard's setting of test_train: it rolls back from step 10 to step 8
    trainer = make_trainer(tmp_path, steps=14, spread=0.05, sampler=replace(SAMPLER, steps=0),
                           lr=2e-2, alpha=0.1, alpha_end=0.05, log_every=1, collapse_gap=2.0,
                           collapse_window=10, rollback_lr_scale=0.1)
    assert trainer.fit()["rollbacks"] == 1
    assert "restored step" in (tmp_path / "events.log").read_text()
    alphas = logged(tmp_path)
    assert list(alphas) == list(range(1, 15))
    assert [alphas[s] for s in alphas] == pytest.approx(
        [0.1 * 0.5 ** ((s - 1) / 13) for s in alphas])
    assert alphas[14] == 0.05
