"""Detector: a training loss that is NaN or inf (and a curvature probe that finds no finite curvature)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from naggs_lightning.callbacks.detector import Decision, Detector, Observation

__all__ = ["NonFiniteLossDetector"]


class NonFiniteLossDetector(Detector):
    """Acts at the first non-finite loss of an episode; the episode ends at the next finite loss.

    Nothing precedes this sign: the run has diverged (or a batch holds NaN), so it is checked every batch
    (:meth:`on_batch`). A curvature probe that fails on a non-finite loss or parameters is reported here too
    (:meth:`on_probe`), unless a non-finite loss episode was reported already. What the monitor then does
    depends on ``on_unstable`` and on whether the parameters are still finite (:meth:`action`).
    """

    name = "non_finite"

    def __init__(self) -> None:
        self.active = False

    @property
    def diverging(self) -> bool:  # type: ignore[override]
        return self.active

    def on_batch(self, obs: Observation) -> Sequence[Decision]:
        if obs.loss is None:
            return []
        act, reason = self.check(obs.loss)
        return [Decision.diverging(reason)] if act else []

    def on_probe(self, obs: Observation) -> Sequence[Decision]:
        if obs.error is None or self.active:
            return []
        return [Decision.diverging(f"the curvature probe failed: {obs.error}")]

    def check(self, loss: float) -> tuple[bool, str | None]:
        """``(should_act, reason)`` for one batch's loss; acts once per episode."""
        if math.isfinite(loss):
            self.active = False
            return False, None
        start = not self.active
        self.active = True
        return start, f"the training loss is {loss}" if start else None

    @staticmethod
    def action(on_unstable: str, params_finite: bool) -> tuple[bool, str]:
        """``(should_stop, what happens, in words)`` on a divergence seen without a curvature (a non-finite loss):
        ``"stop"`` stops; ``"cap_lr"`` stops only once the parameters are no longer finite (nothing can recover
        them); ``"warn"`` never stops."""
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
