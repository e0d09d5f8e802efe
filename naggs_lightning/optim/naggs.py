r"""NAG-GS: the semi-implicit Gauss-Seidel accelerated optimizer (Leplat et al., arXiv 2209.14937).

The class :class:`NAGGS` gathers per-parameter state; :func:`naggs` is the functional core with a
single-tensor path, a multi-tensor (``foreach``) path and a one-pass ``fused`` path that give the same
numbers up to round-off.

The per-parameter state is ``w = x - v`` rather than ``v`` itself. Since
``(1 + alpha) x_{k+1} = x_k + alpha v_{k+1}`` gives ``x_{k+1} - x_k = -alpha w_{k+1}``, the step reads

    w <- beta w + (h / alpha) g,    x <- x - alpha w,
    beta = gamma / ((1 + alpha)(gamma + alpha mu)),  h / alpha = alpha / ((1 + alpha)(gamma + alpha mu))

which is exactly the recurrence of SGD with momentum (momentum ``beta``, dampening ``1 - h/alpha``,
lr ``alpha``), so torch's one-pass fused SGD kernel runs NAG-GS unchanged: one read of x, w, g and
one write of x, w per step. ``w`` also keeps more digits than ``v`` in bf16/fp16, since
x and v are close.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from naggs_lightning.optim._common import (
    FOREACH_DOC,
    CheckedOptimizer,
    check_lr,
    check_reals,
    default_foreach,
    real_views,
    step_lr,
)

__all__ = ["NAGGS", "naggs"]

_DOC_MATH = r"""
    One step with step size :math:`\alpha` (``lr``), in training-loop order (gradient :math:`g` taken at
    the current parameters :math:`x`):

    .. math::

        \gamma &\leftarrow \frac{\gamma + \alpha\mu}{1 + \alpha}
            \qquad\text{(not when fixed_gamma is set)} \\
        v &\leftarrow \frac{\gamma v + \alpha\mu x - \alpha g}{\gamma + \alpha\mu}
            = v + c\,\bigl(\mu (x - v) - g\bigr), \quad c = \frac{\alpha}{\gamma + \alpha\mu} \\
        x &\leftarrow \frac{x + \alpha v}{1 + \alpha}

    with :math:`v_0 = x_0`. gamma relaxes geometrically to mu:
    :math:`\gamma_k = \mu + (\gamma_0 - \mu)(1 + \alpha)^{-k}`. With gamma held fixed the parameters follow
    Polyak's heavy ball exactly, with ``lr = alpha^2 / ((1 + alpha)(gamma + alpha mu))`` and
    ``momentum = gamma / ((1 + alpha)(gamma + alpha mu))`` (see
    :func:`naggs_lightning.theory.heavy_ball_equivalent`).
"""


class NAGGS(CheckedOptimizer):
    __doc__ = (
        r"""NAG-GS optimizer: an accelerated, semi-implicit Gauss-Seidel discretisation of a Nesterov-like SDE.
