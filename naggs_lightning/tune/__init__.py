"""naggs-tune: an Optuna study over NAG-GS hyper-parameters whose first trial comes from the theory.

:func:`run` is the Python API; ``naggs-tune`` (:mod:`naggs_lightning.tune.cli`) the console script
over it, its flags generated from :class:`TuneOptions`. The parts: :mod:`~naggs_lightning.tune.options`
(the options, validated once), :mod:`~naggs_lightning.tune.space` (search space, alpha relative to the
theory's seed), :mod:`~naggs_lightning.tune.objective` (one trial), :mod:`~naggs_lightning.tune.opening`
and :mod:`~naggs_lightning.tune.seeding` (resuming or creating and seeding a study),
:mod:`~naggs_lightning.tune.workers` (the trial loop), :mod:`~naggs_lightning.tune.trials` (counting the
study's trials), :mod:`~naggs_lightning.tune.storage` (Optuna RDB storage),
:mod:`~naggs_lightning.tune.interrupts` (Ctrl-C), :mod:`~naggs_lightning.tune.keys` (the names of the
study's and trials' attributes), :mod:`~naggs_lightning.tune.report` (progress, table, best.yaml, plots)
and :mod:`~naggs_lightning.tune.study` (the driver).

The seed itself (the warm-up that measures the curvature, the theory's step for it) belongs to
:mod:`naggs_lightning.lr`, which knows nothing of Optuna; its errors reach the tuner's users as
:class:`TuneError`.

Names are imported on first use, as in :mod:`naggs_lightning`.
"""

from naggs_lightning._lazy import lazy_exports

_EXPORTS = {
    "run": "naggs_lightning.tune.study",
    "TuneOptions": "naggs_lightning.tune.options",
    "SearchSpace": "naggs_lightning.tune.space",
    # The seed moved to naggs_lightning.lr; still importable from here, where studies show it.
    "TheorySeed": "naggs_lightning.lr.seed",
    "theory_seed": "naggs_lightning.lr.seed",
    "TuneError": "naggs_lightning.tune.errors",
}
_SUBMODULES = ("keys",)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBMODULES)
