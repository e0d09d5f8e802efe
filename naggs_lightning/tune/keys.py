"""The names naggs-tune gives its attributes in the Optuna storage: one place for each key.

Study user attributes describe how the study was made (a resumed run compares them with its own
input); trial user attributes say what a trial trained with and how it ended. They are plain
Optuna user attributes, so ``optuna trials --study-name NAME --storage URL`` and
``study.trials_dataframe()`` show them.
"""

from __future__ import annotations

__all__ = [
    "STUDY_METRIC",
    "STUDY_CONFIG",
    "STUDY_DECLARED_SPACE",
    "STUDY_SPACE",
    "STUDY_SEED",
    "ALPHA",
    "ALPHA_RATIO",
    "SEEDED",
    "PRUNED_REASON",
    "COLLAPSED",
    "WORKER",
    "SURPLUS",
    "RETRY_OF",
    "WORLD_SIZE",
]

# --- study user attributes -------------------------------------------------------------------------
#: The validation metric the study optimises.
STUDY_METRIC = "naggs.metric"
#: A hash of the merged LightningCLI config (``None`` in factory mode): a study resumes only with it.
STUDY_CONFIG = "naggs.config"
#: The search space as the user declared it (JSON), compared on resume.
STUDY_DECLARED_SPACE = "naggs.declared_space"
#: The searched space (JSON), alpha relative to the seed in a seeded study. Written last: its presence
#: says the study is ready for other workers.
STUDY_SPACE = "naggs.space"
#: The curvature estimate, regime and theory seed (:meth:`~naggs_lightning.lr.seed.TheorySeed.to_attrs`).
STUDY_SEED = "naggs.seed"

# --- trial parameters and user attributes -----------------------------------------------------------
#: The searched parameter of a seeded study: alpha over the theory's seed at the trial's mu and gamma.
ALPHA_RATIO = "alpha/seed"
#: The alpha (optimizer lr) a trial trained with, when alpha is searched as a ratio.
ALPHA = "naggs.alpha"
#: Set on the trials the theory seeded.
SEEDED = "naggs.seeded"
#: Why a trial was pruned (the pruner's decision, divergence, the stability monitor).
PRUNED_REASON = "naggs.pruned_reason"
#: Set on a trial whose training loss collapsed (left its initial value, came back to it and stayed there at the
#: end; :class:`~naggs_lightning.callbacks.collapse.CollapseDetector`'s rule): the detector's reason.
COLLAPSED = "naggs.collapsed"
#: Which worker (``host:pid``) ran a trial.
WORKER = "naggs.worker"
#: Set on a trial that ended failed, untrained, because the study was already full.
SURPLUS = "naggs.surplus"
#: On a trial queued again because the run training it was interrupted: the interrupted trial's number.
RETRY_OF = "naggs.retry_of"
#: How many processes a trial trained on (more than one under a ``ddp_spawn`` trainer).
WORLD_SIZE = "naggs.world_size"
