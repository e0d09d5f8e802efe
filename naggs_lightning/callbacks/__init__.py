"""Lightning callbacks that watch NAG-GS (and other optimizers) for divergence while a model trains.

:class:`SpectralStabilityMonitor` is a thin callback running a list of detectors that share one interface
(:mod:`~naggs_lightning.callbacks.detector`: :class:`Detector` observes an :class:`Observation` and returns
:class:`Decision` objects, each with its reason in words; each keeps its own state). The default list
(:func:`default_detectors`) is :mod:`~naggs_lightning.callbacks.non_finite`,
:mod:`~naggs_lightning.callbacks.spike`, :mod:`~naggs_lightning.callbacks.oscillation`,
:mod:`~naggs_lightning.callbacks.edge` (edge of stability against divergence) and
:mod:`~naggs_lightning.callbacks.collapse`; :mod:`~naggs_lightning.callbacks.schedule` says when to probe; the
monitor's action on divergence under ``on_unstable="cap_lr"`` is :mod:`~naggs_lightning.callbacks.lr_cap`, and
:mod:`~naggs_lightning.callbacks.groups` reads each param group's edge from the theory.
"""

from naggs_lightning.callbacks.collapse import CollapseDetector
from naggs_lightning.callbacks.detector import Decision, Detector, Observation
from naggs_lightning.callbacks.edge import EdgeOfStabilityDetector
from naggs_lightning.callbacks.gamma_monitor import GammaMonitor
from naggs_lightning.callbacks.lr_cap import LrCap
from naggs_lightning.callbacks.lr_finder import TheoryLRFinder
from naggs_lightning.callbacks.monitor import SpectralStabilityMonitor, default_detectors
from naggs_lightning.callbacks.non_finite import NonFiniteLossDetector
from naggs_lightning.callbacks.oscillation import OscillationDetector
from naggs_lightning.callbacks.report import StabilityWarning
from naggs_lightning.callbacks.schedule import ProbeSchedule
from naggs_lightning.callbacks.spike import SpikeDetector

__all__ = [
    "CollapseDetector",
    "Decision",
    "Detector",
    "EdgeOfStabilityDetector",
    "GammaMonitor",
    "LrCap",
    "NonFiniteLossDetector",
    "Observation",
    "OscillationDetector",
    "ProbeSchedule",
    "SpectralStabilityMonitor",
    "SpikeDetector",
    "StabilityWarning",
    "TheoryLRFinder",
    "default_detectors",
]
