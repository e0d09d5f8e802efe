"""The pruner a study runs with: Optuna's, named by ``--pruner``, and when the median pruner may start.

The median pruner stops a trial whose metric, at a validation, is below the median of the earlier trials' at the
same validation. It does not judge a trial in the first half of its run: early in training a larger step often
reads worse and then ends better (the short-horizon bias of greedy step-size tuning, Wu et al. 2018; at the edge of
stability a network's loss falls non-monotonically, theory page 2c). Measured on the panel of user models
(``benchmarks/panel.py --parts tune``, sampler seeds 0-2, best val_acc after 20 trials), pruning from the second
validation against pruning from the fourth: BN-ResNet 0.968 against 0.980 (AdamW+TPE 0.980), MLP 0.974 against
0.974, CNN 0.988 against 0.988; on the held-out GRU, whose 6 epochs start at chance, 19 against 12 of 51 sampled
trials were stopped while still near chance.
"""

from __future__ import annotations

from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner

__all__ = ["make_pruner"]

#: Trials the median pruner lets finish before it judges any (it needs a median to compare with).
STARTUP_TRIALS = 5


def make_pruner(pruner: str | BasePruner, validations: int | None) -> BasePruner:
    """The pruner named ``pruner`` for trials that report ``validations`` times (``None``: unknown); an Optuna
    pruner passes through as given."""
    if isinstance(pruner, BasePruner):
        return pruner
    if pruner == "median":
        # Never on the first validation, which is noisy; nor in the first half of a run of known length.
        return MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=max(1, (validations or 0) // 2))
    if pruner == "hyperband":
        return HyperbandPruner(min_resource=1)
    if pruner == "none":
        return NopPruner()
    raise AssertionError(f"TuneOptions admitted the pruner {pruner!r}")
