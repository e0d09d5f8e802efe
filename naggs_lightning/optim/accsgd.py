r"""AccSGD: the accelerated SGD of Jain et al. (2017), the baseline of Kidambi et al. (ICLR 2018).

The class :class:`AccSGD` gathers per-parameter state; :func:`accsgd` is the functional core with a
single-tensor path and a multi-tensor (``foreach``) path that give the same numbers.
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
)

__all__ = ["AccSGD", "accsgd"]


class AccSGD(CheckedOptimizer):
    __doc__ = (
        r"""AccSGD (Kidambi et al., "On the insufficiency of existing momentum schemes for stochastic optimization").

    With short step :math:`\eta` (``lr``), long step :math:`L_s = \eta\kappa / c` (``c = small_const``),
    averaging weight :math:`a = 1 - c^2 \xi / \kappa` and :math:`z = c / (c + 1 - a)`, one step with
    gradient :math:`g` at the current parameters :math:`w` reads

    .. math::

        \bar w &\leftarrow a\,\bar w + (1 - a)\,(w - L_s g) \\
        w &\leftarrow z\,(w - \eta g) + (1 - z)\,\bar w

    with :math:`\bar w_0 = w_0`. Note :math:`(1 - a) L_s = c\,\xi\,\eta`.

    Equivalently (Ma and Yarats, 2019) it is quasi-hyperbolic momentum (QHM),
    :math:`b \leftarrow \beta b + (1 - \beta) g`, :math:`w \leftarrow w - \eta_q ((1 - \nu) g + \nu b)`,
    :math:`b_0 = 0`, with

    .. math::

        \eta_q = \eta\,\frac{c (1 + \xi)}{1 + c}, \qquad
        \nu = \frac{c \xi - 1}{c (1 + \xi)}, \qquad
        \beta = \frac{\kappa - c^2 \xi}{\kappa + c \xi}.

    (Derivation: :math:`e = \bar w - w` obeys :math:`e_{k+1} = z a\, e_k + z(\eta - c\xi\eta) g_k`, an
    exponential average of the gradients with decay :math:`za`, and
    :math:`w_{k+1} = w_k - \eta g_k + \frac{1 - z}{z} e_{k+1}`.) With the defaults (``lr`` 0.1,
    ``kappa`` 1000, ``xi`` 10, ``small_const`` 0.7) that is QHM with :math:`\eta_q = 0.453`,
    :math:`\nu = 0.779`, :math:`\beta = 0.988`.

    Args:
        params: parameters or param groups to optimise.
        lr: the short step eta (>= 0). A step at ``lr = 0`` only creates the state and leaves parameters and
            buffers unchanged (the formula would still average ``w`` towards ``wbar``), as distributed
            checkpoint loaders that call ``step()`` at lr 0 expect.
        kappa: the long-to-short step ratio, a condition-number estimate (> 0; the authors use 100 to 1e4).
        xi: the statistical advantage parameter (> 0 and ``small_const**2 * xi <= kappa``, so that the
            averaging weight ``a`` lies in [0, 1)). The authors raise it by ``sqrt(k)`` when the batch grows by ``k``.
        small_const: the constant c in (0, 1].
        weight_decay: L2 penalty (>= 0) added to the gradient, as in the authors' code.
        maximize: maximise the objective instead of minimising it.
