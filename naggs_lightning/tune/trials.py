"""Counting a study's trials, the one count the workers and the objective share.

A trial counts towards ``n_trials`` once it is finished (complete or pruned) or running; failed trials
are replaced, so they do not count.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

__all__ = ["trial_counts"]

_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def trial_counts(study: optuna.Study, *, below: int | None = None) -> tuple[int, int]:
    """``(finished, running)`` trials of ``study``; with ``below``, only those numbered below it."""
    trials = [t for t in study.get_trials(deepcopy=False, states=_COUNTED) if below is None or t.number < below]
    finished = sum(1 for t in trials if t.state != TrialState.RUNNING)
    return finished, len(trials) - finished
