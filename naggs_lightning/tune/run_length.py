"""How long a trial runs, read from its trainer before it starts: its validations (when the median pruner may
judge it) and its optimizer steps (how heavy a momentum the search space admits, :mod:`~naggs_lightning.tune.seeding`).
"""

from __future__ import annotations

import math

from lightning.pytorch import Trainer

__all__ = ["expected_validations", "planned_steps"]


def expected_validations(trainer: Trainer) -> int | None:
    """How many validation runs a trial reports if it trains to its end: ``max_epochs`` over
    ``check_val_every_n_epoch``, times the runs per epoch of a fractional ``val_check_interval``. ``None`` where the
    trainer does not fix it: a step limit, or validation every so many batches."""
    epochs, interval = trainer.max_epochs, trainer.val_check_interval
    if epochs is None or epochs < 1 or trainer.max_steps not in (-1, None) or not isinstance(interval, float):
        return None
    per_epoch = max(1, round(1.0 / interval)) if interval > 0 else 1
    return max(1, epochs // (trainer.check_val_every_n_epoch or 1)) * per_epoch


def planned_steps(trainer: Trainer, batches_per_epoch: int | None) -> int | None:
    """How many optimizer steps a trial takes if it trains to its end, with ``batches_per_epoch`` training batches
    an epoch (``None``: a loader without a length): the smaller of ``max_steps`` and ``max_epochs`` times the steps
    an epoch (after ``limit_train_batches`` and ``accumulate_grad_batches``). ``None`` where neither bounds it.

    Under DDP each process sees a share of the batches, so this counts more steps than a process takes: the bound
    it sets on the momentum is then looser, never tighter."""
    limits = []
    if trainer.max_steps not in (-1, None):
        limits.append(trainer.max_steps)
    epochs = trainer.max_epochs
    if epochs not in (-1, None) and batches_per_epoch:
        limit = trainer.limit_train_batches
        batches = int(batches_per_epoch * limit) if isinstance(limit, float) else min(batches_per_epoch, int(limit))
        limits.append(epochs * math.ceil(batches / max(1, trainer.accumulate_grad_batches)))
    return min(limits, default=None)
