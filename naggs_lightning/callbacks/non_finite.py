"""Detector: a training loss that is NaN or inf."""

from __future__ import annotations

from typing import Any

from naggs_lightning._checks import all_finite

__all__ = ["NonFiniteLossDetector"]


class NonFiniteLossDetector:
    """Acts at the first non-finite loss of an episode; the episode ends at the next finite loss.

    Nothing precedes this sign: the run has diverged (or a batch holds NaN), so it is checked every batch.
    """

    def __init__(self) -> None:
        self.active = False

    def check(self, loss: float) -> tuple[bool, str | None]:
        """``(should_act, reason)`` for one batch's loss; acts once per episode."""
        if all_finite(loss):
            self.active = False
            return False, None
        start = not self.active
        self.active = True
        return start, f"the training loss is {loss}" if start else None

    @staticmethod
    def action(on_unstable: str, params_finite: bool) -> tuple[bool, str]:
        """``(should_stop, what happens, in words)``: ``"stop"`` stops; ``"cap_lr"`` stops only once the parameters
        are no longer finite (nothing can recover them); ``"warn"`` never stops."""
        state = "the parameters are still finite" if params_finite else "the parameters are no longer finite"
        if on_unstable == "stop" or (on_unstable == "cap_lr" and not params_finite):
            return True, f"{state}: stopping training"
        if on_unstable == "cap_lr":
            return False, f"{state}: training continues (the step was not taken or the batch is bad); lr caps stay"
        return False, f"{state}: training continues (on_unstable='warn')"

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = state["active"]
