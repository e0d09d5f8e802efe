"""Seeding a new study: the theory's step for the curvature the run will meet, and the space around it.

The curvature is measured once per study (:func:`~naggs_lightning.lr.measure.measured_seed`: a
short warm-up on a copy of the model, then short runs at 1, 2 and 4 times the theory's step), at the mu
the configured (or the model's own) NAGGS uses. The first ``seed_trials`` trials bracket the best step
the short runs found, ``b``, from the seed ``b/2``: ``b/2``, ``b``, ``b/4``, ``2b``, ..., or for NAGGS, whose seed is
never below the theory's step, ``b``, ``b/2``, ``2b``, ``b/4``, ... where ``b`` is that step (a multiple where a short
run collapsed or diverged is skipped), all at the configured mu. Every later trial searches alpha as a multiple of
the theory's step for its own mu (:class:`~naggs_lightning.tune.space.RelativeAlpha`).

Where the user left mu and gamma to the defaults, the space follows the theory and the curvature met:

* gamma is not searched but starts at the seed's mu: gamma relaxes to mu within about ``1/alpha`` steps,
  and gamma = mu is the theory's best pair, so a searched gamma only adds dimensions that do not train.
* mu is searched where, at the theory's step, it gives the heavy-ball momentum a network trains with. For
  mu << L, ``alpha*(mu, L) ~ 2 sqrt(mu/L)``, so the momentum is ``beta = 1/(1 + alpha*)^2 ~ 1 - 4 sqrt(mu/L)``
  and the effective step ``h ~ 4/L`` whatever mu: mu chooses the momentum. ``1 - beta`` in [0.02, 0.5] is
  ``mu`` in ``L [2.5e-5, 0.0156]`` (widened to hold the configured mu). The default range, 1e-4 to 10, put
  most sampled trials at a momentum of 0.999 or at plain gradient descent with step ``1/mu``, where
  networks do not train in a trial's budget.
* The heaviest momentum also depends on how long a trial runs. Heavy ball's oscillations decay as
  ``beta^(t/2)``, in about ``2/(1 - beta)`` steps; a run of ``T`` optimizer steps that holds fewer than
  :data:`ENVELOPE_DECAYS` of those ends while its start still swings. So ``1 - beta >= 2 ENVELOPE_DECAYS / T``
  where the trainer fixes ``T`` (:func:`~naggs_lightning.tune.run_length.planned_steps`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from optuna.distributions import FloatDistribution

from naggs_lightning.lr.measure import measured_seed, naggs_hyperparameters, train_batches
from naggs_lightning.lr.readings import BracketRun
from naggs_lightning.lr.seed import TheorySeed
from naggs_lightning.tune import keys
from naggs_lightning.tune.run_length import planned_steps
from naggs_lightning.tune.space import DEFAULT_RANGES, RelativeAlpha, SearchSpace

if TYPE_CHECKING:
    from naggs_lightning.tune.objective import TrialParts
    from naggs_lightning.tune.options import TuneOptions

__all__ = ["Seeding", "seed_new_study"]

#: What seeding returns: the seed (``None`` when unseeded), the searched space, the enqueued trials' params
#: and a note for the header.
Seeding = tuple[TheorySeed | None, SearchSpace, list[dict[str, Any]], str]


def seed_new_study(probe: TrialParts, declared: SearchSpace, reference: dict[str, Any], opts: TuneOptions) -> Seeding:
    """The seed, the space with alpha relative to it, the seeded trials' params, and a note.

    Runs before the study exists: a failure here (a model that does not train at its mu) leaves no study.
    """
    if not opts.seed:
        return None, declared, [], "new study, unseeded"
    alpha_dist = declared.distributions.get(declared.alpha)
    if alpha_dist is None:
        return None, declared, [], f"unseeded: alpha ({declared.alpha}) is pinned"
    if not isinstance(alpha_dist, FloatDistribution) or alpha_dist.step is not None:
        return None, declared, [], f"unseeded: alpha ({declared.alpha}) is not searched over a continuous range"
    hyper = naggs_hyperparameters(probe.model)
    if hyper is None:
        return None, declared, [], "unseeded: the optimizer is not NAGGS (the seed is NAG-GS theory)"
    mu, gamma, fixed_gamma = hyper.mu, hyper.gamma, hyper.fixed_gamma
    gamma_dist = declared.distributions.get(declared.gamma)
    if isinstance(gamma_dist, FloatDistribution):
        # gamma = mu is the best (alpha, gamma) pair of the quadratic analysis; gamma relaxes to mu anyway.
        gamma = min(max(mu, gamma_dist.low), gamma_dist.high)
    seed = measured_seed(
        probe.model,
        probe.datamodule,
        mu,
        gamma,
        fixed_gamma=fixed_gamma,
        safety=opts.safety,
        warmup_steps=opts.warmup_steps,
        curvature_batches=opts.curvature_batches,
        bracket_steps=opts.bracket_steps,
        device=probe.trainer.strategy.root_device,
        optimizer=hyper.kind,  # AdaNAGGS: warm-up and bracket in its metric, the preconditioned sharpness
    )
    declared = _theory_ranges(declared, seed, mu, fixed_gamma, lambda: _planned_steps(probe))
    low, high = ratio_range(seed, opts.seed_window)
    relative = RelativeAlpha(
        seed.lambda_max, seed.safety, opts.seed_window, alpha_dist.low, alpha_dist.high, fixed_gamma, low, high
    )
    base = {name: reference[name] for name in declared.distributions if name != declared.alpha}
    if declared.gamma in declared.distributions:
        base[declared.gamma] = gamma
    base = declared.encode(base)
    ratios = seeded_ratios(seed, opts.seed_trials, (low, high))
    enqueued = [{**base, keys.ALPHA_RATIO: ratio} for ratio in ratios]
    first = relative.alpha(ratios[0], mu, gamma)
    note = (
        "new study"
        if first == seed.alpha
        else f"new study; the seed lies outside the alpha range: trial 0 uses {first:.4g}"
    )
    return seed, declared.seeded(relative), enqueued, note


def _planned_steps(probe: TrialParts) -> int | None:
    """The optimizer steps a trial of ``probe``'s config takes (``None`` where the trainer does not bound them)."""
    try:
        batches = len(train_batches(probe.model, probe.datamodule))
    except TypeError:  # an iterable dataset: the epochs do not bound the run, only max_steps can
        batches = None
    return planned_steps(probe.trainer, batches)


