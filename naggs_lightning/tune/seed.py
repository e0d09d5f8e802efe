r"""The theory seed: the NAG-GS step the quadratic analysis recommends for the model's own curvature.

With :math:`L` the top Hessian eigenvalue the run will meet (measured after a short warm-up of a copy of
the model, :mod:`naggs_lightning.tune.warmup`; at initialisation with ``warmup_steps=0``), mu and gamma
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

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from optuna.distributions import FloatDistribution

from naggs_lightning import theory
from naggs_lightning.optim import NAGGS
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.warmup import (
    CURVATURE_BATCHES,
    WARMUP_STEPS,
    WarmupResult,
    warm_up_curvature,
)

__all__ = [
    "RelativeAlpha",
    "TheorySeed",
    "measure_curvature",
    "measured_seed",
    "naggs_hyperparameters",
    "theory_seed",
    "warmed_up_seed",
]


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

    @property
    def all_stable(self) -> bool:
        """True in the regime ``L <= 2 mu`` where every alpha is stable."""
        return self.lambda_max <= 2.0 * self.mu

    @property
    def regime(self) -> str:
        curvature = f"L = {self.lambda_max:.4g}"
        if self.all_stable:
            return f"{curvature} <= 2 mu = {2 * self.mu:.4g}: every alpha is stable (step capped at 1/mu)"
        return f"{curvature} > 2 mu = {2 * self.mu:.4g}: alpha above alpha_crit = {self.alpha_crit:.4g} diverges"

    def describe(self) -> str:
        """One line: the estimate, the regime and the seed."""
        which = "alpha*(mu, 2 mu)" if self.all_stable else ("alpha*" if self.gamma == self.mu else "alpha_c")
        where = "at initialisation" if self.warmup is None else "expected in the run"
        line = (
            f"{self.regime} ({where}); seed alpha = {self.safety:.3g} x {which} = {self.alpha:.4g} "
            f"(mu = {self.mu:.4g}, gamma = {self.gamma:.4g})"
        )
        return line if self.warmup is None else f"{line}; {self.warmup.describe()}"

    def to_attrs(self) -> dict[str, Any]:
        """JSON-safe attributes (``alpha_crit`` is ``None`` when infinite) for the study's user_attrs."""
        out = asdict(self)
        out["alpha_crit"] = None if math.isinf(self.alpha_crit) else self.alpha_crit
        out["regime"] = self.regime
        out["warmup"] = None if self.warmup is None else self.warmup.to_attrs()
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TheorySeed:
        fields = {k: attrs[k] for k in ("lambda_max", "mu", "gamma", "safety", "alpha_theory", "alpha_crit", "alpha")}
        if fields["alpha_crit"] is None:
            fields["alpha_crit"] = math.inf
        warmup = attrs.get("warmup")
        return cls(**fields, warmup=None if warmup is None else WarmupResult.from_attrs(warmup))


def theory_seed(lambda_max: float, mu: float, gamma: float, *, safety: float = 0.9) -> TheorySeed:
    r"""The seeded step for top curvature ``lambda_max`` (see the module docstring for the formula).

    Args:
        lambda_max: the estimated top Hessian eigenvalue L.
        mu: NAG-GS's mu (>= 0).
        gamma: NAG-GS's gamma (> 0); gamma = mu gives the optimal step alpha*.
        safety: factor in (0, 1] applied to the theory's step.
    """
    if not math.isfinite(lambda_max):
        raise TuneError(
            f"the curvature estimate is {lambda_max}: the loss or its gradient is not finite at initialisation"
        )
    if not 0.0 < safety <= 1.0:
        raise TuneError(f"safety must be in (0, 1], got {safety}")
    if not (math.isfinite(mu) and mu >= 0.0):
        raise TuneError(f"mu must be finite and >= 0 to seed, got {mu}")
    if not (math.isfinite(gamma) and gamma > 0.0):
        raise TuneError(f"gamma must be finite and > 0 to seed, got {gamma}")
    big = max(lambda_max, 2.0 * mu)
    if big <= mu:
        raise TuneError(
            f"the curvature estimate is {lambda_max:.4g} <= 0 and mu = 0: the theory gives no step to seed; "
            "set mu > 0 or run without the seed (--no-seed)"
        )
    alpha_theory = float(theory.alpha_c(mu, gamma, big))
    alpha_crit = float(theory.alpha_crit(mu, gamma, lambda_max))
    alpha = safety * min(alpha_theory, alpha_crit)
    return TheorySeed(float(lambda_max), float(mu), float(gamma), float(safety), alpha_theory, alpha_crit, alpha)


