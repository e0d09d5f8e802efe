r"""Detector: where the top curvature sits against the optimizer's edge, and when that means divergence.

Networks trained with a fixed step sharpen until :math:`\lambda_{max}` reaches the edge of the step and then
stay there while the loss keeps falling (Cohen et al. 2021; Damian et al. 2022 explain the
self-stabilisation). So the ratio :math:`r = \lambda_{max} / \text{edge}` is read in three zones:

* ``"below"``: :math:`r < 1 - \text{band}`.
* ``"edge"``: :math:`1 - \text{band} \le r < \text{divergence\_ratio}`: the edge of stability, normal. Measured
  plateaus on digits (``benchmarks/edge_of_stability.py``) sit at 0.98-1.07 (full batch) and reach 1.4
  transiently while the run settles; a catapult recovers from up to about 2x the edge (Lewkowycz et al. 2020).
* ``"past"``: :math:`r \ge \text{divergence\_ratio}`. Diverging only *together with* a sign that the
  iteration runs away: the loss rose over the last step on the probed batch, the updates reverse direction
  (cosine below the oscillation threshold), or the ratio grew at ``GROWING_PROBES`` successive probes past the
  edge (a run that self-stabilises brings its curvature back towards the edge within a few steps; the deep digits
  CNN at 2x its best step, seed 1, read 2.30x, 2.86x, 3.59x, 4.81x, 6.39x at steps 232-247 while its loss rose
  from 0.25 to 1.84, and ended at 0.859 against 0.981). A non-finite loss is handled on its own, every batch.

A loss spike while :math:`r \ge 1` and the probed batch's loss still rising is divergence too: a model without
self-stabilisation (a linear model, whose Hessian is constant) diverges slowly from just past its edge.

Past the edge without a sign yet, it asks for the next probes after 1, 2, 4, ... steps (up to the monitor's
``every_n_steps``): a divergence is fast, a catapult rare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from naggs_lightning.callbacks.detector import Decision, Detector, Observation

__all__ = ["GROWING_PROBES", "EdgeOfStabilityDetector", "Zone"]

GROWING_PROBES = 3
"""Successive probes past the edge, each reading a larger ratio than the one before, that count as a divergence
sign."""

Zone = Literal["below", "edge", "past"]


class EdgeOfStabilityDetector(Detector):
    """Classifies each probe's edge ratio; reports reaching the edge once, and decides divergence.

    At a probe (:meth:`on_probe`) it reads the signs the detectors before it left (``obs.signs``,
    ``obs.spiking``) plus its own, the probed batch's loss rising over the step; it adds the zone to the probe's
    record.

    Args:
        band: the edge zone starts at ``1 - band`` times the edge; in [0, 1).
        divergence_ratio: the ratio from which a divergence sign means divergence; finite and > 1.
    """

    name = "edge"

    def __init__(self, band: float = 0.1, divergence_ratio: float = 2.0) -> None:
        if not 0.0 <= band < 1.0:
            raise ValueError(f"EdgeOfStabilityDetector band must be in [0, 1), got {band!r}")
        if not (divergence_ratio > 1.0 and math.isfinite(divergence_ratio)):
            raise ValueError(
                f"EdgeOfStabilityDetector divergence_ratio must be finite and > 1, got {divergence_ratio!r}"
            )
        self.band = band
        self.divergence_ratio = divergence_ratio
        self.reached = False
        self.diverging = False
        self.recheck = 1  # past the edge without a sign: steps to the next probe, doubling
        self.past: list[float] = []  # the ratios of the successive probes past the edge, while each grew

    def on_probe(self, obs: Observation) -> Sequence[Decision]:
        if obs.edge_ratio is None:  # the probe failed
            return []
        ratio, decisions = obs.edge_ratio, []
        was_diverging = self.diverging
        diverging, reason = self.check(ratio, loss_rose(obs) + obs.signs + self.growing(ratio), spiking=obs.spiking)
        reached, message = self.check_reached(ratio)
        if reached:
            decisions.append(Decision.inform(message))
        if diverging and not was_diverging:
            decisions.append(Decision.diverging(f"{reason}. The step is past the stability edge"))
        past = self.zone(ratio) == "past"
        self.recheck = min(2 * self.recheck, obs.every_n_steps) if past else 1
        if past and not diverging:
            decisions.append(Decision.probe(after=self.recheck // 2))
        obs.notes["zone"] = self.zone(ratio)
        return decisions

    def on_rollback(self) -> None:
        self.diverging, self.recheck, self.past = False, 1, []

    def growing(self, ratio: float) -> list[str]:
        """The divergence sign of a ratio that grew at ``GROWING_PROBES`` successive probes past the edge, in words
        (empty: none); keeps the run of growing ratios."""
        if self.zone(ratio) != "past":
            self.past = []
            return []
        self.past = [*self.past, ratio] if self.past and ratio > self.past[-1] else [ratio]
        if len(self.past) < GROWING_PROBES:
            return []
        seen = " -> ".join(f"{r:.2f}x" for r in self.past[-GROWING_PROBES:])
        return [f"the curvature kept growing past the edge at {GROWING_PROBES} successive probes ({seen})"]

    def zone(self, ratio: float) -> Zone:
        """Which zone an edge ratio ``lambda_max / edge`` lies in."""
        if ratio >= self.divergence_ratio:
            return "past"
        return "edge" if ratio >= 1.0 - self.band else "below"

    def check_reached(self, ratio: float) -> tuple[bool, str | None]:
        """``(should_report, message)``: true the first time the run reaches the edge (information, not a warning)."""
        if self.reached or self.zone(ratio) == "below":
            return False, None
        self.reached = True
        if self.zone(ratio) == "past":
            return True, (
                f"the top Hessian eigenvalue is {ratio:.2f}x the stability edge of the step, past the "
                f"{self.divergence_ratio:g}x from which a run rarely settles back; the monitor probes again within a "
                "few steps and warns if the loss rises or the updates oscillate."
            )
        return True, (
            f"the top Hessian eigenvalue reached the stability edge of the step ({ratio:.2f}x). Networks trained "
            "with a fixed step normally sharpen to this edge and keep training there (the edge of stability), "
            "the loss falling non-monotonically; a step somewhat past it usually lowers the curvature again. "
            f"Not divergence: the monitor warns if the curvature is past {self.divergence_ratio:g}x the edge while "
            "the loss rises or the updates oscillate, or if the loss is not finite."
        )

    def check(self, ratio: float, signs: Sequence[str], spiking: bool = False) -> tuple[bool, str | None]:
        """``(diverging, reason)`` for a probe: past the edge together with at least one divergence sign, or at
        least at the edge with the loss spiking and still rising (``spiking`` with a sign)."""
        past = self.zone(ratio) == "past" or (spiking and ratio >= 1.0)
        self.diverging = past and bool(signs)
        if not self.diverging:
            return False, None
        spike = " after a loss spike" if spiking and self.zone(ratio) != "past" else ""
        return True, f"the top Hessian eigenvalue is {ratio:.2f}x the stability edge{spike} and " + "; ".join(signs)

    def state_dict(self) -> dict[str, Any]:
        return {"reached": self.reached, "diverging": self.diverging, "recheck": self.recheck, "past": list(self.past)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reached, self.diverging = state["reached"], state["diverging"]
        self.recheck = state.get("recheck", 1)
        self.past = list(state.get("past", ()))


def loss_rose(obs: Observation) -> list[str]:
    """The divergence sign of a probed batch whose loss rose over the step, in words (empty: none)."""
    before, after = obs.loss, obs.loss_after
    if before is None or after is None or not after > before:
        return []
    return [f"the probed batch's loss rose over the step ({before:.4g} -> {after:.4g})"]