#: The momentum deficit 1 - beta at the theory's step that the default mu range spans (see the module docstring).
MOMENTUM_DEFICIT = (0.02, 0.5)
#: How many decay times ``2 / (1 - beta)`` of heavy ball's oscillations a trial's run must hold (module docstring).
ENVELOPE_DECAYS = 5


def momentum_deficits(steps: int | None) -> tuple[float, float]:
    """The range of ``1 - beta`` the default mu range spans, for trials of ``steps`` optimizer steps (``None``:
    unbounded): :data:`MOMENTUM_DEFICIT`, its lower end raised to ``2 ENVELOPE_DECAYS / steps``."""
    low, high = MOMENTUM_DEFICIT
    if steps:
        low = min(max(low, 2.0 * ENVELOPE_DECAYS / steps), high)
    return low, high


def _theory_ranges(
    declared: SearchSpace, seed: TheorySeed, mu: float, fixed_gamma: bool, steps: Callable[[], int | None]
) -> SearchSpace:
    """The space with mu (and gamma) left to their defaults replaced by the theory's for trials of ``steps()``
    optimizer steps (module docstring). ``steps`` is called only where mu's range is the default's: counting
    them sets the datamodule up again."""
    default_mu = DEFAULT_RANGES["mu"]
    if declared.distributions.get(declared.mu) is default_mu and mu > 0:
        low, high = default_mu.low, default_mu.high
        if seed.lambda_max > 2.0 * mu:
            low, high = (seed.lambda_max * (d / 4.0) ** 2 for d in momentum_deficits(steps()))
        dist = FloatDistribution(min(low, mu), max(high, mu), log=True)
        declared = replace(declared, distributions={**declared.distributions, declared.mu: dist})
    if declared.distributions.get(declared.gamma) is DEFAULT_RANGES["gamma"] and not fixed_gamma:
        declared = declared.pinned(declared.gamma, seed.gamma)
    return declared


