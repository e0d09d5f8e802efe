"""The non-finite check, written once: the tuner's trial callback and the monitor's non-finite detector both
ask whether a training loss is finite."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["all_finite"]


def all_finite(value: float | Tensor) -> bool:
    """Whether ``value`` (a number, or every element of a tensor) is finite: neither NaN nor inf."""
    if isinstance(value, Tensor):
        return bool(value.detach().isfinite().all())
    return math.isfinite(value)
