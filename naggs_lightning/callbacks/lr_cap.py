r"""Acting on divergence: cap a param group's lr, and lift the cap when the step it protects is safe again.

The rule (documented in ``docs/monitor.md`` and tested):

* A cap is set, or lowered, only at a probe that finds the run **diverging**
  (:class:`~naggs_lightning.callbacks.edge.EdgeOfStabilityDetector`): ``safety_factor`` times the group's
  stable limit at the measured curvature (:math:`\alpha_{crit}` for NAG-GS). Reaching the edge never caps:
  a network re-sharpens to the edge of each new step, so a cap set there would only ratchet the step down.
* A cap is **lifted** at a scheduled probe (one of the monitor's ``every_n_steps``) whose curvature is below the
  edge of the asked-for lr: the step the cap protects would then be stable even by the quadratic theory. Not at
  a probe a detector brought forward, nor in the monitor's dense phase (the first ``every_n_steps / 4`` steps of a
  run, or after an lr rise): a minibatch's curvature swings tenfold from one step to the next past the edge (the
  digits MLP at 2x its best step read 0.07 to 17x its edge on neighbouring steps), and early in training a network
  is flat whatever the step. A cap lifted on such a reading gives back, within a few dozen steps, the step that
  diverged (the digits MLP at 2x: lifted at step 151, it ended at 0.844 against 0.967 held; the deep digits CNN
  at 2x: lifted at step 64, 0.911 against 0.981). A cap set again after it was lifted is **kept**: that step
  diverged twice.
* A **collapse** (:class:`~naggs_lightning.callbacks.collapse.CollapseDetector`) caps every group at a fraction of
  its current lr, whatever the curvature: the collapse put the network in a flat region, whose curvature is below
  every edge and says nothing about the step that threw it there. Where the monitor rolled the weights back to
  before the collapse (:mod:`~naggs_lightning.callbacks.rollback`, in its dense phase) the fraction is
  :data:`~naggs_lightning.callbacks.rollback.ROLLBACK_FRACTION` (0.25: the run restarts from sound weights, and
  collapses came at 2-4x the best step); otherwise ``COLLAPSE_FRACTION`` (0.5: the network must leave the flat
  region on its own, and a quarter left it later still, 0.298 against 0.456 on the 1-D CNN at 4x). Such a cap is
  lowered again by a further collapse, and kept (a lifted cap would give back the step that collapsed the run).
* While a cap holds, ``lr = min(asked-for lr, cap)`` before each step; the asked-for lr is whatever the user
  or a scheduler last set, so a scheduler keeps working underneath the cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from naggs_lightning.callbacks.groups import GroupStability, curvature_edge
from naggs_lightning.callbacks.rollback import ROLLBACK_FRACTION

__all__ = ["COLLAPSE_FRACTION", "LrCap"]

COLLAPSE_FRACTION = 0.5
"""A collapse caps each group's lr at this fraction of its current lr."""


class LrCap:
    """The lr caps of the param groups, keyed ``"optimizer_index/group_index"``."""

    def __init__(self, safety_factor: float) -> None:
        if not 0.0 < safety_factor <= 1.0:
            raise ValueError(f"safety_factor must be in (0, 1], got {safety_factor!r}")
        self.safety_factor = safety_factor
        self.caps: dict[str, float] = {}
        self.requested: dict[str, float] = {}  # the lr the user or a scheduler asked for, under a cap
        self._applied: dict[str, float] = {}  # the lr this object last wrote
        self.kept: set[str] = set()  # caps the curvature does not lift: set by a collapse, or again after a lift
        self.lifted: set[str] = set()  # the groups whose cap was lifted once

    def update(
        self,
        rows: Sequence[GroupStability],
        lam: float,
        diverging: bool,
        collapsed: bool = False,
        rolled_back: bool = False,
        may_lift: bool = True,
    ) -> list[str]:
        """The rule at one probe: on a collapse cap every group at a fraction of its lr (``ROLLBACK_FRACTION`` if
        the weights were ``rolled_back``, else ``COLLAPSE_FRACTION``); lower the caps of diverging groups (at or
        past their edge), lift the caps whose asked-for step is safe again (only where ``may_lift``: the monitor
        passes it at its scheduled probes outside the dense phase), impose the caps in force. Returns what was
        lifted, in words."""
        lifted = []
        fraction = ROLLBACK_FRACTION if rolled_back else COLLAPSE_FRACTION
        for row in rows:
            if collapsed:
                self.caps[row.key] = min(self.caps.get(row.key, math.inf), fraction * float(row.group["lr"]))
                self.kept.add(row.key)
            elif diverging and row.metrics.get("edge_ratio", 0.0) >= 1.0:
                self.lower(row.key, row.limit)
                if row.key in self.lifted:
                    self.kept.add(row.key)
            elif row.key in self.caps and may_lift:
                edge = curvature_edge(row.optimizer, row.group, self.asked_for(row.key, row.group))
                lift, reason = self.check_lift(row.key, lam, edge)
                if lift:
                    lifted.append(reason)
                    self.lift(row.key, row.group)
            if row.key in self.caps:
                self.apply(row.key, row.group)
                row.metrics["lr_cap"] = self.caps[row.key]
        return lifted

    def lower(self, key: str, limit: float) -> None:
        """Cap (or lower the cap of) a diverging group at ``safety_factor`` times its stable limit."""
        if math.isfinite(limit) and limit > 0:
            self.caps[key] = min(self.caps.get(key, math.inf), self.safety_factor * limit)

    def check_lift(self, key: str, lam: float, requested_edge: float) -> tuple[bool, str | None]:
        """``(should_lift, reason)``: lift when the curvature is below the edge of the asked-for lr."""
        if key not in self.caps or key in self.kept or not lam < requested_edge:
            return False, None
        return True, (
            f"the curvature {lam:.4g} is below the edge {requested_edge:.4g} of the asked-for lr "
            f"{self.requested.get(key, math.nan):.4g}: lr cap {self.caps[key]:.4g} lifted"
        )

    def lift(self, key: str, group: dict[str, Any]) -> None:
        """Remove a cap and give the group its asked-for lr back."""
        _set_lr(group, self.asked_for(key, group))
        del self.caps[key]
        self.requested.pop(key, None)
        self._applied.pop(key, None)
        self.lifted.add(key)

    def asked_for(self, key: str, group: dict[str, Any]) -> float:
        """The lr the user or a scheduler asked for (the group's lr when this object did not write it)."""
        lr = float(group["lr"])
        return self.requested.get(key, lr) if self._applied.get(key) == lr else lr

    def apply(self, key: str, group: dict[str, Any]) -> None:
        """lr = min(asked-for lr, cap). An lr that differs from what was last written here was set by the user
        or a scheduler since: it becomes the asked-for lr."""
        self.requested[key] = self.asked_for(key, group)
        _set_lr(group, min(self.requested[key], self.caps[key]))
        self._applied[key] = float(group["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "caps": dict(self.caps),
            "requested": dict(self.requested),
            "applied": dict(self._applied),
            "kept": sorted(self.kept),
            "lifted": sorted(self.lifted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.caps, self.requested, self._applied = dict(state["caps"]), dict(state["requested"]), dict(state["applied"])
        # Older checkpoints: "collapsed" before the kept caps, neither before the collapse cap.
        self.kept = set(state.get("kept", state.get("collapsed", ())))
        self.lifted = set(state.get("lifted", ()))


def _set_lr(group: dict[str, Any], value: float) -> None:
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(value)  # keep a tensor lr a tensor (torch.compile, capturable optimizers)
    else:
        group["lr"] = value
