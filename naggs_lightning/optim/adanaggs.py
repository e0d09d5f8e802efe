r"""AdaNAGGS: NAG-GS in the diagonal metric of Adam's second moment (issue 22; THEORY.md section 2d).

The metric is :math:`P_k = \operatorname{diag}(\sqrt{\hat v_k} + \epsilon)`, with :math:`\hat v_k` the
bias-corrected exponential moving average (``beta2``) of the squared gradients. For a fixed metric P,
NAG-GS in the metric P is NAG-GS run on :math:`y = P^{1/2} x`, whose gradient is :math:`P^{-1/2} g`:
written back in x, with NAGGS's heavy-ball form (``w = x - v``, :mod:`naggs_lightning.optim.naggs`),

.. math::

    w_y \leftarrow \beta w_y + \tfrac{h}{\alpha} P^{-1/2} g,\quad y \leftarrow y - \alpha w_y
    \quad\Longleftrightarrow\quad
    w \leftarrow \beta w + \tfrac{h}{\alpha} g,\quad x \leftarrow x - \alpha P^{-1} w \qquad (w = P^{1/2} w_y)

**Where the metric enters, and why.** With P frozen, putting :math:`P^{-1}` on each gradient before it
enters the velocity (``w <- beta w + (h/alpha) P^-1 g``) and putting it on the velocity at the parameter
update (the form above, Adam's choice) are the same method. Once P moves they differ only in which
metric a past gradient is measured in. AdaNAGGS takes the second form because it is exactly the
recurrence of torch's fused Adam kernel: an EMA of the gradient, an EMA of its square, one division, so
the ``fused`` path runs NAG-GS on ``torch._fused_adamw_`` (one read of x, g, m, v and one write of x, m, v
per step, the same memory traffic as AdamW), while the first form has no kernel and needs at least one
more pass over the velocity. Every path (for-loop, foreach, fused) computes the second form.

**How NAG-GS's coefficients map onto the kernel.** The kernel updates ``m <- b1 m + (1 - b1) g`` with
complementary weights, NAG-GS ``w <- beta' w + c g`` with ``beta' = (1 - lr wd) beta`` and
``c = h / alpha`` that need not sum to one and change as gamma (or a scheduler's lr) moves. The buffer
is therefore the velocity times a scalar scale kept in the param group, ``exp_avg = S w``: a step with
``S_new = S / (c S + beta')`` and ``b1 = 1 - c S_new`` (``= S_new beta' / S``) is exactly NAG-GS's
velocity update, and the parameter step ``alpha P^-1 w = (alpha / S_new) exp_avg / P`` is the kernel's
with ``lr = (alpha / S_new)(1 - b1^t)`` (undoing its first-moment bias correction). S starts at
NAG-GS's fixed point ``(1 - beta') / c = gamma (1 + wd) + mu (1 + lr)``, where ``b1 = beta'``: ``exp_avg``
is then an EMA of the gradient on the gradient's scale, as Adam's. Decoupled weight decay shrinks x
(the kernel's AdamW decay, with its weight decay rescaled to give ``1 - lr wd``) and the velocity
(folded into ``beta'``), i.e. x and v alike, as NAGGS does.
"""

from __future__ import annotations

import math
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
    step_lr,
)
from naggs_lightning.optim.naggs import _FUSED_DTYPES, _check_fused

__all__ = ["AdaNAGGS"]

_SCALE_KEY = "velocity_scale"


