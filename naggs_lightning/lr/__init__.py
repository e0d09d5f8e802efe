"""The theory's NAG-GS step for a model, without Optuna: the warm-up that measures the curvature a run
will meet (:mod:`~naggs_lightning.lr.warmup`, its record in :mod:`~naggs_lightning.lr.readings`), the seed
computed from it (:mod:`~naggs_lightning.lr.seed`), the short runs above it that find where the model trains
best (:mod:`~naggs_lightning.lr.bracket`), all applied to a Lightning model (:mod:`~naggs_lightning.lr.measure`)
with the model's own NAG-GS optimizer class (:mod:`~naggs_lightning.lr.optimizer`: NAGGS, or AdaNAGGS in its
metric),
and :func:`suggest_lr` (:mod:`~naggs_lightning.lr.suggest`), the one call a user makes. Defaults in
:mod:`~naggs_lightning.lr.defaults`, errors :class:`LRError`.

``naggs-tune`` seeds its studies with these; ``TheoryLRFinder``
(:mod:`naggs_lightning.callbacks.lr_finder`) applies them inside ``Trainer.fit``. Names are imported on
first use, as in :mod:`naggs_lightning`.
"""

from naggs_lightning._lazy import lazy_exports

_EXPORTS = {
    "BRACKET_FACTORS": "naggs_lightning.lr.defaults",
    "BRACKET_STEPS": "naggs_lightning.lr.defaults",
    "CURVATURE_BATCHES": "naggs_lightning.lr.defaults",
    "WARMUP_STEPS": "naggs_lightning.lr.defaults",
    "LRError": "naggs_lightning.lr.errors",
    "CurvatureReading": "naggs_lightning.lr.readings",
    "WarmupResult": "naggs_lightning.lr.readings",
    "Bracket": "naggs_lightning.lr.readings",
    "BracketRun": "naggs_lightning.lr.readings",
    "bracket_step": "naggs_lightning.lr.bracket",
    "warm_up_curvature": "naggs_lightning.lr.warmup",
    "TheorySeed": "naggs_lightning.lr.seed",
    "theory_seed": "naggs_lightning.lr.seed",
    "warmed_up_seed": "naggs_lightning.lr.seed",
    "measure_curvature": "naggs_lightning.lr.measure",
    "measured_seed": "naggs_lightning.lr.measure",
    "naggs_hyperparameters": "naggs_lightning.lr.measure",
    "hyperparameters_of": "naggs_lightning.lr.measure",
    "NaggsHyperparameters": "naggs_lightning.lr.measure",
    "OptimizerKind": "naggs_lightning.lr.optimizer",
    "suggest_lr": "naggs_lightning.lr.suggest",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
