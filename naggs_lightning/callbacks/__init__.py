"""Lightning callbacks that watch NAG-GS (and other optimizers) for divergence while a model trains.

:class:`SpectralStabilityMonitor` is a thin callback composing small detectors, each with its own state
and a decision method returning ``(should_act, reason)``: :mod:`~naggs_lightning.callbacks.non_finite`,
:mod:`~naggs_lightning.callbacks.spike`, :mod:`~naggs_lightning.callbacks.oscillation`,
:mod:`~naggs_lightning.callbacks.edge` (edge of stability against divergence) and
:mod:`~naggs_lightning.callbacks.lr_cap`; :mod:`~naggs_lightning.callbacks.groups` reads each param group's
edge from the theory.
"""

from naggs_lightning.callbacks.edge import EdgeOfStabilityDetector
from naggs_lightning.callbacks.gamma_monitor import GammaMonitor
from naggs_lightning.callbacks.lr_cap import LrCap
from naggs_lightning.callbacks.lr_finder import TheoryLRFinder
from naggs_lightning.callbacks.monitor import SpectralStabilityMonitor
from naggs_lightning.callbacks.non_finite import NonFiniteLossDetector
from naggs_lightning.callbacks.oscillation import OscillationDetector
from naggs_lightning.callbacks.report import StabilityWarning
from naggs_lightning.callbacks.spike import SpikeDetector

__all__ = [
    "EdgeOfStabilityDetector",
    "GammaMonitor",
    "LrCap",
    "NonFiniteLossDetector",
    "OscillationDetector",
    "SpectralStabilityMonitor",
    "SpikeDetector",
    "StabilityWarning",
    "TheoryLRFinder",
]
