r"""When :class:`~naggs_lightning.callbacks.SpectralStabilityMonitor` probes on its own: dense early, sparse later.

Collapses and divergences happen early: in the first few dozen steps of a run at too large a step, or right after
the step grew (a warm-up, a cap lifted). So the scheduled probes fall at ``start + 1, start + 4, start + 16, ...``
(powers of ``growth``) while below ``start + every_n_steps / 4``, and at every multiple of ``every_n_steps``;
``start`` is 0, and moves to the current step when the lr of a param group rose above ``1 + lr_rise`` times its
lowest value since the dense phase last started (a warm-up, a cap lifted, a warm restart). A falling lr restarts
nothing: a smaller step does not throw a network anywhere, and a scheduler's decay would otherwise restart the
schedule all through a run. With the defaults
(``every_n_steps=500``) the probes fall at steps 1, 8, 64, 500, 1000, ...: 2 probes more than a plain schedule
(which probes after the first step and every ``every_n_steps``), about 0.6 % of a 3000-step run
(``benchmarks/monitor_collapse.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["DENSE_GROWTH", "ProbeSchedule"]

DENSE_GROWTH = 8
"""The default ratio between the dense phase's probe offsets (1, 8, 64). Chosen on
``benchmarks/monitor_collapse.py``: with 4 (1, 4, 16, 64) the digits MLP at 2x its best step was flagged only at
step 128 (its step-4 probe read the edge, its step-16 probe 6x past it, neither with a divergence sign) and the
callback cost 3.04 % of the digits CNN's 3000-step run; with 8 every run of the table (seed 0) is flagged by step
36, one probe fewer."""


class ProbeSchedule:
    """The scheduled probe steps, with a dense phase at the start and after the lr rises.

    Args:
        every_n_steps: the interval of the sparse probes; an integer >= 1.
        growth: the ratio between the offsets of the dense probes (1, growth, growth^2, ...); an integer >= 2, or 0
            for no dense phase and no restart (the monitor then probes after the first step and every
            ``every_n_steps``).
        lr_rise: the dense phase restarts when an lr rises above ``1 + lr_rise`` times its lowest value since the
            last start; finite and > 0.
    """

    def __init__(self, every_n_steps: int, growth: int = DENSE_GROWTH, lr_rise: float = 0.5) -> None:
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if not isinstance(growth, int) or isinstance(growth, bool) or not (growth == 0 or growth >= 2):
            raise ValueError(f"growth must be 0 or an integer >= 2, got {growth!r}")
        if not (lr_rise > 0 and math.isfinite(lr_rise)):
            raise ValueError(f"lr_rise must be finite and > 0, got {lr_rise!r}")
        self.every_n_steps, self.growth, self.lr_rise = every_n_steps, growth, lr_rise
        self.lrs: dict[str, float] = {}  # each group's lowest lr since the dense phase last started
        self._offsets: list[int] = []
        offset = 1
        while growth > 0 and (offset == 1 or offset < every_n_steps / 4):
            self._offsets.append(offset)
            offset *= growth
        self._set_start(0)

    def _set_start(self, step: int) -> None:
        self.start = step
        self._dense_steps = frozenset(step + o for o in self._offsets)  # due() asks every step

    def dense_steps(self) -> list[int]:
        """The dense phase's probe steps from the current start."""
        return sorted(self._dense_steps)

    def dense(self, step: int) -> bool:
        """Whether ``step`` falls in the dense phase (from its start to ``every_n_steps / 4`` steps after it)."""
        return self.growth > 0 and self.start <= step < self.start + self.every_n_steps / 4

    def due(self, step: int) -> bool:
        """Whether a probe is scheduled at ``step``."""
        return step % self.every_n_steps == 0 or step in self._dense_steps

    def observe(self, step: int, lrs: Mapping[str, float]) -> bool:
        """Read the groups' lrs at ``step`` (before the step is probed); restart the dense phase if one rose.
        Returns whether it restarted."""
        if self.growth == 0:
            return False
        rise, lowest = 1.0 + self.lr_rise, self.lrs
        if any(key in lowest and lr > rise * lowest[key] for key, lr in lrs.items()):
            self.restart(step, lrs)
            return True
        for key, lr in lrs.items():
            if key not in lowest or lr < lowest[key]:
                lowest[key] = lr
        return False

    def restart(self, step: int, lrs: Mapping[str, float]) -> None:
        """Start the dense phase again at ``step`` (an lr rise; a roll-back), from the groups' lrs ``lrs``."""
        self._set_start(step)
        self.lrs = dict(lrs)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "lrs": dict(self.lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_start(state["start"])
        self.lrs = dict(state["lrs"])
