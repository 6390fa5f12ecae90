"""Class-incremental continual learning on split digits / split MNIST (docs/paper.md §3).

The classes arrive in tasks of ``classes_per_task`` by class id ((0, 1), (2, 3), ...), one task
after another; a task's training images are never shown before its turn, there is no task label
at test time, and after each task every method is scored on the test images of all classes seen
so far, predicting among those classes only. Every method gets the same backbone (the preset's
architecture), the same per-task budget (steps, batch size, learning rate) and the engine's one
:class:`~trajebm.engine.train.Trainer` (a fresh Adam per task):

* ``ebm``: the preset's class-conditional :class:`~imagebm.models.ImageEBM`, trained per task by
  contrastive divergence as the paper trains EBMs: positives are the current task's images,
  negatives Langevin samples (the preset's sampler, a fresh replay buffer per task) conditioned
  on the positives' labels, i.e. on the current task's classes only, so old classes' energies
  are never pushed up; the loss is the engine's ``E(x+) - E(x-) + alpha (E(x+)^2 + E(x-)^2)``.
  The default ``ebm_loss="cd+ce"`` adds ``ce_weight`` x the cross-entropy of ``-E(x, y)`` over
  the current task's classes only (a softmax contrast between the task's own classes, which the
  generative loss alone leaves weak: energies of a task's classes differ by ~0.05 on their data),
  still never raising an old class's energy. ``"cd"`` is the plain generative loss; ``"ce"``
  drops the Langevin negatives (that softmax plus ``alpha`` x the mean squared energy), to show
  what the generative term adds. Test images are classified by ``argmin`` over the seen classes
  of ``E(x, y)`` (:class:`~imagebm.classify.EnergyClassifier`).
* baselines, a :class:`~imagebm.classify.SoftmaxClassifier` (one head over all classes) trained
  by cross-entropy over the classes seen so far: ``finetune`` (the lower bound), ``ewc`` (online
  EWC, diagonal Fisher), ``si`` (Synaptic Intelligence), ``lwf`` (Learning without Forgetting)
  and ``joint`` (every task's data so far, the upper bound).

``imagebm continual --preset digits --out DIR`` calls :func:`run_continual`, which writes
``continual.json`` (per method: final accuracy mean and std over seeds, the per-task curves, the
accuracy on each task's classes), ``continual.md`` (a table beside the paper's numbers),
``continual.png`` and ``run.json``. Accuracies are fractions in [0, 1]; std is over seeds
(``ddof=1``, 0 for one seed).
"""

from imagebm.continual.experiment import (
    PAPER_ACCURACY,
    RESULT_FILE,
    plot_curves,
    report_markdown,
    run_continual,
    run_method,
    summarise,
)
from imagebm.continual.learners import (
    LEARNERS,
    EBMLearner,
    EWCLearner,
    JointLearner,
    Learner,
    LwFLearner,
    SILearner,
    SoftmaxLearner,
    current_task_cross_entropy,
)
from imagebm.continual.setup import (
    CONTINUAL_PRESETS,
    EBM_LOSSES,
    METHODS,
    ContinualConfig,
    ContinualSetup,
    load_setup,
    split_tasks,
)

__all__ = [
    "CONTINUAL_PRESETS", "EBM_LOSSES", "LEARNERS", "METHODS", "PAPER_ACCURACY", "RESULT_FILE",
    "ContinualConfig", "ContinualSetup", "EBMLearner", "EWCLearner", "JointLearner", "Learner",
    "LwFLearner", "SILearner", "SoftmaxLearner", "current_task_cross_entropy", "load_setup",
    "plot_curves", "report_markdown", "run_continual", "run_method", "split_tasks", "summarise",
]
