"""The top of a seeded study's step range, learnt from the trials whose loss collapsed.

A seeded study samples alpha as a multiple of the theory's step (:data:`~naggs_lightning.tune.keys.ALPHA_RATIO`)
up to half a doubling past the largest multiple whose short bracket run held
(:func:`~naggs_lightning.tune.seeding.ratio_range`). A full run can collapse where a 40-step run held: the step
throws the network into a flat region late, and the loss goes back to its value at initialisation. On the panel's
CNN (``benchmarks/panel.py``) the seeded trial at 4x ended at chance though its short run had not, and the sampled
trials from 2.7x up ended near chance too: 15 of the 102 sampled trials of six sampler seeds.

So a trial marked collapsed (:data:`~naggs_lightning.tune.keys.COLLAPSED`) at a multiple above the best trial's caps
the range of every trial sampled after it. As :func:`~naggs_lightning.tune.seeding.ratio_range` does for the short
runs, the range ends half a doubling's worth past what held: at the log-midpoint between the lowest such multiple
and the largest complete trial's multiple below it that did not collapse. A collapse below the best trial's
multiple (a momentum too close to 1 at a small mu, say) says nothing about the top of the range and is left alone;
so is a range with no complete trial yet to call best.

Measured on the panel (six sampler seeds, 20 trials): the CNN's sampled trials near chance went from 15 of 102
to 3, its best after 20 from 0.986 to 0.988 (AdamW+TPE: 0.988); the held-out GRU's from 0.847 to 0.853, with 37 of 102
near chance (41 before); the MLP's and BN-ResNet's studies, where nothing collapsed above the best, ran the same
trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import optuna
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from naggs_lightning.tune.keys import ALPHA_RATIO, COLLAPSED

__all__ = ["ratio_ceiling", "capped"]


def ratio_ceiling(trials: Iterable[FrozenTrial], direction: StudyDirection) -> float | None:
    """Half a doubling's worth (the log-midpoint) between the lowest multiple of the theory's step at which a trial
    collapsed, above the best complete trial's multiple, and the largest complete trial's multiple below it that did
    not collapse; ``None`` where no trial collapsed above the best."""
    trials = [t for t in trials if ALPHA_RATIO in t.params]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    pick = max if direction == StudyDirection.MAXIMIZE else min
    best = pick(complete, key=lambda t: t.value).params[ALPHA_RATIO]
    collapsed = min(
        (t.params[ALPHA_RATIO] for t in trials if t.user_attrs.get(COLLAPSED) and t.params[ALPHA_RATIO] > best),
        default=None,
    )
    if collapsed is None:
        return None
    below = (t.params[ALPHA_RATIO] for t in complete if not t.user_attrs.get(COLLAPSED))
    held = max((ratio for ratio in below if best < ratio < collapsed), default=best)
    return math.sqrt(collapsed * held)


def capped(dist: FloatDistribution, study: optuna.Study) -> FloatDistribution:
    """``dist`` (the ratio's distribution) ending at the study's :func:`ratio_ceiling` where that lies inside it."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    ceiling = ratio_ceiling(finished, study.direction)
    if ceiling is None or not dist.low < ceiling < dist.high:
        return dist
    return FloatDistribution(dist.low, ceiling, log=dist.log)
