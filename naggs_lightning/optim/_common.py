"""What the optimizers of this package share: hyper-parameter checks, state gathering, path choice, the
step's skeleton, the doc text of the ``foreach`` / ``fused`` arguments, and the test "is this NAG-GS?"."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def is_naggs(optimizer_or_group: Optimizer | Mapping[str, Any]) -> bool:
    """Whether an optimizer (any of its parameter groups) or one parameter group is NAG-GS: the group
    carries ``mu`` and ``gamma``.

    The one answer to "is this NAG-GS?" for the theory's readers (seed, lr finder, monitors): they read
    the group's mu and gamma, whatever the optimizer's class.
    """
    if isinstance(optimizer_or_group, Optimizer):
        return any(is_naggs(group) for group in optimizer_or_group.param_groups)
    return "mu" in optimizer_or_group and "gamma" in optimizer_or_group


#: The ``foreach`` argument of every optimizer here, for their docstrings (as torch's ``_foreach_doc``).
FOREACH_DOC = r"""        foreach: use the multi-tensor path (``torch._foreach_*``). ``None`` picks it whenever every
            parameter is a dense tensor on a CPU or CUDA device.
"""


# Keys that torch's Optimizer.__setstate__ adds to ``defaults`` for its own optimizers; they are not
# hyper-parameters of ours, and copying them into the groups would make save -> load -> save change the
# state dict.
_TORCH_DEFAULT_KEYS = frozenset({"differentiable"})


class CheckedOptimizer(Optimizer):
    """An Optimizer whose param groups are validated as they are added (also those added after
    construction) and again at every step (a scheduler or a user may have edited them), and that fills
    hyper-parameters missing from an older pickle with the defaults.

    It also holds the step every optimizer here takes: call the closure, then for each group check its
    hyper-parameters, gather the parameters that have a gradient with their state buffer
    :attr:`_state_key` (made by :meth:`_init_state` on a parameter's first step) and :meth:`_update` them.
    """

    #: The per-parameter state buffer a step reads and writes.
    _state_key: str

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        # torch's order: the hyper-parameters are checked before ``params`` is read, so a bad lr is reported
        # as such even when ``params`` is not a list of parameters (torch's generic error inputs pass None).
        check_lr(defaults["lr"])
        if defaults.get("foreach") and defaults.get("fused"):
            raise ValueError("foreach and fused are exclusive: set at most one of them to True")
        self._check_hyperparameters(dict(defaults))
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        """Check one group's hyper-parameters; cheap, since ``step`` calls it for every group."""
        raise NotImplementedError

    def _check_group(self, group: dict[str, Any]) -> None:
        """Everything checked when a group is added: by default its hyper-parameters."""
        self._check_hyperparameters(group)

    def _init_state(self, p: Tensor) -> Tensor:
        """The state buffer of parameter ``p`` before its first step."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> None:
        """Update one group's parameters that have a gradient (at least one), with their gradients and buffers."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss; called (with grad enabled) before the
                update, as Lightning requires.
        """
        loss = closure_loss(closure)
        for group in self.param_groups:
            self._check_hyperparameters(group)  # a scheduler or the user may have changed the group since
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        """One group's update: gather its parameters that have a gradient with their buffers, then update them."""
        params, grads, bufs = gather(self, group, self._state_key, self._init_state)
        if params:
            self._update(group, params, grads, bufs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key not in _TORCH_DEFAULT_KEYS:
                    group.setdefault(key, value)


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """Call ``closure`` with grad enabled (``step`` runs under no_grad), as Lightning requires."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def check_lr(lr: float | Tensor) -> float:
    """The lr as a float; a clear error when it is not a finite, non-negative real number."""
    if isinstance(lr, Tensor):
        if lr.is_complex() or not lr.is_floating_point():
            raise TypeError(f"lr must be a real number or a one-element floating-point tensor, got {lr.dtype}")
        if lr.numel() != 1:
            raise ValueError(f"lr must be a number or a one-element tensor, got a tensor of shape {tuple(lr.shape)}")
        value = float(lr.detach())
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        value = float(lr)
    else:
        raise TypeError(f"lr must be a real number or a one-element tensor, got {type(lr).__name__}")
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"lr must be finite and >= 0, got {value} (set by a scheduler or the param group)")
    return value


def check_reals(group: dict[str, Any], checks: Iterable[tuple[str, Callable[[float], bool], str]]) -> None:
    """Check ``(name, predicate, allowed range in words)`` for each named group entry; store it as a float."""
    for name, ok, allowed in checks:
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name} must be {allowed}, got {value}")
        group[name] = float(value)


def step_lr(lr: float | Tensor) -> float | Tensor:
    """The lr one step computes with (already checked): a float, or a 0-d view of a one-element tensor,
    since the foreach kernels take only 0-d tensors as scalars."""
    return lr.reshape(()) if isinstance(lr, Tensor) else float(lr)


def gather(
    optimizer: Optimizer, group: dict[str, Any], key: str, init: Callable[[Tensor], Tensor]
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Parameters with a gradient, their gradients, and their state buffer ``key`` (made by ``init``)."""
    params, grads, bufs = [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(
                f"{type(optimizer).__name__} does not support sparse gradients; "
                "use a dense gradient (e.g. sparse=False)"
            )
        params.append(p)
        grads.append(p.grad)
        state = optimizer.state[p]
        if key not in state:
            state[key] = init(p)
        bufs.append(state[key])
    return params, grads, bufs


def default_foreach(params: list[Tensor]) -> bool:
    if torch.jit.is_scripting():
        return False
    return all(p.device.type in ("cpu", "cuda") and not p.is_sparse for p in params)


def real_views(*tensor_lists: list[Tensor]) -> tuple[list[Tensor], ...]:
    """Complex tensors as real (..., 2) views, so the real arithmetic applies to both parts."""
    return tuple([torch.view_as_real(t) if torch.is_complex(t) else t for t in ts] for ts in tensor_lists)
