r"""Curvature in an optimizer's metric: the preconditioned operator :math:`P^{-1/2} H P^{-1/2}`.

For a fixed diagonal metric P, NAG-GS in the metric P is NAG-GS on :math:`y = P^{1/2} x`, whose Hessian is
:math:`P^{-1/2} H P^{-1/2}` (THEORY.md section 2d). Every closed form of :mod:`naggs_lightning.theory` then
reads its top eigenvalue, the *preconditioned sharpness* :math:`\lambda_{\max}(P^{-1} H)`, in place of
:math:`\lambda_{\max}(H)`. :class:`PreconditionedOperator` wraps any
:class:`~naggs_lightning.curvature.operator.LinearOperator`, so the eigen-solvers run on it unchanged;
:func:`optimizer_metric` reads P from an optimizer that keeps one (``metric(p)``, as
:class:`~naggs_lightning.AdaNAGGS` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from naggs_lightning.curvature.operator import LinearOperator

__all__ = ["PreconditionedOperator", "has_metric", "optimizer_metric"]


def has_metric(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` runs in a metric of its own: it has ``metric(p)`` (AdaNAGGS)."""
    return callable(getattr(optimizer, "metric", None))


def optimizer_metric(optimizers: Sequence[Optimizer], params: Sequence[Tensor]) -> list[Tensor] | None:
    """The diagonal of P for each of ``params``, read from whichever of ``optimizers`` trains it.

    ``None`` when no optimizer has a metric (the plain Hessian is the one the theory reads). A parameter
    that has no metric yet (no step taken, or trained by an optimizer without one) reads P = 1.
    """
    keeping = [opt for opt in optimizers if has_metric(opt)]
    if not keeping:
        return None
    owner = {id(p): opt for opt in keeping for group in opt.param_groups for p in group["params"]}
    out = []
    for p in params:
        found = owner[id(p)].metric(p) if id(p) in owner else None
        if found is not None and found.shape != p.shape:
            raise ValueError(f"the metric of a parameter of shape {tuple(p.shape)} has shape {tuple(found.shape)}")
        out.append(torch.ones_like(p, dtype=torch.float32) if found is None else found)
    return out


class PreconditionedOperator:
    r"""The map :math:`v \mapsto P^{-1/2} H P^{-1/2} v` for a diagonal P and an operator ``op`` of :math:`H`.

    Its eigenvalues are those of :math:`P^{-1} H`; an eigenvector :math:`u` here is :math:`P^{1/2}` times
    one of :math:`P^{-1} H`. :meth:`gradient` (when ``op`` has one) is the gradient in the metric's
    coordinates, :math:`P^{-1/2} g`, so a Rayleigh quotient along it is the batch sharpness in the metric.

    Args:
        op: the operator of H (e.g. :class:`~naggs_lightning.curvature.HessianOperator`).
        metric: the diagonal of P, flat (``op.numel`` entries), finite and > 0.
    """

    def __init__(self, op: LinearOperator, metric: Tensor) -> None:
        metric = metric.detach().reshape(-1).to(device=op.device, dtype=op.dtype)
        if metric.numel() != op.numel:
            raise ValueError(f"the metric has {metric.numel()} entries, the operator {op.numel}")
        if not bool((torch.isfinite(metric) & (metric > 0)).all()):
            raise ValueError("the metric's diagonal must be finite and > 0")
        self.op = op
        self.numel, self.device, self.dtype = op.numel, op.device, op.dtype
        self._scale = metric.rsqrt()

    def __call__(self, vec: Tensor) -> Tensor:
        vec = vec.to(device=self.device, dtype=self.dtype)
        return self._scale * self.op(self._scale * vec)

    def gradient(self) -> Tensor:
        """:math:`P^{-1/2} g`, ``g`` the operator's gradient."""
        return self._scale * self.op.gradient()  # type: ignore[attr-defined]

    @property
    def loss(self) -> float:
        """The operator's loss (the metric does not change it)."""
        return self.op.loss  # type: ignore[attr-defined]
