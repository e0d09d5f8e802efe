r"""Curvature of a training loss: Hessian-vector products, extreme eigenvalues, batch sharpness and the trace.

NAG-GS is stable for a step :math:`\alpha` as long as the largest Hessian eigenvalue stays below
:math:`\lambda_{stab}(\alpha) = 2\mu + 2(\mu + \gamma)/\alpha + 4\gamma/\alpha^2` (see
:mod:`naggs_lightning.theory`), so the number that matters is :math:`\lambda_{max}` of the Hessian
:math:`H = \nabla^2 f(\theta)`. It is never formed: everything here only needs products :math:`Hv`.

The package follows an operator / algorithm split:

* :mod:`~naggs_lightning.curvature.operator`: :class:`HessianOperator`, the map :math:`v \mapsto Hv`
  (exact double backward or finite differences), and the :class:`LinearOperator` interface.
* :mod:`~naggs_lightning.curvature.eigen`: Lanczos and power iteration (:func:`extreme_eigenpair`), the
  Rayleigh quotient and Hutchinson's trace, written against :class:`LinearOperator` only.
* :mod:`~naggs_lightning.curvature.metric`: :class:`PreconditionedOperator`, :math:`P^{-1/2} H P^{-1/2}` for an
  optimizer's diagonal metric P (AdaNAGGS; :func:`optimizer_metric` reads P), on which the same solvers run.
* :mod:`~naggs_lightning.curvature.estimates`: one-call estimates for a loss and its parameters.
* :mod:`~naggs_lightning.curvature.probe`: probing a module that is being trained without disturbing
  the run (:func:`module_hessian`, :func:`estimate_top_eigenvalue`, :func:`estimate_batch_sharpness`), and
  :func:`module_loss`, the loss of a module on a batch that every measurement uses.

A loss or parameters that are not finite raise :class:`NonFiniteCurvatureError`: a diverged model has
no curvature to estimate.
"""

from naggs_lightning.curvature.eigen import (
    Algorithm,
    EigenResult,
    Which,
    extreme_eigenpair,
    hutchinson,
    rayleigh_quotient,
)
from naggs_lightning.curvature.estimates import bottom_eigenvalue, hutchinson_trace, top_eigenvalue
from naggs_lightning.curvature.metric import PreconditionedOperator, has_metric, optimizer_metric
from naggs_lightning.curvature.operator import HessianOperator, LinearOperator, Method, NonFiniteCurvatureError, hvp
from naggs_lightning.curvature.probe import (
    BatchProbe,
    estimate_batch_sharpness,
    estimate_bottom_eigenvalue,
    estimate_top_eigenvalue,
    in_metric,
    module_hessian,
    module_loss,
    probe_batch,
)

__all__ = [
    "Algorithm",
    "BatchProbe",
    "EigenResult",
    "HessianOperator",
    "LinearOperator",
    "Method",
    "NonFiniteCurvatureError",
    "PreconditionedOperator",
    "Which",
    "bottom_eigenvalue",
    "estimate_batch_sharpness",
    "estimate_bottom_eigenvalue",
    "estimate_top_eigenvalue",
    "extreme_eigenpair",
    "has_metric",
    "hutchinson",
    "hutchinson_trace",
    "hvp",
    "in_metric",
    "module_hessian",
    "module_loss",
    "optimizer_metric",
    "probe_batch",
    "rayleigh_quotient",
    "top_eigenvalue",
]
