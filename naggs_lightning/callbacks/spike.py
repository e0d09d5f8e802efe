"""Detector: a loss spike, the cheap sign that brings a curvature probe forward."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from naggs_lightning.callbacks.detector import Decision, Detector, Observation
from naggs_lightning.callbacks.window import MedianWindow

__all__ = ["SpikeDetector"]


class SpikeDetector(Detector):
    """A loss above ``factor`` times the running median that also rises above it by ``min_rise`` times the
    run's loss scale (the highest running median so far, usually the initial loss).

    The second condition keeps the heavy-tailed batch-to-batch noise of a nearly fitted model (0.002 one
    batch, 0.02 the next) from counting. Only positive losses: ratios mean nothing for log-likelihoods of
    densities. The median needs ``window // 2`` losses first.

    At the first loss of a spike it asks for a probe at once (:meth:`on_batch`); while the spike lasts it tells
    the detectors after it (``obs.spiking``, read by the edge detector at a probe).

    Args:
        factor: a loss above this times the running median is a spike candidate; finite and > 1.
        min_rise: ... if it also rises above the median by this times the loss scale; finite and >= 0.
        window: the losses the running median is taken over; an integer >= 3.
    """

    name = "spike"

    def __init__(self, factor: float = 3.0, min_rise: float = 0.1, window: int = 50) -> None:
        if not (factor > 1.0 and math.isfinite(factor)):
            raise ValueError(f"SpikeDetector factor must be finite and > 1, got {factor!r}")
        if not (min_rise >= 0.0 and math.isfinite(min_rise)):
            raise ValueError(f"SpikeDetector min_rise must be finite and >= 0, got {min_rise!r}")
        if not isinstance(window, int) or isinstance(window, bool) or window < 3:
            raise ValueError(f"SpikeDetector window must be an integer >= 3, got {window!r}")
        self.factor = factor
        self.min_rise = min_rise
        self.window = window
        self.losses = MedianWindow(window)
        self._needed = max(3, window // 2)  # losses before the median is trusted
        self.scale = 0.0
        self.active = False

    def on_batch(self, obs: Observation) -> Sequence[Decision]:
        if obs.loss is None or not math.isfinite(obs.loss):
            return []
        act, reason = self.check(obs.loss)
        return [Decision.probe(reason)] if act else []

    def on_probe(self, obs: Observation) -> Sequence[Decision]:
        obs.spiking = obs.spiking or self.active
        return []

    def on_rollback(self) -> None:
        self.losses.clear()
        self.active = False

    def check(self, loss: float) -> tuple[bool, str | None]:
        """``(should_act, reason)``: act at the first loss of a spike; the loss joins the window either way."""
        start, reason = False, None
        if len(self.losses) >= self._needed:
            median = self.losses.median()
            self.scale = max(self.scale, median)
            spike = median > 0 and loss > self.factor * median and loss - median > self.min_rise * self.scale
            start = spike and not self.active
            if start:
                reason = (
                    f"loss spike: {loss:.4g} is {loss / median:.1f}x the median {median:.4g} "
                    f"of the last {len(self.losses)} losses"
                )
            self.active = spike
        self.losses.append(loss)
        return start, reason

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "scale": self.scale, "active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = MedianWindow(self.window, state["losses"])
        self.scale = state["scale"]
        self.active = state["active"]
