r"""Closed forms for NAG-GS on a quadratic (Leplat et al., arXiv 2209.14937).

Pure functions with no optimizer or model state. Every function accepts Python floats, NumPy arrays
or torch tensors (converted to NumPy) and broadcasts over its arguments; a scalar input gives a
Python ``float`` back, an array input a NumPy array.

For a quadratic mode of curvature :math:`\lambda` the state :math:`y = (x, v)` of one NAG-GS step
with step size :math:`\alpha` (the optimizer's ``lr``), mu and gamma evolves as :math:`y_{k+1} = E y_k`
with :math:`D = (1+\alpha)(\gamma + \alpha\mu)` and

.. math::

    E = \frac{1}{D}\begin{pmatrix} \gamma + \alpha\mu & \alpha(\gamma + \alpha\mu) \\
        \alpha(\mu - \lambda) & \gamma(1+\alpha) + \alpha^2(\mu - \lambda) \end{pmatrix}

The names below follow THEORY.md of the project:

* :func:`spectral_radius` / :func:`worst_spectral_radius`: contraction factor per step.
* :func:`alpha_opt`: the optimal step :math:`\alpha^* = 2/(\sqrt\kappa - 1)` for gamma = mu.
* :func:`alpha_crit`: the stability edge; :func:`lambda_stab`: the same edge read as a curvature.
* :func:`heavy_ball_equivalent`: the Polyak heavy-ball ``(lr, momentum)`` of fixed-gamma NAG-GS.
* :func:`adam_equivalent` / :func:`adanaggs_for_adam`: AdaNAGGS read as Adam ``(lr, beta1)``, and back.
* :func:`scale_for_batch_size`: how hyper-parameters move when the batch size changes.

mu here is the curvature floor of the model (the strong-convexity constant in the paper); in deep
learning it is a hyper-parameter that caps the effective step at 1/mu. It is *not* weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

ArrayLike = Union[float, int, np.ndarray, "torch.Tensor"]  # noqa: F821 (torch is optional here)

__all__ = [
    "iteration_matrix",
    "spectral_radius",
    "worst_spectral_radius",
    "alpha_opt",
    "alpha_c",
    "alpha_crit",
    "lambda_stab",
    "heavy_ball_equivalent",
    "adam_equivalent",
    "adanaggs_for_adam",
    "stationary_variance",
    "scale_for_batch_size",
    "classic_edge",
]


def _arr(x: ArrayLike, name: str = "argument") -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    if isinstance(x, (str, bytes)) or np.iscomplexobj(x):
        raise TypeError(f"{name} must be a real number or array, got {type(x).__name__}")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real number or array, got {type(x).__name__}") from err


def _out(x: np.ndarray, *inputs: ArrayLike) -> float | np.ndarray:
    """A Python float when every input was a scalar, else the array."""
    if all(np.ndim(_arr(i)) == 0 for i in inputs):
        return float(x)
    return x


def _check(name: str, value: np.ndarray, *, low: float, strict: bool, allow_inf: bool = False) -> None:
    bad = np.isnan(value) | ((value <= low) if strict else (value < low))
    if not allow_inf:
        bad |= np.isinf(value)
    if np.any(bad):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be finite and {bound}, got {value if value.ndim else float(value)}")


def _check_common(alpha=None, mu=None, gamma=None) -> None:
    if alpha is not None:
        _check("alpha", alpha, low=0.0, strict=False)
    if mu is not None:
        _check("mu", mu, low=0.0, strict=False)
    if gamma is not None:
        _check("gamma", gamma, low=0.0, strict=True)


def _check_lam(lam: np.ndarray) -> None:
    if np.any(~np.isfinite(lam)):
        raise ValueError(f"lam (a curvature) must be finite, got {lam if lam.ndim else float(lam)}")


def _check_L(mu: np.ndarray, L: np.ndarray, *, what: str) -> None:
    if np.any(~np.isfinite(L)):
        raise ValueError(f"L must be finite, got {L if L.ndim else float(L)}")
    if np.any(L < mu):
        raise ValueError(
            f"{what} needs L >= mu (L is the largest curvature, mu the smallest); got L={L if L.ndim else float(L)}, "
            f"mu={mu if mu.ndim else float(mu)}"
        )


def iteration_matrix(alpha: ArrayLike, mu: ArrayLike, gamma: ArrayLike, lam: ArrayLike) -> np.ndarray:
    """The 2x2 matrix ``E`` with ``(x, v)_{k+1} = E (x, v)_k`` for a mode of curvature ``lam``.

    Returns an array of shape ``broadcast(alpha, mu, gamma, lam).shape + (2, 2)``. gamma is held fixed
    (the analysis of THEORY.md section 2); with gamma_0 = mu it stays fixed anyway.
    """
    a, m, g, lm = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(gamma, "gamma"), _arr(lam, "lam"))
    _check_common(a, m, g)
    _check_lam(lm)
    d = (1.0 + a) * (g + a * m)
    out = np.empty(a.shape + (2, 2))
    out[..., 0, 0] = (g + a * m) / d
    out[..., 0, 1] = a * (g + a * m) / d
    out[..., 1, 0] = a * (m - lm) / d
    out[..., 1, 1] = (g * (1.0 + a) + a * a * (m - lm)) / d
    return out


def _rho(a: np.ndarray, m: np.ndarray, g: np.ndarray, lm: np.ndarray) -> np.ndarray:
    d = (1.0 + a) * (g + a * m)
    det = g / d
    tr = (g * (2.0 + a) + a * m - a * a * (lm - m)) / d
    disc = tr * tr - 4.0 * det
    real = (np.abs(tr) + np.sqrt(np.maximum(disc, 0.0))) / 2.0
    return np.where(disc < 0.0, np.sqrt(det), real)


def spectral_radius(alpha: ArrayLike, mu: ArrayLike, gamma: ArrayLike, lam: ArrayLike) -> float | np.ndarray:
    """Spectral radius of the NAG-GS iteration for a mode of curvature ``lam`` (closed form).

    ``rho < 1`` means the mode contracts by ``rho`` per step; ``rho > 1`` means it grows. Negative
    curvature (``lam < 0``) always gives ``rho > 1``: such directions are escaped, by design.
    Vectorised over all arguments.
    """
    a, m, g, lm = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(gamma, "gamma"), _arr(lam, "lam"))
    _check_common(a, m, g)
    _check_lam(lm)
    return _out(_rho(a, m, g, lm), alpha, mu, gamma, lam)


def worst_spectral_radius(alpha: ArrayLike, mu: ArrayLike, gamma: ArrayLike, L: ArrayLike) -> float | np.ndarray:
    """The largest spectral radius over curvatures in ``[mu, L]``.

    On that interval the worst mode is always one of the two ends, so this is
    ``max(rho(mu), rho(L))``.
    """
    a, m, g, big = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(gamma, "gamma"), _arr(L, "L"))
    _check_common(a, m, g)
    _check_L(m, big, what="worst_spectral_radius")
    return _out(np.maximum(_rho(a, m, g, m), _rho(a, m, g, big)), alpha, mu, gamma, L)


def alpha_opt(mu: ArrayLike, L: ArrayLike) -> float | np.ndarray:
    r"""The optimal step :math:`\alpha^* = 2(\mu + \sqrt{\mu L})/(L - \mu) = 2/(\sqrt\kappa - 1)` (gamma = mu).

    At :math:`\alpha^*` the iteration contracts by :math:`\rho^* = (\sqrt\kappa - 1)/(\sqrt\kappa + 1)`.
    Needs ``mu > 0`` (a finite condition number); ``L == mu`` gives ``inf`` (every step is optimal).
    Beware: for large kappa, alpha* sits a fraction of a percent under :func:`alpha_crit`; seed below it.
    """
    m, big = np.broadcast_arrays(_arr(mu, "mu"), _arr(L, "L"))
    _check("mu", m, low=0.0, strict=True)
    _check_L(m, big, what="alpha_opt")
    with np.errstate(divide="ignore"):
        out = np.where(big > m, 2.0 * (m + np.sqrt(m * big)) / np.where(big > m, big - m, 1.0), np.inf)
    return _out(out, mu, L)


def alpha_c(mu: ArrayLike, gamma: ArrayLike, L: ArrayLike) -> float | np.ndarray:
    """The paper's step for general gamma: the edge of the complex region at ``lambda = L``.

    ``(mu + gamma + 2 sqrt(gamma L)) / (L - mu)``; close to, not exactly, the argmin of the spectral
    radius. Equals :func:`alpha_opt` when gamma = mu. ``inf`` when ``L == mu``.
    """
    m, g, big = np.broadcast_arrays(_arr(mu, "mu"), _arr(gamma, "gamma"), _arr(L, "L"))
    _check_common(mu=m, gamma=g)
    _check_L(m, big, what="alpha_c")
    safe = np.where(big > m, big - m, 1.0)
    out = np.where(big > m, (m + g + 2.0 * np.sqrt(g * big)) / safe, np.inf)
    return _out(out, mu, gamma, L)


def alpha_crit(mu: ArrayLike, gamma: ArrayLike, L: ArrayLike) -> float | np.ndarray:
    """The stability edge: every mode of curvature ``<= L`` contracts iff ``alpha < alpha_crit``.

    ``(mu + gamma + sqrt(gamma^2 - 6 gamma mu + mu^2 + 4 gamma L)) / (L - 2 mu)`` when ``L > 2 mu``,
    and ``inf`` when ``L <= 2 mu`` (then NAG-GS is stable for every step: it tends to gradient descent
    with step ``1/mu``, which is stable). ``L`` may be any finite curvature here, also below mu.
    """
    m, g, big = np.broadcast_arrays(_arr(mu, "mu"), _arr(gamma, "gamma"), _arr(L, "L"))
    _check_common(mu=m, gamma=g)
    if np.any(~np.isfinite(big)):
        raise ValueError(f"L must be finite, got {big if big.ndim else float(big)}")
    unstable_possible = big > 2.0 * m
    # gamma^2 - 6 gamma mu + mu^2 + 4 gamma L = (gamma - mu)^2 + 4 gamma (L - mu) > 0 when L > 2 mu.
    root = np.sqrt(np.maximum(g * g - 6.0 * g * m + m * m + 4.0 * g * big, 0.0))
    safe = np.where(unstable_possible, big - 2.0 * m, 1.0)
    out = np.where(unstable_possible, (m + g + root) / safe, np.inf)
    return _out(out, mu, gamma, L)


def lambda_stab(alpha: ArrayLike, mu: ArrayLike, gamma: ArrayLike) -> float | np.ndarray:
    """The largest curvature that step ``alpha`` keeps stable: ``2 mu + 2 (mu + gamma)/alpha + 4 gamma/alpha^2``.

    A mode of curvature ``lam`` contracts iff ``lam < lambda_stab(alpha, mu, gamma)``; the stability
    margin of a model is ``lambda_stab - lambda_max``. ``inf`` at ``alpha = 0``.
    """
    a, m, g = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(gamma, "gamma"))
    _check_common(a, m, g)
    with np.errstate(divide="ignore"):
        out = np.where(
            a > 0,
            2.0 * m + 2.0 * (m + g) / np.where(a > 0, a, 1.0) + 4.0 * g / np.where(a > 0, a * a, 1.0),
            np.inf,
        )
    return _out(out, alpha, mu, gamma)


def heavy_ball_equivalent(alpha: ArrayLike, mu: ArrayLike, gamma: ArrayLike):
    """The heavy-ball ``(h, beta)`` that fixed-gamma NAG-GS equals exactly.

    ``x_{k+1} = x_k - h grad f(x_k) + beta (x_k - x_{k-1})`` with
    ``h = alpha^2 / ((1 + alpha)(gamma + alpha mu))`` and ``beta = gamma / ((1 + alpha)(gamma + alpha mu))``,
    so ``torch.optim.SGD(lr=h, momentum=beta)`` reproduces ``NAGGS(lr=alpha, mu=mu, gamma=gamma,
    fixed_gamma=True)`` to round-off. As alpha grows, ``h -> 1/mu`` and ``beta -> 0``.
    """
    a, m, g = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(gamma, "gamma"))
    _check_common(a, m, g)
    d = (1.0 + a) * (g + a * m)
    return _out(a * a / d, alpha, mu, gamma), _out(g / d, alpha, mu, gamma)


def adam_equivalent(alpha: ArrayLike, mu: ArrayLike, gamma: ArrayLike):
    """The Adam ``(lr, beta1)`` that AdaNAGGS with a fixed gamma equals, but for Adam's first-moment bias correction.

    AdaNAGGS keeps the velocity ``w <- beta w + c g`` and steps ``x <- x - alpha w / P`` in Adam's metric P
    (:class:`~naggs_lightning.optim.AdaNAGGS`). Written as Adam's ``m <- beta1 m + (1 - beta1) g``,
    ``x <- x - lr m / P`` (``m = w (1 - beta) / c``), that is ``beta1 = beta = gamma / ((1 + alpha)(gamma +
    alpha mu))`` and ``lr = alpha c / (1 - beta) = alpha / (gamma + mu (1 + alpha))``. Adam divides ``m`` by
    ``1 - beta1^t`` as well, so the two agree once ``beta1^t`` is small (a few dozen steps at 0.9).
    Decoupled weight decay differs too: AdaNAGGS multiplies x and v by ``1 - alpha wd``, AdamW x by ``1 - lr wd``.
    """
    a, m, g = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(gamma, "gamma"))
    _check_common(a, m, g)
    _, beta = heavy_ball_equivalent(a, m, g)
    return _out(a / (g + m * (1.0 + a)), alpha, mu, gamma), _out(np.asarray(beta), alpha, mu, gamma)


def adanaggs_for_adam(lr: float, beta1: float = 0.9) -> dict[str, float]:
    """AdaNAGGS's ``lr``, ``mu`` and ``gamma`` (gamma = mu) that equal Adam at ``lr`` and ``beta1``
    (:func:`adam_equivalent`, inverted): ``alpha = 1/sqrt(beta1) - 1``, ``mu = alpha / (lr (2 + alpha))``.

    ``AdaNAGGS(params, **adanaggs_for_adam(1e-3))`` is torch AdamW's default: lr 0.0541, mu = gamma = 26.3.
    """
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    if not (0 < beta1 < 1):
        raise ValueError(f"beta1 must be in (0, 1), got {beta1!r}")
    alpha = 1.0 / math.sqrt(beta1) - 1.0
    mu = alpha / (lr * (2.0 + alpha))
    return {"lr": alpha, "mu": mu, "gamma": mu}


def stationary_variance(alpha: ArrayLike, mu: ArrayLike, lam: ArrayLike, sigma: ArrayLike = 1.0) -> float | np.ndarray:
    """Stationary variance of ``x`` for one mode under noise ``sigma sqrt(alpha)`` in the v-update (gamma = mu).

    ``mu^2 sigma^2 (alpha^2 + 2 alpha + 2) / (lam (alpha + 2)(4 mu (1 + alpha) + alpha^2 (2 mu - lam)))``.
    Tends to ``mu sigma^2 / (4 lam)`` as alpha -> 0; ``inf`` at and beyond the stability edge.
    Needs ``lam > 0``.
    """
    a, m, lm, s = np.broadcast_arrays(_arr(alpha, "alpha"), _arr(mu, "mu"), _arr(lam, "lam"), _arr(sigma, "sigma"))
    _check_common(alpha=a, mu=m)
    _check("lam", lm, low=0.0, strict=True)
    _check("sigma", s, low=0.0, strict=False)
    den = lm * (a + 2.0) * (4.0 * m * (1.0 + a) + a * a * (2.0 * m - lm))
    num = m * m * s * s * (a * a + 2.0 * a + 2.0)
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)
    return _out(out, alpha, mu, lam, sigma)


def classic_edge(lr: ArrayLike, momentum: ArrayLike = 0.0, nesterov: bool = False) -> float | np.ndarray:
    """The curvature above which a quadratic mode diverges under torch SGD (for comparison).

    Gradient descent ``2/lr``; heavy ball ``2(1 + beta)/lr``; Nesterov ``(2 + 2 beta)/((1 + 2 beta) lr)``.
    """
    lr_, b = np.broadcast_arrays(_arr(lr, "lr"), _arr(momentum, "momentum"))
    _check("lr", lr_, low=0.0, strict=True)
    if np.any((b < 0) | (b >= 1) | np.isnan(b)):
        raise ValueError(f"momentum must be in [0, 1), got {b if b.ndim else float(b)}")
    out = (2.0 + 2.0 * b) / ((1.0 + 2.0 * b) * lr_) if nesterov else 2.0 * (1.0 + b) / lr_
    return _out(out, lr, momentum)


_BATCH_RULES = ("naggs", "sgd", "adam", "adanaggs")


def scale_for_batch_size(
    hparams: Mapping[str, Any], batch_size: int, new_batch_size: int, rule: str = "naggs"
) -> dict[str, Any]:
    """Hyper-parameters for ``new_batch_size`` given good ones at ``batch_size`` (THEORY.md section 3).

    With ``k = new_batch_size / batch_size``:

    * ``"naggs"``: ``lr -> k lr``; mu, gamma and the number of epochs unchanged (SDE view: only
      ``alpha / B`` enters). Holds until ``k lr`` crosses :func:`alpha_crit` of the top curvature.
    * ``"sgd"``: ``lr -> k lr`` (the linear rule).
    * ``"adam"``: ``lr -> sqrt(k) lr``, ``1 - beta -> k (1 - beta)`` for each of ``betas``,
      ``eps -> eps / sqrt(k)`` (the square-root rule, Malladi et al. 2022).
    * ``"adanaggs"`` (:class:`~naggs_lightning.AdaNAGGS`): ``lr -> k lr``, ``mu -> sqrt(k) mu``,
      ``gamma -> sqrt(k) gamma``, ``1 - beta2 -> k (1 - beta2)``, ``eps -> eps / sqrt(k)``, epochs unchanged.

      Derivation. In the noise-dominated regime the metric is set by the noise:
      ``sqrt(v_hat) ~ sigma / sqrt(B)``, so the preconditioned gradient ``P^-1 g`` has O(1) noise and a mean
      that grows as ``sqrt(B)`` (Malladi et al. 2022, the source of Adam's square-root rule). NAG-GS's SDE
      (THEORY.md section 1) advances time ``alpha`` per step with drift ``-(1/gamma) P^-1 grad f`` and the
      ``(mu/gamma)(x - v)`` coupling in v. ``k`` times fewer steps per epoch need ``alpha -> k alpha``; the
      drift's ``sqrt(k)`` larger mean needs ``gamma -> sqrt(k) gamma``, and ``mu/gamma`` fixed needs
      ``mu -> sqrt(k) mu``; the diffusion per unit time, ``alpha / gamma^2`` times the O(1) noise, is then
      unchanged. The metric's EMA must average over the same number of samples per epoch: ``1 - beta2 -> k
      (1 - beta2)``, and ``eps`` keeps its size relative to ``sqrt(v_hat) ~ 1/sqrt(B)``: ``eps / sqrt(k)``.
      Cross-check with Adam's rule: AdaNAGGS is Adam-like with first-moment factor ``beta1 = beta =
      gamma / ((1 + alpha)(gamma + alpha mu))`` and step ``alpha / (gamma + mu (1 + alpha))`` (the module
      docstring of :mod:`naggs_lightning.optim.adanaggs`); to first order in alpha,
      ``1 - beta = alpha (gamma + mu) / gamma -> k (1 - beta)`` and the step ``-> sqrt(k)`` times the step,
      which is Adam's square-root rule for ``beta1`` and ``lr``. (Keeping mu and gamma, as NAG-GS's own rule
      does, would scale ``1 - beta1`` by ``sqrt(k)`` only.) Like Adam's, the rule holds while the noise
      dominates the gradient and ``beta2`` stays in [0, 1).

    Keys the rule does not touch are copied. Returns a new dict.
    """
    if rule not in _BATCH_RULES:
        raise ValueError(f"rule must be one of {_BATCH_RULES}, got {rule!r}")
    for name, b in (("batch_size", batch_size), ("new_batch_size", new_batch_size)):
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or b < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {b!r}")
    if "lr" not in hparams:
        raise ValueError("hparams must contain 'lr'")
    k = new_batch_size / batch_size
    out = dict(hparams)
    if rule in ("naggs", "sgd"):
        out["lr"] = hparams["lr"] * k
        return out
    if rule == "adanaggs":
        out["lr"] = hparams["lr"] * k
        for name in ("mu", "gamma"):
            if name in hparams:
                out[name] = hparams[name] * math.sqrt(k)
        return _square_root_moments(out, "beta2", k)
    out["lr"] = hparams["lr"] * math.sqrt(k)
    return _square_root_moments(out, "betas", k)


def _square_root_moments(hparams: dict[str, Any], betas_key: str, k: float) -> dict[str, Any]:
    """The square-root rule's moment settings, in place: ``1 - beta -> k (1 - beta)`` for the moving averages under
    ``betas_key`` (one beta or a tuple), ``eps -> eps / sqrt(k)``."""
    if betas_key in hparams:
        given = hparams[betas_key]
        scalar = isinstance(given, (int, float, np.floating))
        scaled = tuple(1.0 - k * (1.0 - b) for b in ((given,) if scalar else given))
        value = scaled[0] if scalar else scaled
        if any(not 0.0 <= b < 1.0 for b in scaled):
            raise ValueError(
                f"the square-root rule gives {betas_key} {value} outside [0, 1) for k = {k:g}; the batch grew too much"
            )
        hparams[betas_key] = value
    if "eps" in hparams:
        hparams["eps"] = hparams["eps"] / math.sqrt(k)
    return hparams