class AdaNAGGS(CheckedOptimizer):
    __doc__ = (
        r"""NAG-GS (evolving gamma, decoupled weight decay) in the diagonal metric
    :math:`P = \operatorname{diag}(\sqrt{\hat v} + \epsilon)` of Adam's bias-corrected second moment.

    One step with step size :math:`\alpha` (``lr``), gradient :math:`g` at the current parameters
    :math:`x`, step count :math:`t` of the parameter (NAG-GS's scalars as in :class:`NAGGS`):

    .. math::

        \gamma &\leftarrow \frac{\gamma + \alpha\mu}{1 + \alpha}
            \qquad\text{(not when fixed_gamma is set)} \\
        \beta &= \frac{\gamma}{(1+\alpha)(\gamma+\alpha\mu)}, \quad
        c = \frac{\alpha}{(1+\alpha)(\gamma+\alpha\mu)}, \quad \rho = 1 - \alpha\,\mathrm{wd} \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
            P = \sqrt{v / (1 - \beta_2^t)} + \epsilon \\
        w &\leftarrow \rho\beta\, w + c\, g, \qquad x \leftarrow \rho x - \alpha\, w / P

    With P frozen this is exactly :class:`NAGGS` on :math:`y = P^{1/2} x` (THEORY.md 2d): the closed forms
    of :mod:`naggs_lightning.theory` hold with the curvature read in the metric, the preconditioned
    sharpness :math:`\lambda_{\max}(P^{-1} H)`. The module docstring says why P divides the velocity
    (Adam's place) rather than each gradient: it runs on torch's fused Adam kernel.

    The defaults (lr 0.1, mu = gamma = 26) were chosen on the panel of user models (``benchmarks/panel.py
    --parts ada_defaults``: an MLP, a CNN, a BN-ResNet and a Transformer, 3 seeds, validation accuracy) among
    nine pairs, as the pair with the best mean of those within 1 point of torch AdamW at its defaults on every
    model: 0.954 / 0.970 / 0.982 / 0.943 there, against AdamW's 0.934 / 0.948 / 0.972 / 0.949. The earlier
    lr 0.1, mu = gamma = 10 reads 0.964 / 0.982 / 0.972 / 0.910: 3.9 points under AdamW on the Transformer.
    By the heavy-ball identity AdaNAGGS at (lr, mu = gamma) is heavy ball in the metric with momentum
    ``beta = 1 / (1 + lr)^2`` and, in Adam's picture, ``beta1 = beta`` and the step ``lr / (gamma + mu (1 + lr))``:
    0.83 and 0.0018 at the defaults, where AdamW's are 0.9 and 0.001 (AdaNAGGS at lr 0.054, mu = gamma = 26 is
    AdamW's default, and trains like it: 0.938 / 0.956 / 0.964 / 0.945). A small network that wants a larger
    step trains better at mu = gamma = 10 (the CNN 0.982); ``naggs-tune`` searches mu.

    Args:
        params: parameters or param groups to optimise; each group may hold its own hyper-parameters.
        lr: the step size alpha (>= 0): a float or a one-element tensor (then gamma and the velocity
            scale become tensors beside it, as in :class:`NAGGS`). lr = 0 leaves the parameters, the
            velocity and gamma unchanged; the metric's EMA still takes the gradient in, as in torch's Adam.
        mu: the curvature floor (>= 0), in the metric's units.
        gamma: the initial gamma (> 0); it relaxes to mu every step unless ``fixed_gamma``.
        beta2: the EMA factor of the squared gradients, in [0, 1).
        eps: added to the metric's diagonal (finite, >= 0); with eps = 0 a coordinate whose gradient has
            always been zero divides 0 by 0, as in torch's Adam.
        fixed_gamma: keep gamma at its initial value.
        weight_decay: decoupled weight decay (>= 0): x and v are multiplied by ``1 - lr * weight_decay``.
        maximize: maximise the objective instead of minimising it.
"""
        + FOREACH_DOC
        + r"""
        fused: run on torch's fused AdamW kernel (``torch._fused_adamw_``; CUDA: fp16, bf16, fp32, fp64,
            CPU: fp32, fp64). ``None`` picks it wherever it is supported, else ``foreach``. Set at most one
            of ``foreach`` and ``fused``. A tensor lr is read back to the host once per group and step.

    State: per parameter ``exp_avg`` (the velocity times the group's scale: ``w = exp_avg / S``),
    ``exp_avg_sq`` (v) and ``step`` (a 0-d float32 CPU tensor, the parameter's own step count t, the
    only key ``load_state_dict`` does not cast to the parameter's dtype; parameters with the same count
    share one such tensor, which a step replaces rather than increments); per param group ``gamma`` and
    ``velocity_scale`` (S), kept in the group so ``state_dict`` saves them in full precision. A parameter
    whose ``.grad`` is None is skipped: its value, v, t and velocity stay (its ``exp_avg`` is rescaled if
    S moves, which leaves w unchanged). GradScaler unscales the gradients itself and skips ``step()`` on
    inf/NaN, so a skipped step changes nothing. :meth:`metric` returns P for a parameter.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AdaNAGGS(model.parameters(), lr=0.1, mu=26.0, gamma=26.0)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """
    )

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 0.1,
        mu: float = 26.0,
        gamma: float = 26.0,
        *,
        beta2: float = 0.999,
        eps: float = 1e-8,
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
            beta2=beta2,
            eps=eps,
            fixed_gamma=fixed_gamma,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------------------------------------
    # groups and state

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        if not isinstance(group["lr"], Tensor):
            check_lr(group["lr"])
        checks = _REAL_CHECKS if isinstance(group["gamma"], Tensor) else _REAL_CHECKS + _GAMMA_CHECK
        check_reals(group, checks)

    def _check_group(self, group: dict[str, Any]) -> None:
        if isinstance(group["lr"], Tensor):
            check_lr(group["lr"])
        self._check_hyperparameters(group)
        if group["fused"]:
            _check_fused(group["params"], allow_meta=True)
        lr = group["lr"]
        if isinstance(lr, Tensor):
            group["gamma"] = torch.tensor(group["gamma"], dtype=lr.dtype, device=lr.device)
        if _SCALE_KEY not in group:
            # NAG-GS's fixed point (1 - beta') / c, where the kernel's b1 is NAG-GS's momentum beta'.
            group[_SCALE_KEY] = group["gamma"] * (1.0 + group["weight_decay"]) + group["mu"] * (1.0 + step_lr(lr))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch moves "step" to the parameter's device for a group flagged fused; the count is read on
        # the host every step, so it lives on the CPU (float32, exact up to 2**24 steps).
        for state in self.state.values():
            step = state.get("step")
            if isinstance(step, Tensor) and (step.device.type != "cpu" or step.dtype != torch.float32):
                state["step"] = step.to(device="cpu", dtype=torch.float32)

    @torch.no_grad()
    def metric(self, p: Tensor) -> Tensor | None:
        """The diagonal of the current metric ``P = sqrt(v_hat) + eps`` for parameter ``p``, shaped like
        ``p`` (a complex ``p``: like its real view, ``p.shape + (2,)``); None before p's first step.

        This is the P of the last step (the one that moved ``p``); the preconditioned operator of the
        theory is ``P^-1/2 H P^-1/2``.
        """
        state = self.state.get(p, {})
        if "exp_avg_sq" not in state or float(state["step"]) == 0.0:
            return None
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        v = state["exp_avg_sq"]
        if torch.is_complex(v):
            v = torch.view_as_real(v)
        bc2 = 1.0 - group["beta2"] ** float(state["step"])
        return (v / bc2).sqrt_().add_(group["eps"])

    # ------------------------------------------------------------------------------------------------
    # the step

    def _step_group(self, group: dict[str, Any]) -> None:
        # One pass over the parameters (one state lookup each), into buckets of one step count t, so that
        # the bias corrections are a bucket's scalars. The parameters of a bucket share one read-only step
        # tensor, replaced (never incremented in place) after the step: no per-parameter op on the counts.
        buckets: dict[int, list[Any]] = {}
        state = self.state
        fresh = None
        stepped = 0
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(
                    "AdaNAGGS does not support sparse gradients; use a dense gradient (e.g. sparse=False)"
                )
            s = state[p]
            if not s:
                if fresh is None:
                    fresh = torch.zeros((), dtype=torch.float32)
                s["step"] = fresh
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = s["step"]
            b = buckets.get(id(step))
            if b is None:
                b = buckets[id(step)] = [step, [], [], [], [], []]
            b[1].append(p)
            b[2].append(g)
            b[3].append(s["exp_avg"])
            b[4].append(s["exp_avg_sq"])
            b[5].append(s)
            stepped += 1
        if not stepped:
            return  # a group with no gradient does not advance gamma
        by_count: dict[float, list[Any]] = {}  # equal counts in distinct tensors (after a load) step together
        for step, *lists in buckets.values():
            t = float(step)
            if t in by_count:
                for mine, other in zip(by_count[t], lists):
                    mine.extend(other)
            else:
                by_count[t] = lists

        lr = step_lr(group["lr"])
        mu, wd = group["mu"], group["weight_decay"]
        tensor_lr = isinstance(lr, Tensor)
        fused, foreach = group["fused"], group["foreach"]
        # (device, dtype) runs, each with its path; every run is checked before anything moves
        runs = []
        for t, (xs, gs, ms, vs, _states) in by_count.items():
            grouped = Optimizer._group_tensors_by_device_and_dtype([xs, gs, ms, vs])
            for (device, dtype), (tensors, _) in grouped.items():
                supported = dtype in _FUSED_DTYPES.get(device.type, ())
                if fused and not supported:
                    _check_fused(tensors[0])
                run_fused = bool(fused) or (
                    fused is None
                    and foreach is None
                    and supported
                    and not tensor_lr
                    and not torch.compiler.is_compiling()
                )
                run_foreach = foreach if foreach is not None else device.type in ("cpu", "cuda")
                runs.append((t, device, tensors, run_fused, run_foreach))

        if not group["fixed_gamma"]:
            group["gamma"] = (group["gamma"] + lr * mu) / (1.0 + lr)
        gamma = group["gamma"]
        d = (1.0 + lr) * (gamma + lr * mu)
        momentum = (1.0 - lr * wd) * (gamma / d) if wd != 0.0 else gamma / d
        c = lr / d
        scale = group[_SCALE_KEY]
        new_scale = scale / (c * scale + momentum)
        group[_SCALE_KEY] = new_scale
        if stepped < len(group["params"]):
            self._rescale_skipped(group, new_scale / scale)
        coefs = _Coefficients(
            lr=lr, b1=1.0 - c * new_scale, xcoef=lr / new_scale, wd=wd, beta2=group["beta2"], eps=group["eps"]
        )
        maximize = group["maximize"]
        for t, device, (xs, gs, ms, vs), run_fused, run_foreach in runs:
            if run_fused:
                _fused_bucket(xs, gs, ms, vs, t + 1.0, device, coefs, maximize)
            elif run_foreach:
                _foreach_bucket(xs, gs, ms, vs, t + 1.0, coefs, maximize)
            else:
                _single_bucket(xs, gs, ms, vs, t + 1.0, coefs, maximize)
        for t, (*_, states) in by_count.items():
            count = torch.full((), t + 1.0, dtype=torch.float32)
            for s in states:
                s["step"] = count

    def _rescale_skipped(self, group: dict[str, Any], ratio: float | Tensor) -> None:
        """Keep the velocity ``exp_avg / S`` of a parameter without a gradient unchanged as S moves."""
        for p in group["params"]:
            if p.grad is None and "exp_avg" in self.state.get(p, {}):
                self.state[p]["exp_avg"].mul_(ratio)