def ratio_range(seed: TheorySeed, window: float) -> tuple[float, float]:
    """The range of alpha / (theory's step) a seeded study searches: from ``b / window`` (``b`` the bracket's best
    multiple) to half a doubling (a factor sqrt 2) past the largest multiple whose short run did not collapse or
    diverge; ``[1/window, window]`` without a bracket. The bracket doubles its step, so where the next multiple
    failed the range ends at the log-midpoint between the two.

    Chosen on the panel of user models (``benchmarks/panel.py``, median of 3 sampler seeds): with ``[1/4, 4]`` the
    sampled trials above the bracket's next multiple nearly all ended near chance (the MLP at 2.2-3.6x: 0.110-0.224;
    the Transformer, whose 2x short run had collapsed, at 2.0-3.6x: 0.000-0.129); stopping at the next multiple
    itself cost the BN-ResNet its best trials (0.974 after 20 against 0.984; a 40-step run undervalues the larger
    step a BatchNorm network prefers later); half a doubling past it kept them (0.980)."""
    best, runs = _bracketed(seed)
    if not runs:
        return 1.0 / window, window
    held = [r.factor for r in runs if not r.failed and r.factor >= best]
    return best / window, math.sqrt(2.0) * max(held, default=best)


def seeded_ratios(seed: TheorySeed, count: int, bounds: tuple[float, float]) -> list[float]:
    """alpha / (theory's step) of the seeded trials: the seed ``s`` itself, then doublings and halvings around it,
    the first towards the bracket's best ``b`` (down where ``s`` is ``b``), skipping multiples at or past a short
    run that collapsed or diverged, within ``bounds`` (:func:`ratio_range`).

    The seed is ``b/2`` (:data:`~naggs_lightning.lr.measure.SEED_FRACTION`): b/2, b, b/4, 2b, ..., the smaller step
    before the larger one for the reason the seed is halved (the short runs favour a step the full run cannot keep).
    For NAGGS it is never below the theory's step, so where the bracket kept that step the seed is ``b``: b, b/2, 2b,
    b/4, 4b, ... On the panel, AdaNAGGS's b/4 trial scores 0.974 on the BN-ResNet, where b/2, b and 2b read 0.960,
    0.882 and 0.912."""
    best, runs = _bracketed(seed)
    failed = (r.factor for r in runs if r.failed and r.factor > best)
    ceiling = min(failed, default=math.inf)
    low, high = bounds
    first = seed.alpha / seed.theory_step
    towards = 1.0 if best > first * (1.0 + 1e-9) else -1.0  # the seed is b itself for NAGGS: down first
    ladder = (first * 2.0 ** (towards * (j // 2 + 1) * (1 if j % 2 == 0 else -1)) for j in range(4 * count))
    ratios: list[float] = []
    for ratio in itertools.chain([first], ladder):
        if ratio >= ceiling:
            continue
        ratio = min(max(ratio, low), high)
        if ratio not in ratios:
            ratios.append(ratio)
        if len(ratios) == count:
            break
    return ratios


def _bracketed(seed: TheorySeed) -> tuple[float, tuple[BracketRun, ...]]:
    """The bracket's best multiple of the theory's step (the seed's without a bracket), and its short runs."""
    if seed.bracket is None:
        return seed.alpha / seed.theory_step, ()
    return seed.bracket.best.factor, seed.bracket.runs
