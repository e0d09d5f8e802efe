r"""The theory seed: the NAG-GS step the quadratic analysis recommends for the model's own curvature.

With :math:`L` the top Hessian eigenvalue the run will meet (measured after a short warm-up of a copy of
the model, :mod:`naggs_lightning.lr.warmup`; at initialisation with ``warmup_steps=0``), mu and gamma
the optimizer's, the seed is

.. math::

    \alpha_{\rm seed} = s \cdot \min\bigl(\alpha_c(\mu, \gamma, \max(L, 2\mu)),\;
        \alpha_{\rm crit}(\mu, \gamma, L)\bigr)

with a safety factor :math:`s \le 1` (default 0.9). For gamma = mu, :math:`\alpha_c = \alpha^* =
2(\mu + \sqrt{\mu L})/(L - \mu)`, the step with the smallest spectral radius over curvatures in
:math:`[\mu, L]`; for other gamma :math:`\alpha_c` is the paper's seed (see THEORY.md). Two regimes:

* :math:`L > 2\mu`: steps above :math:`\alpha_{\rm crit}` diverge, and :math:`\alpha^*` sits just under
  it (a ratio of 1.0056 at kappa = 100). An estimate a fraction of a percent low would put
  :math:`\alpha^*` over the edge, hence the safety factor and the cap at the estimate's own edge.
* :math:`L \le 2\mu`: every step is stable (for large alpha NAG-GS tends to gradient descent with
  step :math:`1/\mu \le 2/L`), so the estimate does not pin alpha down. The seed then takes the optimal
  step for the widest spectrum this regime allows, :math:`[\mu, 2\mu]`: with gamma = mu that is
  :math:`\alpha^*(\mu, 2\mu) = 2(1 + \sqrt 2) \approx 4.83` whatever mu, an effective heavy-ball step
  :math:`h = (\alpha/(1+\alpha))^2/\mu \approx 0.69/\mu`. It stays at the optimal rate if curvature grows
  during training up to :math:`2\mu`, and it joins :math:`\alpha^*(\mu, L)` continuously at
  :math:`L = 2\mu`.

With the default evolving gamma, the seed and the searched alpha range are computed at gamma = mu
whatever gamma the trial starts from: gamma relaxes to mu geometrically
(:math:`\gamma_{k+1} - \mu = (\gamma_k - \mu)/(1 + \alpha)`), so after a few steps every trial
iterates the gamma = mu matrix, whose optimal step is :math:`\alpha^*(\mu, L)`. The paper's
:math:`\alpha_c(\mu, \gamma, L)` for gamma != mu is the optimum of the *fixed*-gamma iteration and
seeds only ``fixed_gamma=True``. (Seeding an evolving-gamma trial at :math:`\alpha_c(\mu, \gamma_0, L)`
made the best ratio alpha/seed depend on gamma_0: a trial starting at gamma_0 = mu / 100 needed a ratio
near 9 to reach :math:`\alpha^*(\mu, L)`, a correlation the sampler had to learn.)

Curvature usually grows during training, so the seed is a starting point for the search, not a
guarantee; the study searches around it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from naggs_lightning import theory
from naggs_lightning.lr.errors import LRError
from naggs_lightning.lr.readings import Bracket, WarmupResult

__all__ = ["TheorySeed", "theory_seed", "warmed_up_seed"]


@dataclass(frozen=True)
class TheorySeed:
    """The curvature estimate, the theory's steps for it, and the seeded alpha."""

    lambda_max: float
    mu: float
    gamma: float
    safety: float
    alpha_theory: float
    alpha_crit: float
    alpha: float
    warmup: WarmupResult | None = None
    """How ``lambda_max`` was measured (``None``: at initialisation, without a warm-up)."""
    bracket: Bracket | None = None
    """The short runs above the theory's step that chose :attr:`alpha` (``None``: ``alpha`` is the theory's)."""

    @property
    def all_stable(self) -> bool:
        """True in the regime ``L <= 2 mu`` where every alpha is stable."""
        return self.lambda_max <= 2.0 * self.mu

    @property
    def regime(self) -> str:
        curvature = f"L = {self.lambda_max:.4g}"
        if self.all_stable:
            return f"{curvature} <= 2 mu = {2 * self.mu:.4g}: every alpha is stable (step capped at 1/mu)"
        if self.warmup is None:
            return f"{curvature} > 2 mu = {2 * self.mu:.4g}: alpha above alpha_crit = {self.alpha_crit:.4g} diverges"
        # A network is not a quadratic: past the edge it sharpens to it and self-stabilises (THEORY.md 2c, 2e).
        return (
            f"{curvature} > 2 mu = {2 * self.mu:.4g}: alpha_crit = {self.alpha_crit:.4g} is the stability edge "
            "for this curvature (a network trained above it sharpens to its edge and keeps training there, up to "
            "the step where it collapses or diverges)"
        )

    def describe(self) -> str:
        """One line: the estimate, the regime and the seed."""
        which = "alpha*(mu, 2 mu)" if self.all_stable else ("alpha*" if self.gamma == self.mu else "alpha_c")
        where = "at initialisation" if self.warmup is None else "expected in the run"
        line = (
            f"{self.regime} ({where}); seed alpha = {self.safety:.3g} x {which} = {self.theory_step:.4g} "
            f"(mu = {self.mu:.4g}, gamma = {self.gamma:.4g})"
        )
        if self.warmup is not None:
            line = f"{line}; {self.warmup.describe()}"
        if self.bracket is not None:
            line = f"{line}; {self.bracket.describe()}: lr = {self.alpha:.4g}"
            if not math.isclose(self.alpha, self.bracket.best.alpha):
                share = self.alpha / self.bracket.best.alpha
                line = f"{line} ({share:.3g} x the best: a short run favours a larger step than the full run keeps)"
        return line

    @property
    def theory_step(self) -> float:
        """The theory's step before the bracket: ``safety`` times the smaller of alpha* and alpha_crit."""
        return self.safety * min(self.alpha_theory, self.alpha_crit)

    def to_attrs(self) -> dict[str, Any]:
        """JSON-safe attributes (``alpha_crit`` is ``None`` when infinite) for the study's user_attrs."""
        out = asdict(self)
        out["alpha_crit"] = None if math.isinf(self.alpha_crit) else self.alpha_crit
        out["regime"] = self.regime
        out["warmup"] = None if self.warmup is None else self.warmup.to_attrs()
        out["bracket"] = None if self.bracket is None else self.bracket.to_attrs()
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TheorySeed:
        fields = {k: attrs[k] for k in ("lambda_max", "mu", "gamma", "safety", "alpha_theory", "alpha_crit", "alpha")}
        if fields["alpha_crit"] is None:
            fields["alpha_crit"] = math.inf
        warmup, bracket = attrs.get("warmup"), attrs.get("bracket")
        return cls(
            **fields,
            warmup=None if warmup is None else WarmupResult.from_attrs(warmup),
            bracket=None if bracket is None else Bracket.from_attrs(bracket),
        )


