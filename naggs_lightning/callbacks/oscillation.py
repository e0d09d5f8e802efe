"""Detector: parameter updates that reverse direction step after step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from naggs_lightning.callbacks.detector import Decision, Detector, Observation

__all__ = ["OscillationDetector"]


class OscillationDetector(Detector):
    """The cosine between the last two parameter updates, measured at each scheduled probe.

    Past the edge NAG-GS and SGD flip sign along the top eigenvector every step, so the cosine goes to -1.
    At the edge of stability it dips too (the top mode oscillates while the run self-stabilises), so a
    cosine below ``threshold`` is a divergence sign only together with a curvature well past the edge
    (:class:`~naggs_lightning.callbacks.edge.EdgeOfStabilityDetector`).

    Memory: two flat fp32 copies of the parameters, held over the two steps before a scheduled probe only.

    It measures at every optimizer step (:meth:`on_step`, which sets ``obs.update_cosine``: the monitor logs it
    as ``stability/update_cosine``) and, at a probe, adds its sign to ``obs.signs`` (:meth:`on_probe`).

    Args:
        threshold: a cosine below this is a divergence sign; in [-1, 1).
    """

    name = "oscillation"

    def __init__(self, threshold: float = -0.5) -> None:
        if not -1.0 <= threshold < 1.0:
            raise ValueError(f"OscillationDetector threshold must be in [-1, 1), got {threshold!r}")
        self.threshold = threshold
        self._snapshot: tuple[int, Tensor] | None = None  # x at the previous step
        self._update: tuple[int, Tensor] | None = None  # the update that led to it

    def on_step(self, obs: Observation) -> Sequence[Decision]:
        if _near_probe(obs.step, obs.every_n_steps):  # gathering the parameters costs: only when measuring
            obs.update_cosine = self.observe(obs.step, obs.params, obs.every_n_steps)
        return []

    def on_probe(self, obs: Observation) -> Sequence[Decision]:
        oscillating, reason = self.check(obs.update_cosine)
        if oscillating and obs.probed:
            obs.signs.append(reason)
        return []

    def on_rollback(self) -> None:
        self._snapshot = self._update = None

    def observe(self, step: int, params: Sequence[Tensor], every_n_steps: int) -> float | None:
        """Keep x and the last update over the two steps before a scheduled probe; the cosine at the probe."""
        n = every_n_steps
        if not _near_probe(step, n):
            return None
        with torch.no_grad():
            x = torch.cat([p.detach().reshape(-1).float() for p in params])
            cosine = None
            update = None
            if self._snapshot is not None and self._snapshot[0] == step - 1 and self._snapshot[1].numel() == x.numel():
                # x_step - x_(step-1), in the snapshot's memory (moved back from the CPU after a resume)
                update = self._snapshot[1].to(x.device).neg_().add_(x)
                prev = self._update
                if step % n == 0 and prev is not None and prev[0] == step - 1:
                    prev_update = prev[1].to(update.device)
                    denom = float(update.norm() * prev_update.norm())
                    cosine = float(torch.dot(update, prev_update)) / denom if denom > 0 else None
            self._update = (step, update) if update is not None else None
            self._snapshot = (step, x)
        if step % n == 0 and n > 2:  # the next probe is n steps away: drop the snapshots meanwhile
            self._snapshot = self._update = None
        return cosine

    def check(self, cosine: float | None) -> tuple[bool, str | None]:
        """``(oscillating, reason)`` for the cosine measured at a probe (``None``: not measured)."""
        if cosine is None or cosine >= self.threshold:
            return False, None
        return True, f"the last two updates point in opposite directions (cosine {cosine:.3f} < {self.threshold})"

    def state_dict(self) -> dict[str, Any]:
        # Non-None only within two steps of a probe.
        return {"snapshot": _to_cpu(self._snapshot), "update": _to_cpu(self._update)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._snapshot, self._update = state["snapshot"], state["update"]


def _near_probe(step: int, every_n_steps: int) -> bool:
    """Whether ``step`` is a scheduled probe or one of the two steps before it."""
    return (-step) % every_n_steps <= 2


def _to_cpu(entry: tuple[int, Tensor] | None) -> tuple[int, Tensor] | None:
    return None if entry is None else (entry[0], entry[1].detach().cpu())