"""
        + FOREACH_DOC
        + r"""
    State: one buffer ``wbar`` per parameter, created as a copy of the parameter on its first step.
    Parameters whose ``.grad`` is ``None`` are skipped.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AccSGD(model.parameters(), lr=0.1, kappa=1000.0, xi=10.0)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """
    )

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 0.1,
        kappa: float = 1000.0,
        xi: float = 10.0,
        small_const: float = 0.7,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            kappa=kappa,
            xi=xi,
            small_const=small_const,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        _validate_group(group)

    _state_key = "wbar"

    def _init_state(self, p: Tensor) -> Tensor:
        return p.detach().clone(memory_format=torch.preserve_format)  # wbar_0 = w_0

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> None:
        lr = check_lr(group["lr"])
        if lr == 0.0:  # the state exists now; a step at lr 0 changes nothing
            return
        accsgd(
            params,
            grads,
            bufs,
            lr=lr,
            kappa=group["kappa"],
            xi=group["xi"],
            small_const=group["small_const"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=group["foreach"],
        )


def _validate_group(group: dict[str, Any]) -> None:
    """Check one param group's hyper-parameters; the message names the parameter and its range."""
    check_lr(group["lr"])
    check_reals(
        group,
        (
            ("kappa", lambda x: x > 0.0, "finite and > 0"),
            ("xi", lambda x: x > 0.0, "finite and > 0"),
            ("small_const", lambda x: 0.0 < x <= 1.0, "in (0, 1]"),
            ("weight_decay", lambda x: x >= 0.0, "finite and >= 0"),
        ),
    )
    c, xi, kappa = group["small_const"], group["xi"], group["kappa"]
    if c * c * xi > kappa:
        raise ValueError(
            f"xi must satisfy small_const**2 * xi <= kappa (so the averaging weight 1 - small_const**2 * xi / kappa "
            f"lies in [0, 1)), got xi={xi}, small_const={c}, kappa={kappa}: use xi <= {kappa / (c * c):g}"
        )


def accsgd(
    params: list[Tensor],
    grads: list[Tensor],
    wbars: list[Tensor],
    *,
    lr: float,
    kappa: float,
    xi: float,
    small_const: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
) -> None:
    """Functional AccSGD update of ``params`` and their ``wbars`` in place. See :class:`AccSGD`."""
    if foreach is None:
        foreach = default_foreach(params)
    fn = _multi_tensor_accsgd if foreach else _single_tensor_accsgd
    fn(
        params,
        grads,
        wbars,
        lr=lr,
        kappa=kappa,
        xi=xi,
        small_const=small_const,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _coefficients(lr: float, kappa: float, xi: float, c: float) -> tuple[float, float, float]:
    """(1 - a, (1 - a) L_s, 1 - z): the weights of the two lerps and the long step's gradient scale."""
    one_minus_a = c * c * xi / kappa
    return one_minus_a, c * xi * lr, one_minus_a / (c + one_minus_a)


def _single_tensor_accsgd(params, grads, wbars, *, lr, kappa, xi, small_const, weight_decay, maximize) -> None:
    one_minus_a, long_step, one_minus_z = _coefficients(lr, kappa, xi, small_const)
    for w, g, wbar in zip(params, grads, wbars):
        if torch.is_complex(w):
            w, g, wbar = torch.view_as_real(w), torch.view_as_real(g), torch.view_as_real(wbar)
        if maximize:
            g = -g
        if weight_decay != 0.0:
            g = g.add(w, alpha=weight_decay)
        wbar.lerp_(w, one_minus_a)
        wbar.add_(g, alpha=-long_step)
        w.add_(g, alpha=-lr)
        w.lerp_(wbar, one_minus_z)


def _multi_tensor_accsgd(params, grads, wbars, *, lr, kappa, xi, small_const, weight_decay, maximize) -> None:
    one_minus_a, long_step, one_minus_z = _coefficients(lr, kappa, xi, small_const)
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, wbars])
    for (ws, gs, bars), _ in grouped.values():
        if any(torch.is_complex(w) for w in ws):
            ws, gs, bars = real_views(ws, gs, bars)
        if maximize:
            gs = torch._foreach_neg(gs)
        if weight_decay != 0.0:
            gs = torch._foreach_add(gs, ws, alpha=weight_decay)
        torch._foreach_lerp_(bars, ws, one_minus_a)
        torch._foreach_add_(bars, gs, alpha=-long_step)
        torch._foreach_add_(ws, gs, alpha=-lr)
        torch._foreach_lerp_(ws, bars, one_minus_z)
