"""Score trajectory models on their test split: FD per step, MSE, physics consistency, and
proper scores per start (energy score, CRPS, coverage, spread–skill).

The package is split by concern: :mod:`~trajebm.evaluate.metrics` and
:mod:`~trajebm.evaluate.scores` (the scores as pure maths), :mod:`~trajebm.evaluate.physics`
(re-simulating predicted steps through :class:`trajebm.envs.Simulator`),
:mod:`~trajebm.evaluate.scoring` (a model's test split, its rollouts and their scores),
:mod:`~trajebm.evaluate.figures` (plots, rendered strip, video), :mod:`~trajebm.evaluate.report`
(summary rows, tables) and :mod:`~trajebm.evaluate.job` (the ``evaluate()`` job that writes
``metrics.json`` and the figures). Their public names are importable from here.
"""

from trajebm.evaluate.config import EvalConfig
from trajebm.evaluate.figures import (
    plot_calibration,
    plot_coordinates,
    plot_fd,
    render_strip,
    render_video,
)
from trajebm.evaluate.job import evaluate
from trajebm.evaluate.metrics import (
    MIN_STARTS_PER_DIM,
    dimension_groups,
    fd_per_step,
    fd_size_warning,
    floor_groups,
    floor_per_step,
    physics_triplets,
    prediction_scores,
)
from trajebm.evaluate.physics import physics_checker, physics_error, physics_gaps
from trajebm.evaluate.report import (
    REPORT_STEPS,
    format_interval,
    format_value,
    markdown_table,
    scores_markdown,
    summary_rows,
)
from trajebm.evaluate.scores import (
    CALIBRATION_PERCENT,
    ONE_SAMPLE_NOTE,
    coverage,
    crps,
    energy_score,
    score_summary,
    spread_skill,
    start_scores,
)
from trajebm.evaluate.scoring import (
    TestSet,
    check_fd_size,
    load_test_set,
    predict_test,
    proper_scores,
    rollout_physics,
    score_predictions,
    starts_scored,
)

__all__ = [
    "CALIBRATION_PERCENT", "MIN_STARTS_PER_DIM", "ONE_SAMPLE_NOTE", "REPORT_STEPS",
    "EvalConfig", "TestSet", "check_fd_size", "coverage", "crps", "dimension_groups",
    "energy_score", "evaluate", "fd_per_step", "fd_size_warning", "floor_groups",
    "floor_per_step", "format_interval", "format_value", "load_test_set", "markdown_table",
    "physics_checker", "physics_error", "physics_gaps", "physics_triplets", "plot_calibration",
    "plot_coordinates", "plot_fd", "predict_test", "prediction_scores", "proper_scores",
    "render_strip", "render_video", "rollout_physics", "score_predictions", "score_summary",
    "scores_markdown", "spread_skill", "start_scores", "starts_scored", "summary_rows",
]