_REAL_CHECKS = (
    ("mu", lambda x: x >= 0.0, "finite and >= 0"),
    ("beta2", lambda x: 0.0 <= x < 1.0, "in [0, 1)"),
    ("eps", lambda x: x >= 0.0, "finite and >= 0"),
    ("weight_decay", lambda x: x >= 0.0, "finite and >= 0"),
)
_GAMMA_CHECK = (("gamma", lambda x: x > 0.0, "finite and > 0"),)


class _Coefficients:
    """One group's scalars of a step (floats, or 0-d tensors with a tensor lr)."""

    __slots__ = ("lr", "b1", "xcoef", "wd", "beta2", "eps")

    def __init__(self, *, lr, b1, xcoef, wd, beta2, eps) -> None:
        self.lr, self.b1, self.xcoef, self.wd, self.beta2, self.eps = lr, b1, xcoef, wd, beta2, eps


def _real(ts: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in ts]


# All paths compute  denom = sqrt(v) + eps sqrt(bc2),  x <- rho x - xcoef sqrt(bc2) m / denom,
# which is  x <- rho x - (alpha / S) m / (sqrt(v / bc2) + eps)  with one pass fewer.


def _single_bucket(xs, gs, ms, vs, t, k: _Coefficients, maximize: bool) -> None:
    sqrt_bc2 = math.sqrt(1.0 - k.beta2**t)
    tensor = isinstance(k.lr, Tensor)
    for x, g, m, v in zip(_real(xs), _real(gs), _real(ms), _real(vs)):
        if k.wd != 0.0:
            x.mul_(1.0 - k.lr * k.wd)
        if maximize:
            g = -g
        v.mul_(k.beta2).addcmul_(g, g, value=1.0 - k.beta2)
        m.lerp_(g, 1.0 - k.b1)
        denom = v.sqrt().add_(k.eps * sqrt_bc2)
        if tensor:
            x.sub_(m / denom * (k.xcoef * sqrt_bc2))
        else:
            x.addcdiv_(m, denom, value=-k.xcoef * sqrt_bc2)


