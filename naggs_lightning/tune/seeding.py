"""Seeding a new study: the theory's step for the curvature the run will meet, and the space around it.

The curvature is measured once per study (:func:`~naggs_lightning.lr.measure.measured_seed`: a
short warm-up on a copy of the model), at the mu the configured (or the model's own) NAGGS uses. The
first ``seed_trials`` trials are enqueued at the seed, then half and a quarter of it; every later
trial searches alpha as a multiple of the theory's step for its own mu
(:class:`~naggs_lightning.tune.space.RelativeAlpha`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna.distributions import FloatDistribution

from naggs_lightning.lr.measure import measured_seed, naggs_hyperparameters
from naggs_lightning.lr.seed import TheorySeed
from naggs_lightning.tune import keys
from naggs_lightning.tune.space import RelativeAlpha, SearchSpace

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
    mu, gamma, fixed_gamma = hyper
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
        device=probe.trainer.strategy.root_device,
    )
    relative = RelativeAlpha(
        seed.lambda_max, seed.safety, opts.seed_window, alpha_dist.low, alpha_dist.high, fixed_gamma
    )
    base = {name: reference[name] for name in declared.distributions if name != declared.alpha}
    if isinstance(gamma_dist, FloatDistribution):
        base[declared.gamma] = gamma
    # Further seeded trials halve alpha: curvature grows in training and minibatch noise lowers the
    # stable step, so the theory's step for the start is an upper guess.
    base = declared.encode(base)
    enqueued = [{**base, keys.ALPHA_RATIO: max(0.5**j, 1.0 / opts.seed_window)} for j in range(opts.seed_trials)]
    first = relative.alpha(1.0, mu, gamma)
    note = (
        "new study"
        if first == seed.alpha
        else f"new study; the seed lies outside the alpha range: trial 0 uses {first:.4g}"
    )
    return seed, declared.seeded(relative), enqueued, note