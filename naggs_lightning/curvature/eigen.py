r"""Eigen-solvers written against :class:`~naggs_lightning.curvature.operator.LinearOperator` alone.

Lanczos with full re-orthogonalisation (default) or power iteration:

* Lanczos builds the Krylov space :math:`\mathrm{span}\{v, Hv, \dots, H^{k-1}v\}` and reads the extreme
  eigenvalues off the tridiagonal :math:`T_k = V_k^\top H V_k`. Its error shrinks like
  :math:`\exp(-2k\sqrt{\mathrm{gap}})` against :math:`(\lambda_2/\lambda_1)^{2k}` for power iteration,
  and it returns the largest *algebraic* eigenvalue even when a negative one is larger in magnitude.
  It stores the basis: one vector of the size of the parameters per product (``max_iter + 1`` at most).
* Power iteration stores two vectors. It finds the eigenvalue of largest magnitude, so a negative
  dominant eigenvalue is shifted away (a second run on :math:`H - \theta I`), and the smallest eigenvalue
  is the dominant one of :math:`H - \lambda_{max} I` (the shifted iteration).

Both accept a warm start (the previous eigenvector): between two probes of a training run the top
eigenvector moves little, so a few products suffice. :func:`rayleigh_quotient` gives the curvature along
one direction (one product), :func:`hutchinson` the trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from naggs_lightning.curvature.operator import LinearOperator, NonFiniteCurvatureError, check_choice

__all__ = ["Algorithm", "EigenResult", "Which", "extreme_eigenpair", "hutchinson", "rayleigh_quotient"]

Algorithm = Literal["lanczos", "power"]
Which = Literal["largest", "smallest"]

ALGORITHMS = ("lanczos", "power")


class EigenResult(NamedTuple):
    """An eigenvalue estimate and how it was reached."""

    eigenvalue: float
    """The Ritz value (Lanczos) or Rayleigh quotient (power iteration)."""
    vector: Tensor
    """The unit eigenvector estimate, flat (split it with :meth:`HessianOperator.unflatten`)."""
    n_matvecs: int
    """Hessian-vector products spent."""
    converged: bool
    """Whether ``tol`` was met before ``max_iter``."""


def check_iter_tol(max_iter: int, tol: float) -> None:
    """Raise a ValueError naming the argument unless ``max_iter >= 1`` is an integer and ``tol >= 0`` finite."""
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (tol >= 0.0 and math.isfinite(tol)):
        raise ValueError(f"tol must be finite and >= 0, got {tol!r}")


def _apply(op: LinearOperator, vec: Tensor) -> Tensor:
    out = op(vec)
    # One check per product: a NaN in the Krylov basis would surface as linalg.eigh failing to converge.
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteCurvatureError("the operator returned a non-finite product: the curvature is undefined here")
    return out


def _start_vector(op: LinearOperator, init: Tensor | Sequence[Tensor] | None, seed: int) -> Tensor:
    if init is None:
        # A private generator: the training run's RNG stream is not consumed, and every rank starts
        # from the same vector.
        gen = torch.Generator(device=op.device).manual_seed(seed)
        v = torch.randn(op.numel, generator=gen, device=op.device, dtype=op.dtype)
    else:
        flat = init if isinstance(init, Tensor) else torch.cat([t.detach().reshape(-1) for t in init])
        if flat.numel() != op.numel:
            raise ValueError(f"init has {flat.numel()} elements, the parameters {op.numel}")
        v = flat.detach().reshape(-1).to(device=op.device, dtype=op.dtype).clone()
    norm = v.norm()
    if not (torch.isfinite(norm) and norm > 0):
        raise ValueError("init must be a finite, non-zero vector")
    return v / norm


def _lanczos(op: LinearOperator, v0: Tensor, which: Which, max_iter: int, tol: float) -> EigenResult:
    m = min(max_iter, v0.numel())
    basis = [v0]  # grown one vector per product, so a warm start that converges early stays small
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(m):
        w = _apply(op, basis[j])
        alphas.append(float(torch.dot(w, basis[j])))
        # Full re-orthogonalisation, twice ("twice is enough", Kahan/Parlett): without it the basis
        # loses orthogonality as soon as a Ritz value converges and ghost copies appear.
        for _ in range(2):
            for q in basis:
                w -= torch.dot(q, w) * q
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if j:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        idx = -1 if which == "largest" else 0
        theta, s = float(evals[idx]), evecs[:, idx]
        # |beta s_last| is the residual ||H y - theta y|| of the Ritz pair; with the gap to the next Ritz
        # value, res^2 / gap bounds the eigenvalue error more tightly once the pair has converged.
        res = beta * abs(float(s[-1]))
        gap = abs(theta - float(evals[idx - 1 if which == "largest" else 1])) if j else math.inf
        err = min(res, res * res / gap) if 0 < gap < math.inf else res
        breakdown = beta <= 1e-7 * max(abs(a) for a in alphas)  # invariant subspace: T holds exact eigenvalues
        converged = err <= tol * abs(theta) or breakdown
        if converged or j == m - 1:
            vec = torch.zeros_like(v0)
            for q, coef in zip(basis, s.tolist()):
                vec.add_(q, alpha=coef)
            return EigenResult(theta, vec / vec.norm(), j + 1, converged)
        betas.append(beta)
        basis.append(w / beta)
    raise AssertionError("unreachable: the loop returns on its last iteration")


def _power(op: LinearOperator, v0: Tensor, shift: float, max_iter: int, tol: float) -> EigenResult:
    """Dominant eigenpair of ``H - shift I`` (the shift is added back to the eigenvalue)."""
    v, prev = v0, None
    for k in range(max_iter):
        w = _apply(op, v)
        if shift:
            w -= shift * v
        theta = float(torch.dot(v, w))
        norm = w.norm()
        if not norm > 0 or (prev is not None and abs(theta - prev) <= tol * abs(theta)):
            return EigenResult(theta + shift, v, k + 1, True)
        v, prev = w / norm, theta
    return EigenResult(theta + shift, v, max_iter, False)


def extreme_eigenpair(
    op: LinearOperator,
    *,
    which: Which = "largest",
    max_iter: int = 20,
    tol: float = 1e-3,
    init: Tensor | Sequence[Tensor] | None = None,
    algorithm: Algorithm = "lanczos",
    seed: int = 0,
) -> EigenResult:
    r"""The largest or smallest (algebraic) eigenpair of a symmetric operator (a Hessian).

    Args:
        op: the operator (see :class:`~naggs_lightning.curvature.HessianOperator` and
            :func:`~naggs_lightning.curvature.module_hessian`).
        which: ``"largest"`` or ``"smallest"``.
        max_iter: Hessian-vector products at most (per phase for power iteration: a negative dominant
            eigenvalue, or ``which="smallest"``, takes a second, shifted phase).
        tol: relative eigenvalue accuracy at which to stop. Lanczos bounds the error by
            :math:`\min(r, r^2/\delta)` (residual :math:`r`, gap :math:`\delta` to the next Ritz value);
            power iteration stops when the Rayleigh quotient changes by less than ``tol`` relative.
        init: warm start: the previous eigenvector, flat or one tensor per parameter. ``None`` draws a
            Gaussian vector from a private generator seeded with ``seed`` (the global RNG is not used).
        algorithm: ``"lanczos"`` (fast; stores one parameter-sized vector per product, at most
            ``max_iter + 1``) or ``"power"`` (two vectors).

    Raises:
        NonFiniteCurvatureError: a product is not finite (a diverged model, a non-finite loss).
    """
    check_choice("which", which, ("largest", "smallest"))
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_iter_tol(max_iter, tol)
    v0 = _start_vector(op, init, seed)
    if algorithm == "lanczos":
        return _lanczos(op, v0, which, max_iter, tol)
    first = _power(op, v0, 0.0, max_iter, tol)
    # Power iteration finds the eigenvalue of largest magnitude. If that is the one asked for (a
    # non-negative top, or a negative one when the smallest is asked for) it is the answer; otherwise
    # shift by it, which makes the asked-for end dominant: H - theta I >= 0 for theta = lambda_min < 0,
    # H - theta I <= 0 for theta = lambda_max.
    if (which == "largest") == (first.eigenvalue >= 0):
        return first
    second = _power(op, v0, first.eigenvalue, max_iter, tol)
    return second._replace(n_matvecs=first.n_matvecs + second.n_matvecs)


def rayleigh_quotient(op: LinearOperator, direction: Tensor) -> float:
    r"""The curvature :math:`d^\top H d / d^\top d` along one flat direction (one product).

    Along a minibatch's own gradient this is the *batch sharpness* of Andreyev & Beneventano, the
    quantity that settles at the edge of stability under minibatch training.
    """
    direction = direction.to(device=op.device, dtype=op.dtype)
    norm2 = float(torch.dot(direction, direction))
    if not (math.isfinite(norm2) and norm2 > 0):
        raise ValueError("direction must be a finite, non-zero vector")
    return float(torch.dot(direction, _apply(op, direction))) / norm2


def hutchinson(op: LinearOperator, *, n_samples: int = 32, seed: int = 0) -> tuple[float, float]:
    r"""Hutchinson's trace estimate :math:`\frac1m \sum_i z_i^\top H z_i` (Rademacher :math:`z_i`) and its standard
    error."""
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    gen = torch.Generator(device=op.device).manual_seed(seed)
    samples = []
    for _ in range(n_samples):
        z = torch.randint(0, 2, (op.numel,), generator=gen, device=op.device).to(op.dtype).mul_(2).sub_(1)
        samples.append(float(torch.dot(z, _apply(op, z))))
    values = torch.tensor(samples, dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(n_samples))
