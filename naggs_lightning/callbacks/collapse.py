r"""Detector: a collapse, the loss thrown back to its initial value and staying there.

A step too large for a network need not diverge: it can throw the network into a flat, dead region (ReLUs
switched off, a constant output), where the loss sits at its value at initialisation, the entropy of a uniform
guess for a classifier (ln 10 = 2.30 on digits), and the curvature is small. The edge detector sees nothing
there (the top eigenvalue is below the edge), and nothing is non-finite. Measured with NAG-GS (mu = gamma = 0.1)
at 2-4x the best step (``benchmarks/monitor_collapse.py``): the loss falls a little (1.62 -> 1.50 on the 1-D CNN)
or spikes (2.30 -> 3.33 on the deep digits CNN) within 5-25 steps, then sits at the initial loss +- 1 %.

The rule, on the running median of the last ``window`` losses (each batch, :meth:`CollapseDetector.on_batch`),
against the run's initial loss (the first finite loss):

* the run has **left** its initial loss: the median fell to ``fall`` times it or below (training made
  progress), or a loss rose to ``jump`` times it or above (a jump);
* and then the median came back to within ``near`` of the initial loss and stayed there for ``window``
  consecutive batches.

A run that starts slowly, near its initial loss from the start, has not left it and is not flagged; nor is a
run at the edge of stability, whose loss does not go back to where it started. Only positive losses: ratios mean
nothing for log-likelihoods of densities.

On a collapse it asks for a probe at once and decides ``diverging`` at that probe, with ``obs.collapsed`` set so
that ``on_unstable="cap_lr"`` caps the lr without the curvature (a flat region's curvature is below every edge;
:mod:`~naggs_lightning.callbacks.lr_cap`). The episode ends when the median falls to ``fall`` times the initial
loss again (the run recovered).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from naggs_lightning.callbacks.detector import Decision, Detector, Observation
from naggs_lightning.callbacks.window import MedianWindow

__all__ = ["CollapseDetector"]


class CollapseDetector(Detector):
    """The loss left its initial value (fell, or jumped) and then came back to it and stays there.

    Args:
        window: the losses the running median is taken over, and the batches it must stay near the initial loss;
            an integer >= 3.
        fall: the median at or below this times the initial loss counts as progress; in (0, 1).
        jump: a loss at or above this times the initial loss counts as a jump; finite and > 1.
        near: the median within this fraction of the initial loss sits at it; in (0, 1 - fall).
    """

    name = "collapse"

    def __init__(self, window: int = 9, fall: float = 0.95, jump: float = 1.2, near: float = 0.02) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 3:
            raise ValueError(f"CollapseDetector window must be an integer >= 3, got {window!r}")
        if not 0.0 < fall < 1.0:
            raise ValueError(f"CollapseDetector fall must be in (0, 1), got {fall!r}")
        if not (jump > 1.0 and math.isfinite(jump)):
            raise ValueError(f"CollapseDetector jump must be finite and > 1, got {jump!r}")
        if not 0.0 < near < 1.0 - fall:
            raise ValueError(f"CollapseDetector near must be in (0, 1 - fall) = (0, {1.0 - fall:g}), got {near!r}")
        self.window, self.fall, self.jump, self.near = window, fall, jump, near
        self.losses = MedianWindow(window)
        self.initial: float | None = None
        self.lowest: float | None = None  # the lowest median, once it fell to ``fall`` x initial
        self.highest: float | None = None  # the highest loss, once it jumped to ``jump`` x initial
        self.held = 0  # consecutive batches with the median near the initial loss
        self.diverging = False
        self.pending: str | None = None  # a collapse seen, to decide at the probe it asked for

    def on_batch(self, obs: Observation) -> Sequence[Decision]:
        if obs.loss is None or not math.isfinite(obs.loss):
            return []
        act, reason = self.check(obs.loss)
        if not act:
            return []
        self.pending = reason
        return [Decision.probe()]

    def on_probe(self, obs: Observation) -> Sequence[Decision]:
        if self.pending is None or obs.error is not None:
            return []
        reason, self.pending = self.pending, None
        obs.collapsed = True
        return [Decision.diverging(reason)]

    def on_rollback(self) -> None:
        # The initial loss stays: it is the run's, and the rolled-back run starts from it again.
        self.losses.clear()
        self.lowest = self.highest = self.pending = None
        self.held, self.diverging = 0, False

    def check(self, loss: float) -> tuple[bool, str | None]:
        """``(collapsed, reason)``: true at the batch a collapse is seen (once per episode)."""
        if self.initial is None:
            if loss > 0:
                self.initial = loss
            return False, None
        self.losses.append(loss)
        if loss >= self.jump * self.initial:
            self.highest = max(loss, self.highest or loss)
        if len(self.losses) < self.window:
            return False, None
        median = self.losses.median()
        if median <= self.fall * self.initial:
            self.lowest = min(median, self.lowest or median)
            self.diverging = False  # progress again: a collapse episode is over
        self.held = self.held + 1 if abs(median / self.initial - 1.0) <= self.near else 0
        left = self.lowest is not None or self.highest is not None
        if self.diverging or not left or self.held < self.window:
            return False, None
        self.diverging = True
        went = f"fell to {self.lowest:.4g}" if self.lowest is not None else f"jumped to {self.highest:.4g}"
        return True, (
            f"collapsed: the loss {went} and came back to {median:.4g} (the median of the last {self.window}), "
            f"near its initial {self.initial:.4g}; the step threw the network into a flat region"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "initial": self.initial,
            "lowest": self.lowest,
            "highest": self.highest,
            "held": self.held,
            "diverging": self.diverging,
            "pending": self.pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = MedianWindow(self.window, state["losses"])
        self.initial, self.lowest, self.highest = state["initial"], state["lowest"], state["highest"]
        self.held, self.diverging, self.pending = state["held"], state["diverging"], state["pending"]