def theory_seed(lambda_max: float, mu: float, gamma: float, *, safety: float = 0.9) -> TheorySeed:
    r"""The seeded step for top curvature ``lambda_max`` (see the module docstring for the formula).

    Args:
        lambda_max: the estimated top Hessian eigenvalue L.
        mu: NAG-GS's mu (>= 0).
        gamma: NAG-GS's gamma (> 0); gamma = mu gives the optimal step alpha*.
        safety: factor in (0, 1] applied to the theory's step.
    """
    if not math.isfinite(lambda_max):
        raise LRError(
            f"the curvature estimate is {lambda_max}: the loss or its gradient is not finite at initialisation"
        )
    if not 0.0 < safety <= 1.0:
        raise LRError(f"safety must be in (0, 1], got {safety}")
    if not (math.isfinite(mu) and mu >= 0.0):
        raise LRError(f"mu must be finite and >= 0 to seed, got {mu}")
    if not (math.isfinite(gamma) and gamma > 0.0):
        raise LRError(f"gamma must be finite and > 0 to seed, got {gamma}")
    big = max(lambda_max, 2.0 * mu)
    if big <= mu:
        raise LRError(
            f"the curvature estimate is {lambda_max:.4g} <= 0 and mu = 0: the theory gives no step to seed; "
            "set mu > 0 or run without the seed (--no-seed)"
        )
    alpha_theory = float(theory.alpha_c(mu, gamma, big))
    alpha_crit = float(theory.alpha_crit(mu, gamma, lambda_max))
    seed = TheorySeed(float(lambda_max), float(mu), float(gamma), float(safety), alpha_theory, alpha_crit, math.nan)
    return replace(seed, alpha=seed.theory_step)


def warmed_up_seed(warmup: WarmupResult, gamma: float, *, safety: float = 0.9, fixed_gamma: bool = False) -> TheorySeed:
    """The seed for the curvature the run will meet (:attr:`WarmupResult.lambda_run`) at the warm-up's mu,
    never above the warm-up's cap.

    A warm-up that had to restart (its step threw the network into divergence or a dead, flat region)
    caps the seed at half the step that failed: the safety factor is lowered to meet the cap, so every
    trial's step, at every mu, keeps the same ratio to the theory's.
    """
    seed = theory_seed(warmup.lambda_run, warmup.mu, gamma if fixed_gamma else warmup.mu, safety=safety)
    if seed.alpha > warmup.cap:
        seed = theory_seed(seed.lambda_max, seed.mu, seed.gamma, safety=safety * warmup.cap / seed.alpha)
    return replace(seed, warmup=warmup)
