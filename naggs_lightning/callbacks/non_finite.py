"""Detector: a training loss that is NaN or inf."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NonFiniteLossDetector"]


class NonFiniteLossDetector:
    """Acts at the first non-finite loss of an episode; the episode ends at the next finite loss.

    Nothing precedes this sign: the run has diverged (or a batch holds NaN), so it is checked every batch.
    """

    def __init__(self) -> None:
        self.active = False

    def check(self, loss: float) -> tuple[bool, str | None]:
        """``(should_act, reason)`` for one batch's loss; acts once per episode."""
        if math.isfinite(loss):
            self.active = False
            return False, None
        start = not self.active
        self.active = True
        return start, f"the training loss is {loss}" if start else None

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = state["active"]
