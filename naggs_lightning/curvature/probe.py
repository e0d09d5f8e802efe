r"""Probing a module that is being trained, without disturbing the run.

:func:`module_hessian` wraps a module (a LightningModule or any ``nn.Module`` with
``compute_loss(batch)``) so that probing it leaves the training run untouched: fp32 maths with autocast
off, dropout off, batch statistics of BatchNorm used but its running statistics restored, the RNG
states of CPU and CUDA restored, ``.grad`` never written (only :func:`torch.autograd.grad` is used) and
the train/eval flag of every submodule restored. Under ``torch.distributed`` the products are averaged
across ranks, so every rank computes the same eigenvalue.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from naggs_lightning.curvature.eigen import Algorithm, EigenResult, extreme_eigenpair, rayleigh_quotient
from naggs_lightning.curvature.metric import PreconditionedOperator
from naggs_lightning.curvature.operator import HessianOperator, LinearOperator, Method

__all__ = [
    "BatchProbe",
    "estimate_batch_sharpness",
    "estimate_bottom_eigenvalue",
    "estimate_top_eigenvalue",
    "in_metric",
    "module_hessian",
    "module_loss",
    "probe_batch",
]


def module_loss(module: nn.Module, batch: Any) -> Tensor:
    """The loss of ``module`` on ``batch``: ``module.compute_loss(batch)``, else the loss returned by
    ``module.training_step(batch, 0)``."""
    compute_loss = getattr(module, "compute_loss", None)
    if callable(compute_loss):
        return compute_loss(batch)
    training_step = getattr(module, "training_step", None)
    if not callable(training_step):
        raise TypeError(
            f"{type(module).__name__} has neither compute_loss(batch) nor training_step(batch, batch_idx): "
            "the curvature probe cannot compute its loss"
        )
    if getattr(module, "automatic_optimization", True) is False:
        raise TypeError(
            f"{type(module).__name__} uses manual optimization, so training_step would step the optimizer: "
            "implement compute_loss(batch) for the curvature probe"
        )
    with _logging_silenced(module):
        out = training_step(batch, 0)
    if isinstance(out, dict):
        out = out.get("loss")
    if not isinstance(out, Tensor):
        raise TypeError(f"{type(module).__name__}.training_step returned no loss tensor; implement compute_loss(batch)")
    return out


def _silence(*_: Any, **__: Any) -> None:
    return None


@contextlib.contextmanager
def _logging_silenced(module: nn.Module) -> Iterator[None]:
    """``self.log`` / ``self.log_dict`` do nothing inside: a measurement is not a training step, and a module
    outside a fit would make Lightning warn that its trainer reference is not registered."""
    shadowed = [name for name in ("log", "log_dict") if callable(getattr(module, name, None))]
    already = [name for name in shadowed if name in vars(module)]
    try:
        for name in shadowed:
            setattr(module, name, _silence)  # instance attribute shadows the bound method
        yield
    finally:
        for name in shadowed:
            if name not in already:
                delattr(module, name)


@contextlib.contextmanager
def _probe_mode(module: nn.Module, params: Sequence[Tensor]) -> Iterator[None]:
    """Make probing side-effect free; see :func:`module_hessian`."""
    modes = [(m, m.training) for m in module.modules()]
    # Running statistics (BatchNorm's running_mean/var, num_batches_tracked, any other buffer a forward
    # updates) are restored exactly afterwards; in between the forward still uses batch statistics, the
    # Hessian the optimizer actually sees.
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    cuda = sorted(
        {
            p.device.index if p.device.index is not None else torch.cuda.current_device()
            for p in params
            if p.device.type == "cuda"
        }
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=cuda, device_type="cuda"))
        for device_type in {"cpu"} | {p.device.type for p in params}:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        stack.enter_context(torch.enable_grad())
        # The fused attention kernels (flash, memory-efficient; flash is torch's CPU default) have no double
        # backward: an exact product through nn.MultiheadAttention / nn.TransformerEncoderLayer would fail.
        # The math kernel computes the same attention and is twice differentiable.
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        try:
            for m in module.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.eval()
            yield
        finally:
            for m, training in modes:
                m.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


@contextlib.contextmanager
def module_hessian(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    params: Iterable[Tensor] | None = None,
    method: Method = "exact",
    fd_eps: float | None = None,
    sync: bool | None = None,
) -> Iterator[HessianOperator]:
    r"""The Hessian of a module's mean training loss over ``batches``, as a :class:`HessianOperator`.

    The loss of a batch is ``module.compute_loss(batch)`` when the module has it, else the loss that
    ``module.training_step(batch, 0)`` returns (a tensor, or the ``"loss"`` entry of a dict), with
    ``self.log``/``self.log_dict`` silenced. Batches must already sit on the module's device.

    Inside the context the module is probed without side effects on the training run: autocast off
    (products in the parameters' precision: fp32 for AMP training), dropout modules in eval mode,
    BatchNorm in its current mode with every buffer (running statistics) restored on exit, attention through
    ``scaled_dot_product_attention`` on its math kernel (the fused ones have no double backward), the CPU and
    CUDA RNG states restored, ``.grad`` untouched, and each submodule's ``training`` flag restored.
    Dropout written as ``F.dropout(x, training=self.training)`` in a custom module is not switched off
    (it is still deterministic within one exact product, but adds noise across finite differences).

    Args:
        params: the parameters of the Hessian; default every parameter with ``requires_grad``.
        method, fd_eps, sync: see :class:`HessianOperator`.
    """
    params = [p for p in (module.parameters() if params is None else params) if p.requires_grad]
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: the probe needs at least one batch")
    with _probe_mode(module, params):
        op = HessianOperator(
            [lambda b=b: module_loss(module, b) for b in batches], params, method=method, fd_eps=fd_eps, sync=sync
        )
        try:
            yield op
        finally:
            op.release()


def estimate_top_eigenvalue(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    max_iter: int = 20,
    tol: float = 1e-3,
    init: Tensor | Sequence[Tensor] | None = None,
    method: Method = "exact",
    algorithm: Algorithm = "lanczos",
    params: Iterable[Tensor] | None = None,
    sync: bool | None = None,
    metric: Sequence[Tensor] | None = None,
) -> float:
    r"""The top eigenvalue :math:`\lambda_{max}` of a module's training-loss Hessian, averaged over ``batches``.

    Side-effect free for the training run (see :func:`module_hessian`). Under ``torch.distributed``
    every rank must call it with its own batches; the products are averaged, so every rank returns the
    same number. Feed the result to :func:`naggs_lightning.theory.alpha_opt` /
    :func:`~naggs_lightning.theory.alpha_crit` to choose a step. With ``metric`` (the diagonal of P, one
    tensor per parameter of the Hessian, e.g. from :func:`~naggs_lightning.curvature.optimizer_metric`) it is
    the preconditioned sharpness, the top eigenvalue of :math:`P^{-1/2} H P^{-1/2}`.
    """
    with module_hessian(module, batches, params=params, method=method, sync=sync) as op:
        return extreme_eigenpair(
            in_metric(op, metric), which="largest", max_iter=max_iter, tol=tol, init=init, algorithm=algorithm
        ).eigenvalue


def estimate_bottom_eigenvalue(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    max_iter: int = 50,
    tol: float = 1e-3,
    method: Method = "exact",
    algorithm: Algorithm = "lanczos",
    params: Iterable[Tensor] | None = None,
    sync: bool | None = None,
) -> float:
    """The smallest eigenvalue of a module's training-loss Hessian (see :func:`bottom_eigenvalue`).

    Negative in most networks away from a minimum; a positive value is a candidate for mu.
    """
    with module_hessian(module, batches, params=params, method=method, sync=sync) as op:
        return extreme_eigenpair(op, which="smallest", max_iter=max_iter, tol=tol, algorithm=algorithm).eigenvalue


def estimate_batch_sharpness(
    module: nn.Module,
    batch: Any,
    *,
    method: Method = "exact",
    params: Iterable[Tensor] | None = None,
    sync: bool | None = None,
) -> float:
    r"""The batch sharpness :math:`g^\top H g / g^\top g` of one batch: its loss's curvature along its own gradient.

    Under minibatch training this, not :math:`\lambda_{max}`, is what settles at the optimizer's edge
    (Andreyev & Beneventano; see ``docs/monitor.md`` for the measurement). One gradient and one
    Hessian-vector product; side-effect free like :func:`module_hessian`.
    """
    with module_hessian(module, [batch], params=params, method=method, sync=sync) as op:
        return rayleigh_quotient(op, op.gradient())


def in_metric(op: HessianOperator, metric: Sequence[Tensor] | None) -> LinearOperator | PreconditionedOperator:
    """``op`` itself, or with ``metric`` (one tensor per parameter of ``op``) its preconditioned operator."""
    return op if metric is None else PreconditionedOperator(op, op.flatten(list(metric)))


class BatchProbe(NamedTuple):
    """What one probe of a training batch measures (see :func:`probe_batch`)."""

    eigen: EigenResult
    """The top eigenpair of the batch loss's Hessian."""
    batch_sharpness: float
    """The curvature along the batch's own gradient."""
    loss: float
    """The batch loss at the current parameters (this rank's)."""


def probe_batch(
    module: nn.Module,
    batch: Any,
    *,
    params: Iterable[Tensor] | None = None,
    method: Method = "exact",
    sync: bool | None = None,
    init: Tensor | None = None,
    metric: Sequence[Tensor] | None = None,
    **solver: Any,
) -> BatchProbe:
    """Top eigenpair, batch sharpness and loss of one batch from one Hessian graph (what the monitor reads).

    ``init`` warm-starts the eigen-solver (ignored if its size does not match); ``solver`` goes to
    :func:`~naggs_lightning.curvature.extreme_eigenpair`. With ``metric`` (the diagonal of P, one tensor per
    parameter) all three are read in the metric: the eigenpair of :math:`P^{-1/2} H P^{-1/2}` and the batch
    sharpness along :math:`P^{-1/2} g`. Side-effect free like :func:`module_hessian`.
    """
    with module_hessian(module, [batch], params=params, method=method, sync=sync) as hessian:
        op = in_metric(hessian, metric)
        init = init if init is not None and init.numel() == op.numel else None
        eigen = extreme_eigenpair(op, which="largest", init=init, **solver)
        gradient = op.gradient()
        # A zero gradient (a batch fitted exactly, or dead units) has no direction, nor has one that overflowed
        # (a diverging run: the digits MLP at 2x its best step): no batch sharpness (NaN).
        try:
            sharpness = rayleigh_quotient(op, gradient) if bool(gradient.any()) else math.nan
        except ValueError:
            sharpness = math.nan
        return BatchProbe(eigen, sharpness, op.loss)
