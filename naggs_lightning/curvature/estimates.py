r"""Curvature of a loss w.r.t. a list of parameters: the operator and a solver in one call.

For a module that is being trained use :mod:`naggs_lightning.curvature.probe` instead, which also keeps
dropout, BatchNorm statistics, the RNG and autocast out of the estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from naggs_lightning.curvature.eigen import Algorithm, Which, extreme_eigenpair, hutchinson
from naggs_lightning.curvature.operator import HessianOperator, LossLike, Method

__all__ = ["bottom_eigenvalue", "hutchinson_trace", "top_eigenvalue"]


def _eigenpair(
    loss: LossLike,
    params: Iterable[Tensor],
    which: Which,
    *,
    method: Method,
    fd_eps: float | None,
    **solver: Any,
) -> tuple[float, list[Tensor]]:
    """One extreme eigenpair of the Hessian of ``loss``, the vector split back into one tensor per parameter."""
    op = HessianOperator(loss, list(params), method=method, fd_eps=fd_eps, sync=False)
    init = solver.pop("init")
    if init is not None and not isinstance(init, Tensor):
        init = op.flatten(list(init))  # checks each tensor's shape against its parameter
    res = extreme_eigenpair(op, which=which, init=init, **solver)
    return res.eigenvalue, [t.clone() for t in op.unflatten(res.vector)]


def top_eigenvalue(
    loss: LossLike,
    params: Iterable[Tensor],
    *,
    max_iter: int = 20,
    tol: float = 1e-3,
    init: Tensor | Sequence[Tensor] | None = None,
    method: Method = "exact",
    algorithm: Algorithm = "lanczos",
    fd_eps: float | None = None,
    seed: int = 0,
) -> tuple[float, list[Tensor]]:
    r"""The largest Hessian eigenvalue :math:`\lambda_{max}` of ``loss`` w.r.t. ``params``, and its eigenvector.

    ``loss`` is a scalar tensor with its graph, or a zero-argument callable returning one (needed for
    ``method="finite_difference"``). The eigenvector comes back as one fp32 tensor per parameter; pass
    it as ``init`` next time to warm-start. The model is evaluated as it is: for a module in training,
    use :func:`estimate_top_eigenvalue`, which also handles dropout, BatchNorm, RNG and autocast.
    See :func:`~naggs_lightning.curvature.extreme_eigenpair` for the other arguments.

    Raises:
        NonFiniteCurvatureError: the loss or a parameter is not finite (a diverged model has no curvature).
    """
    return _eigenpair(
        loss,
        params,
        "largest",
        method=method,
        fd_eps=fd_eps,
        max_iter=max_iter,
        tol=tol,
        init=init,
        algorithm=algorithm,
        seed=seed,
    )


def bottom_eigenvalue(
    loss: LossLike,
    params: Iterable[Tensor],
    *,
    max_iter: int = 50,
    tol: float = 1e-3,
    init: Tensor | Sequence[Tensor] | None = None,
    method: Method = "exact",
    algorithm: Algorithm = "lanczos",
    fd_eps: float | None = None,
    seed: int = 0,
) -> tuple[float, list[Tensor]]:
    r"""The smallest Hessian eigenvalue (an estimate of mu, or the most negative curvature) and its eigenvector.

    The low end of a network's spectrum is crowded near zero, so it converges more slowly than the top:
    hence the larger default ``max_iter``. With Lanczos it is the smallest Ritz value of the same
    Krylov space (shifting :math:`H` does not change that space); with power iteration it is the
    dominant eigenvalue of :math:`H - \lambda_{max} I`. Arguments as in :func:`top_eigenvalue`.
    """
    return _eigenpair(
        loss,
        params,
        "smallest",
        method=method,
        fd_eps=fd_eps,
        max_iter=max_iter,
        tol=tol,
        init=init,
        algorithm=algorithm,
        seed=seed,
    )


def hutchinson_trace(
    loss: LossLike | HessianOperator,
    params: Iterable[Tensor] | None = None,
    *,
    n_samples: int = 32,
    method: Method = "exact",
    fd_eps: float | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    r"""Hutchinson's estimate :math:`\mathrm{tr}\,H \approx \frac1m \sum_i z_i^\top H z_i` (Rademacher :math:`z_i`).

    Returns ``(estimate, standard_error)``. :math:`\mathrm{tr}\,H / n` is the mean curvature, a scale
    to compare :math:`\lambda_{max}` with. ``loss`` may also be a ready :class:`HessianOperator`
    (then ``params`` is ignored). The probes come from a private generator seeded with ``seed``.
    """
    if isinstance(loss, HessianOperator):
        op = loss
    else:
        if params is None:
            raise ValueError("params is required unless loss is a HessianOperator")
        op = HessianOperator(loss, list(params), method=method, fd_eps=fd_eps, sync=False)
    return hutchinson(op, n_samples=n_samples, seed=seed)