def naggs_hyperparameters(module: LightningModule) -> tuple[float, float, bool] | None:
    """``(mu, gamma, fixed_gamma)`` of the NAGGS optimizer ``module.configure_optimizers()`` returns, or ``None``.

    Reading the optimizer itself (rather than the config) covers both the LightningCLI path, where the
    CLI injects ``configure_optimizers``, and modules that build their own optimizer.
    """
    try:
        found = module.configure_optimizers()
    except Exception as exc:
        raise TuneError(
            f"cannot read mu and gamma: {type(module).__name__}.configure_optimizers() failed outside a Trainer "
            f"({type(exc).__name__}: {exc}); run without the theory seed"
        ) from exc
    stack = [found]
    while stack:
        item = stack.pop()
        if isinstance(item, NAGGS):
            group = item.param_groups[0]
            return float(group["mu"]), float(group["gamma"]), bool(group["fixed_gamma"])
        if isinstance(item, dict) and "optimizer" in item:
            stack.append(item["optimizer"])
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def _train_batches(module: LightningModule, datamodule: LightningDataModule | None) -> Any:
    if datamodule is not None:
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule.train_dataloader()
    return module.train_dataloader()


def measure_curvature(
    module: LightningModule,
    datamodule: LightningDataModule | None,
    mu: float,
    *,
    warmup_steps: int = WARMUP_STEPS,
    n_batches: int = CURVATURE_BATCHES,
    device: torch.device | str = "cpu",
) -> WarmupResult:
    """The curvature a run at ``mu`` will meet: :func:`~naggs_lightning.tune.warmup.warm_up_curvature`
    on a copy of ``module`` over the training batches of ``datamodule`` (or of the module itself),
    reading ``n_batches`` batches after ``warmup_steps`` steps (0: at initialisation)."""
    loader = _train_batches(module, datamodule)
    return warm_up_curvature(module, loader, mu, steps=warmup_steps, final_batches=n_batches, device=device)


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


def measured_seed(
    module: LightningModule,
    datamodule: LightningDataModule | None,
    mu: float,
    gamma: float,
    *,
    fixed_gamma: bool = False,
    safety: float = 0.9,
    warmup_steps: int = WARMUP_STEPS,
    n_batches: int = CURVATURE_BATCHES,
    device: torch.device | str = "cpu",
) -> TheorySeed:
    """The seed for ``module`` at ``mu``: :func:`measure_curvature` (the warm-up), then :func:`warmed_up_seed`."""
    warmup = measure_curvature(module, datamodule, mu, warmup_steps=warmup_steps, n_batches=n_batches, device=device)
    return warmed_up_seed(warmup, gamma, safety=safety, fixed_gamma=fixed_gamma)


@dataclass(frozen=True)
class RelativeAlpha:
    r"""alpha searched as a multiple of the theory's step for each trial's own mu and gamma.

    The study samples the ratio :math:`r` (``alpha/seed`` in the trials' parameters) log-uniformly
    in ``[1 / window, window]`` and trains with

    .. math::

        \alpha = \operatorname{clip}\bigl(r \cdot \alpha_{\rm seed}(\mu, \gamma, L),\ [\text{low}, \text{high}]\bigr)

    where :math:`\alpha_{\rm seed}` is :func:`theory_seed` at the trial's mu and gamma and the
    curvature ``lambda_max`` estimated once for the study. So the alpha range is centred (log scale)
    on the seed of every (mu, gamma) the study tries, never leaves the user's ``[low, high]``, and
    the search learns one ratio instead of chasing a step that moves with mu (alpha* ~ 2 sqrt(mu / L)
    for mu << L). With mu and gamma pinned this is the fixed range ``seed x [1/window, window]``.

    Unless ``fixed_gamma``, the seed is taken at gamma = mu whatever the trial's starting gamma (gamma
    relaxes to mu; see the module docstring), so the ratio means the same for every gamma.
    """

    lambda_max: float
    safety: float
    window: float
    low: float
    high: float
    fixed_gamma: bool = False

    def distribution(self) -> FloatDistribution:
        """The distribution of the ratio."""
        return FloatDistribution(1.0 / self.window, self.window, log=True)

    def seed(self, mu: float, gamma: float) -> TheorySeed:
        """The theory seed of a trial at ``mu`` and starting ``gamma`` (taken at gamma = mu unless fixed_gamma)."""
        mu = float(mu)
        return theory_seed(self.lambda_max, mu, float(gamma) if self.fixed_gamma else mu, safety=self.safety)

    def alpha(self, ratio: float, mu: float, gamma: float) -> float:
        """The step a trial trains with for ``ratio`` at its ``mu`` and ``gamma``."""
        return min(max(ratio * self.seed(mu, gamma).alpha, self.low), self.high)
