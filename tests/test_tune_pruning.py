"""naggs-tune's pruners: a median pruner that waits for half of a trial's validations.

Oracle: the median rule itself (a trial below the median of five earlier trials at every validation).
"""

from __future__ import annotations

import optuna
import pytest
from optuna.pruners import HyperbandPruner, NopPruner, PercentilePruner

from naggs_lightning.tune.pruning import STARTUP_TRIALS, make_pruner


def pruned_at(pruner: optuna.pruners.BasePruner, validations: int) -> int | None:
    """The first validation at which ``pruner`` stops a trial that is worse than five finished ones at every one."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(STARTUP_TRIALS):
        trial = study.ask()
        for step in range(validations):
            trial.report(0.9, step)
        study.tell(trial, 0.9)
    trial = study.ask()
    for step in range(validations):
        trial.report(0.1, step)
        if trial.should_prune():
            return step
    return None


@pytest.mark.parametrize(("validations", "first"), [(8, 4), (6, 3), (3, 1), (1, None), (None, 1)])
def test_the_median_pruner_judges_from_the_middle_of_the_run_never_the_first_validation(validations, first):
    assert pruned_at(make_pruner("median", validations), validations or 8) == first


def test_other_pruners_are_optunas_as_named_or_given():
    assert isinstance(make_pruner("hyperband", 8), HyperbandPruner)
    assert isinstance(make_pruner("none", 8), NopPruner)
    given = PercentilePruner(25.0)
    assert make_pruner(given, 8) is given