"""
        + _DOC_MATH
        + r"""
    The defaults (lr 0.07, mu = gamma = 0.03) train networks as a drop-in for
    ``SGD(lr=0.1, momentum=0.9, nesterov=True)``: by the heavy-ball identity they are heavy ball with lr 0.143
    and momentum 0.873, an effective step ``lr / (1 - momentum)`` of 1.12 against SGD-Nesterov's 1.0. They
    were chosen on a panel of user networks (``benchmarks/panel.py``; the table is in docs/benchmarks.md).
    A convex model (logistic or linear regression) trains faster in the paper's regime, ``mu = gamma = 1``
    with lr about 0.5; :func:`naggs_lightning.suggest_lr` measures the step for any model and mu.

    Args:
        params: parameters or param groups to optimise. Each group may hold its own ``lr``, ``mu`` and
            ``gamma``.
        lr: the step size alpha (>= 0): a float, or a one-element tensor. A tensor lr (with it gamma
            becomes a tensor too) keeps the per-step scalars out of Python, so a step compiled with
            ``torch.compile`` does not recompile as a scheduler changes lr; it runs on the foreach path
            by default (the fused kernel takes its coefficients as Python floats, so ``fused=True``
            reads a tensor lr back to the host once per group and step). Schedulers act on either.
            Stable steps and the optimal one follow from the curvature: see
            :func:`naggs_lightning.theory.alpha_opt` and :func:`naggs_lightning.theory.alpha_crit`,
            or let ``SpectralStabilityMonitor`` watch it.
        mu: the curvature floor (>= 0; 0 is legal). It is **not** weight decay: it caps the effective step
            at ``1/mu`` (for large alpha NAG-GS tends to gradient descent with step ``1/mu``) and reshapes
            the momentum.
        gamma: the initial gamma (> 0). It relaxes to mu every step unless ``fixed_gamma``.
        fixed_gamma: keep gamma at its initial value (the authors' NAG4 variant; it is also what the
            authors' public PyTorch ``NAGGS`` class computes, since it never stores the updated gamma).
        weight_decay: decoupled (AdamW-style) weight decay (>= 0): before the update both the parameter
            and its v-buffer are multiplied by ``1 - lr * weight_decay``, so the whole state shrinks
            towards zero without the decay entering the gradient. Early in a run the decay can dominate:
            the buffer starts at zero (``v_0 = x_0``), so the gradient moves the parameters by only
            about ``alpha**2 * k**2 / (2 * gamma) * g`` in the first ``k`` steps while the decay moves
            them by ``k * lr * weight_decay * x``; at ``lr = 1e-3`` and ``weight_decay = 0.1`` the
            decay is the larger term for the first few dozen steps.
        maximize: maximise the objective instead of minimising it.
"""
        + FOREACH_DOC
        + r"""
        fused: use the one-pass fused kernel (CUDA: fp16, bf16, fp32, fp64; CPU: fp32, fp64, because
            torch's CPU kernel mishandles bf16/fp16). ``None`` picks it wherever it is supported, else
            ``foreach``. Set at most one of ``foreach`` and ``fused``. Parameters on the ``meta``
            device are accepted (build on meta, ``to_empty()``, then step); the dtype and device are
            checked again when a fused step runs.

    State: one buffer ``momentum_buffer = x - v`` per parameter (zero on its first step, as
    ``v_0 = x_0``; ``v`` is ``p - state["momentum_buffer"]``), and, per param group, the current ``gamma``
    (kept in the group, so ``state_dict`` saves it in full precision whatever the parameters' dtype). Parameters
    whose ``.grad`` is ``None`` are skipped and their state is untouched; a group with no gradient at all does not
    advance gamma. A step that
    ``torch.amp.GradScaler`` skips for inf/NaN gradients changes nothing, because ``step()`` is not
    called. Gradients are otherwise used as given: a NaN gradient makes NaN parameters, as in every
    torch optimizer; use ``SpectralStabilityMonitor`` or GradScaler to catch them.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = NAGGS(model.parameters(), lr=0.5, mu=1.0, gamma=1.0)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """
    )

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 0.07,
        mu: float = 0.03,
        gamma: float = 0.03,
        *,
        fixed_gamma: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            mu=mu,
            gamma=gamma,
            fixed_gamma=fixed_gamma,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        _validate_group(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        if isinstance(group["lr"], Tensor):  # read once, when the group is added; a float is checked below
            check_lr(group["lr"])
        self._check_hyperparameters(group)
        if group["fused"]:
            _check_fused(group["params"], allow_meta=True)
        if isinstance(group["lr"], Tensor):
            # A tensor lr asks for a step with no Python float that changes per step (torch.compile,
            # CUDA graphs): gamma becomes a tensor beside it, so neither one recompiles a graph.
            group["gamma"] = torch.tensor(group["gamma"], dtype=group["lr"].dtype, device=group["lr"].device)

    _state_key = "momentum_buffer"

    def _init_state(self, p: Tensor) -> Tensor:
        return torch.zeros_like(p)  # w = x - v starts at zero, since v_0 = x_0

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> None:
        lr = step_lr(group["lr"])
        if not group["fixed_gamma"]:
            group["gamma"] = (group["gamma"] + lr * group["mu"]) / (1.0 + lr)
        naggs(
            params,
            grads,
            bufs,
            lr=lr,
            mu=group["mu"],
            gamma=group["gamma"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=group["foreach"],
            fused=group["fused"],
        )


_REAL_CHECKS = (
    ("mu", lambda x: x >= 0.0, "finite and >= 0"),
    ("weight_decay", lambda x: x >= 0.0, "finite and >= 0"),
)
_GAMMA_CHECK = (("gamma", lambda x: x > 0.0, "finite and > 0"),)


def _validate_group(group: dict[str, Any]) -> None:
    """Check one param group's hyper-parameters; the message names the parameter and its range.

    A tensor lr and the tensor gamma that goes with it are not read back (that would sync a device at
    every step); a float set on the group after construction, by hand or by a scheduler, is checked.
    """
    if not isinstance(group["lr"], Tensor):
        check_lr(group["lr"])
    check_reals(group, _REAL_CHECKS if isinstance(group["gamma"], Tensor) else _REAL_CHECKS + _GAMMA_CHECK)


# torch's CPU fused SGD kernel corrupts bf16/fp16 buffers in its vectorised loop (seen in torch 2.13:
# 16 or more elements give garbage), so on CPU only full-precision dtypes take the fused path.
_FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


def _fused_supported(p: Tensor) -> bool:
    return not p.is_sparse and p.dtype in _FUSED_DTYPES.get(p.device.type, ())


def _check_fused(params: Iterable[Tensor], *, allow_meta: bool = False) -> None:
    """Refuse parameters the fused kernel cannot update; meta parameters wait for their real device."""
    for p in params:
        if not (_fused_supported(p) or (allow_meta and p.is_meta)):
            raise RuntimeError(
                f"fused=True supports {_FUSED_DTYPES} parameters, got {p.dtype} on {p.device.type}; use foreach=True"
            )


def naggs(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    lr: float,
    mu: float,
    gamma: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    """Functional NAG-GS update of ``params`` and their buffers ``bufs`` (``x - v``) in place.

    ``gamma`` is the already-updated gamma of this step (``NAGGS.step`` advances it first). See
    :class:`NAGGS` for the mathematics and the arguments.
    """
    if fused:
        _check_fused(params)
    if fused is None and foreach is None:
        fused = (
            not isinstance(lr, Tensor)
            and not torch.compiler.is_compiling()
            and all(_fused_supported(p) for p in params)
        )
    if not fused and foreach is None:
        foreach = default_foreach(params)
    fn = _fused_naggs if fused else _multi_tensor_naggs if foreach else _single_tensor_naggs
    fn(params, grads, bufs, lr=lr, mu=mu, gamma=gamma, weight_decay=weight_decay, maximize=maximize)


def _coefficients(lr: float, mu: float, gamma: float) -> tuple[float, float]:
    """(beta, h / alpha) of the w-recurrence; written without 1/mu, so mu = 0 is legal."""
    d = (1.0 + lr) * (gamma + lr * mu)
    return gamma / d, lr / d


def _single_tensor_naggs(params, grads, bufs, *, lr, mu, gamma, weight_decay, maximize) -> None:
    momentum, c = _coefficients(lr, mu, gamma)
    shrink = 1.0 - lr * weight_decay
    for x, g, w in zip(params, grads, bufs):
        if torch.is_complex(x):
            x, g, w = torch.view_as_real(x), torch.view_as_real(g), torch.view_as_real(w)
        if weight_decay != 0.0:
            x.mul_(shrink)
            w.mul_(shrink)
        if isinstance(lr, Tensor):
            w.mul_(momentum).add_(g * (-c if maximize else c))
            x.sub_(w * lr)
        else:
            w.mul_(momentum).add_(g, alpha=-c if maximize else c)
            x.add_(w, alpha=-lr)


def _multi_tensor_naggs(params, grads, bufs, *, lr, mu, gamma, weight_decay, maximize) -> None:
    momentum, c = _coefficients(lr, mu, gamma)
    shrink = 1.0 - lr * weight_decay
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, bufs])
    for (xs, gs, ws), _ in grouped.values():
        if any(torch.is_complex(x) for x in xs):
            xs, gs, ws = real_views(xs, gs, ws)
        if weight_decay != 0.0:
            torch._foreach_mul_(xs, shrink)
            torch._foreach_mul_(ws, shrink)
        torch._foreach_mul_(ws, momentum)
        if isinstance(lr, Tensor):
            torch._foreach_add_(ws, torch._foreach_mul(gs, -c if maximize else c))
            torch._foreach_sub_(xs, torch._foreach_mul(ws, lr))
        else:
            torch._foreach_add_(ws, gs, alpha=-c if maximize else c)
            torch._foreach_add_(xs, ws, alpha=-lr)


def _fused_naggs(params, grads, bufs, *, lr, mu, gamma, weight_decay, maximize) -> None:
    # The kernel takes momentum and dampening as Python floats, and both follow from lr and gamma.
    lr, gamma = float(lr), float(gamma)
    momentum, c = _coefficients(lr, mu, gamma)
    shrink = 1.0 - lr * weight_decay
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, bufs])
    for (xs, gs, ws), _ in grouped.values():
        if weight_decay != 0.0:  # decoupled: shrinks x and v alike, which torch's coupled decay cannot
            torch._foreach_mul_(xs, shrink)
            torch._foreach_mul_(ws, shrink)
        # is_first_step=False: the zero buffer is already w_0 = x_0 - v_0, so the kernel must not copy g in.
        torch._fused_sgd_(
            xs,
            gs,
            ws,
            weight_decay=0.0,
            momentum=momentum,
            lr=lr,
            dampening=1.0 - c,
            nesterov=False,
            maximize=maximize,
            is_first_step=False,
        )
