r"""Undo a collapse: the weights and optimizer state from the start of the monitor's dense phase, kept to restore.

A collapse (:class:`~naggs_lightning.callbacks.collapse.CollapseDetector`) leaves the network in a flat, dead
region. Capping the lr there does not bring it out soon: measured with NAG-GS at 4x the best step
(``benchmarks/monitor_collapse.py``), the 1-D CNN capped at half the lr sat at chance until about step 140 (0.456
against 0.642 at the best step) and a quarter did worse (0.298). Restoring the weights from before the collapse
and restarting at a quarter of the lr that collapsed (:data:`ROLLBACK_FRACTION`) ends within 2 points of the best
step's run on the three networks measured (a 4x step restarts at the best step, a 2x step at half of it).

Collapses happen early: in the first few dozen steps of a run, or of a larger step. So a :class:`Snapshot` is
taken where the monitor's dense phase starts (the start of training, an lr rise:
:class:`~naggs_lightning.callbacks.schedule.ProbeSchedule`) and released where it ends; a collapse later than that
is only capped (:data:`~naggs_lightning.callbacks.lr_cap.COLLAPSE_FRACTION`). The snapshot lives in host memory,
one copy of the module's and the optimizers' state, only while the dense phase lasts. It is not saved in
checkpoints: a run resumed inside a dense phase takes a new one where it resumes.

What is restored: the module's ``state_dict`` and each optimizer's state and param-group values (NAG-GS's evolving
gamma, AdaNAGGS's metric), except the lrs, which stay whatever the user, a scheduler or the cap set since (a
scheduler is not rewound). Under DDP every rank holds the same weights and decides alike (the monitor's losses are
averaged across ranks), so every rank restores the same snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["ROLLBACK_FRACTION", "Snapshot"]

ROLLBACK_FRACTION = 0.25
"""A collapse rolled back restarts each param group at this fraction of the lr that collapsed it."""


class Snapshot:
    """A module's and its optimizers' state at one step, in host memory.

    Args:
        module: whose ``state_dict`` to copy.
        optimizers: whose state and param groups to copy (the trainer's ``optimizers``).
        step: the step it was taken at (``trainer.global_step``), for the record.
    """

    def __init__(self, module: nn.Module, optimizers: Sequence[Optimizer], step: int) -> None:
        self.step = step
        self.module = _to_host(module.state_dict())
        self.optimizers = [_to_host(opt.state_dict()) for opt in optimizers]

    def restore(self, module: nn.Module, optimizers: Sequence[Optimizer]) -> None:
        """Put the copied state back in place, keeping each param group's lr and the groups' dict objects (the
        monitor's rows and a scheduler hold them)."""
        module.load_state_dict(self.module)
        for opt, saved in zip(optimizers, self.optimizers):
            params = [p for group in opt.param_groups for p in group["params"]]
            for index, param in enumerate(params):  # state_dict numbers the parameters in this order
                _put_back(opt.state, param, saved["state"].get(index))
            for group, values in zip(opt.param_groups, saved["param_groups"]):
                for key, value in values.items():
                    if key in ("params", "lr"):
                        continue
                    if isinstance(group.get(key), Tensor):
                        group[key].copy_(value)  # a tensor hyper-parameter keeps its device and identity
                    else:
                        group[key] = value


def _put_back(state: dict[Tensor, dict[str, Any]], param: Tensor, saved: dict[str, Any] | None) -> None:
    """One parameter's optimizer state as saved; none saved (the optimizer had not stepped it): none now."""
    if saved is None:
        state.pop(param, None)
        return
    current = state.get(param, {})
    restored = {}
    for key, value in saved.items():
        if isinstance(value, Tensor):
            old = current.get(key)
            same = isinstance(old, Tensor) and old.shape == value.shape and old.dtype == value.dtype
            if same:
                restored[key] = old.copy_(value)
            else:  # a fresh copy: the snapshot may be restored again; a step count stays where torch keeps it
                restored[key] = value.clone() if key == "step" else value.to(param.device, copy=True)
        else:
            restored[key] = value
    state[param] = restored


def _to_host(tree: Any) -> Any:
    """A copy of a state dict with every tensor cloned to the CPU (``load_state_dict`` moves them back)."""
    return apply_to_collection(tree, Tensor, lambda t: t.detach().to("cpu", copy=True))
