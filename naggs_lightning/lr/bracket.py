r"""Where above the theory's step a network trains best: a short bracketed probe.

The theory's step (:mod:`~naggs_lightning.lr.seed`) is the largest that is stable for the curvature the
warm-up met. Networks do not stop there: at a larger step they sharpen to its edge and self-stabilise
(THEORY.md sections 2c and 2e), and the best fixed step often sits above the theory's, up to the step where
the run catapults into a flat, dead region (the loss stalls near its initial value) or diverges. Only the
run can say where between the two it trains best; a few dozen steps say it, because collapses happen early.

:func:`bracket_step` trains short runs of a copy of the model from its initialisation, each on the same
batches, at ``factors`` times the seed (1, 2, 4 by default: up to about 3.6 alpha* at the default safety),
in increasing order. Each run's score is its mean training loss over the last quarter of its steps. A run
whose score stays near the initial loss (at least 98 % of it) did not train: it *collapsed* if its loss fell
below 90 % of the initial loss on the way (a catapult into a flat region), ends above 105 % of it, or a smaller
step's run moved the loss on the same batches (a network killed at its first steps: on the panel CNN such a 4x run,
after 2x trained, scored 0.099 over six full runs), and is *slow* otherwise (the loss has not moved yet at any step:
the bracket climbs on, since a larger step may move it). The
bracket stops climbing at the first run that diverges (a non-finite loss), collapses or does not score clearly
(10 %) below the step under it; the suggested step is the last one the climb kept (the theory's step when none
trained). The first factor is the theory's step itself, so the bracket never suggests a step below
it.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

import torch
from torch import nn

from naggs_lightning._checks import all_finite
from naggs_lightning.curvature import module_loss
from naggs_lightning.lr.defaults import BRACKET_FACTORS, BRACKET_STEPS
from naggs_lightning.lr.errors import LRError
from naggs_lightning.lr.optimizer import NAGGS_KIND, OptimizerKind
from naggs_lightning.lr.readings import (
    FELL_SHARE,
    GAIN_SHARE,
    ROSE_SHARE,
    STALLED_SHARE,
    Bracket,
    BracketRun,
    Outcome,
)
from naggs_lightning.lr.warmup import batch_to, cycle

__all__ = ["bracket_step"]


def bracket_step(
    module: nn.Module,
    batches: Iterable[Any],
    alpha: float,
    mu: float,
    gamma: float,
    *,
    fixed_gamma: bool = False,
    factors: Sequence[float] = BRACKET_FACTORS,
    steps: int = BRACKET_STEPS,
    device: torch.device | str = "cpu",
    optimizer: OptimizerKind = NAGGS_KIND,
) -> Bracket:
    """Short NAG-GS runs of copies of ``module`` at ``factors`` times ``alpha``; see the module docstring.

    Args:
        module: a module with ``compute_loss(batch)`` (or a ``training_step`` returning the loss); untouched.
        batches: the training batches (a dataloader); cycled when shorter than ``steps``.
        alpha: the theory's step (the seed), > 0.
        mu, gamma, fixed_gamma: the optimizer's.
        factors: multiples of ``alpha`` to try, increasing, the first >= 1.
        steps: steps of each run, >= 4.
        device: where the copies train.
        optimizer: the NAG-GS optimizer class the runs train with (the model's own: NAGGS or AdaNAGGS).
    """
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise LRError(f"the bracket needs the seed alpha > 0, got {alpha}")
    if not factors or factors[0] < 1.0 or any(b <= a for a, b in zip(factors, factors[1:])):
        raise LRError(f"bracket factors must be increasing and start at >= 1, got {tuple(factors)}")
    if not isinstance(steps, int) or steps < 4:
        raise LRError(f"bracket steps must be an integer >= 4, got {steps!r}")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        data = [batch_to(b, device) for b in islice(cycle(batches), steps)]
        model = copy.deepcopy(module).to(device)
        with torch.no_grad():
            initial = statistics.fmean(float(module_loss(model, b)) for b in data[: max(1, steps // 4)])
        runs: list[BracketRun] = []
        for factor in factors:
            model = copy.deepcopy(module).to(device)
            quarters = _short_run(model, data, optimizer, factor * alpha, mu, gamma, fixed_gamma)
            outcome = _outcome(quarters, initial, runs)
            runs.append(BracketRun(float(factor), float(factor * alpha), quarters[-1], outcome))
            if outcome not in ("trains", "slow"):
                break
    return Bracket(tuple(runs), initial, steps, time.perf_counter() - start)


def _short_run(
    model: nn.Module, data: list[Any], kind: OptimizerKind, alpha: float, mu: float, gamma: float, fixed_gamma: bool
) -> list[float]:
    """Mean training loss of each quarter of a run through ``data`` (the last is the score; ``[inf]`` once the
    loss is not finite)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = kind.build(params, lr=alpha, mu=mu, gamma=gamma, fixed_gamma=fixed_gamma)
    losses: list[float] = []
    for batch in data:
        loss = module_loss(model, batch)
        if not all_finite(loss):
            return [math.inf]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    size = len(losses) // 4
    return [statistics.fmean(losses[j * size : (j + 1) * size if j < 3 else None]) for j in range(4)]


def _outcome(quarters: list[float], initial: float, earlier: list[BracketRun]) -> Outcome:
    score = quarters[-1]
    if not math.isfinite(score):
        return "diverged"
    if score >= STALLED_SHARE * initial:
        fell = min(quarters) < FELL_SHARE * initial
        # A smaller step moved the loss on these same batches: this one is dead, not slow to start.
        moved = any(r.outcome in ("trains", "no better") for r in earlier)
        return "collapsed" if fell or moved or score > ROSE_SHARE * initial else "slow"
    if earlier and score >= GAIN_SHARE * earlier[-1].score:
        return "no better"
    return "trains"