def _foreach_bucket(xs, gs, ms, vs, t, k: _Coefficients, maximize: bool) -> None:
    sqrt_bc2 = math.sqrt(1.0 - k.beta2**t)
    xs, gs, ms, vs = _real(xs), _real(gs), _real(ms), _real(vs)
    if k.wd != 0.0:
        torch._foreach_mul_(xs, 1.0 - k.lr * k.wd)
    if maximize:
        gs = torch._foreach_neg(gs)
    torch._foreach_mul_(vs, k.beta2)
    torch._foreach_addcmul_(vs, gs, gs, value=1.0 - k.beta2)
    torch._foreach_lerp_(ms, gs, 1.0 - k.b1)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_add_(denom, k.eps * sqrt_bc2)
    if isinstance(k.lr, Tensor):
        torch._foreach_div_(denom, ms)  # denom <- m / denom, reusing its storage
        torch._foreach_reciprocal_(denom)
        torch._foreach_mul_(denom, k.xcoef * sqrt_bc2)
        torch._foreach_sub_(xs, denom)
    else:
        torch._foreach_addcdiv_(xs, ms, denom, value=-k.xcoef * sqrt_bc2)


def _fused_bucket(xs, gs, ms, vs, t, device, k: _Coefficients, maximize: bool) -> None:
    lr, b1, xcoef = float(k.lr), float(k.b1), float(k.xcoef)
    bc1 = 1.0 - b1**t
    if not bc1 > 0.0:  # b1 == 1: lr == 0 (or a step too small to move the velocity); the kernel would 0/0
        _foreach_bucket(
            xs, gs, ms, vs, t, _Coefficients(lr=lr, b1=b1, xcoef=xcoef, wd=k.wd, beta2=k.beta2, eps=k.eps), maximize
        )
        return
    kernel_lr = xcoef * bc1  # the kernel divides by its bias correction 1 - b1^t
    kernel_wd = lr * k.wd / kernel_lr if k.wd != 0.0 and kernel_lr > 0.0 else 0.0  # 1 - lr wd
    steps = [torch.full((), t, dtype=torch.float32, device=device)] * len(xs)
    torch._fused_adamw_(
        xs,
        gs,
        ms,
        vs,
        [],
        steps,
        lr=kernel_lr,
        beta1=b1,
        beta2=k.beta2,
        weight_decay=kernel_wd,
        eps=k.eps,
        amsgrad=False,
        maximize=maximize,
        grad_scale=None,
        found_inf=None,
    )
