"""naggs_lightning: the NAG-GS optimizer for PyTorch Lightning, with the theory that says which step is stable.

Public API:

* :class:`NAGGS` (and the :class:`AccSGD` baseline): ``torch.optim.Optimizer`` classes.
* :mod:`naggs_lightning.theory`: closed forms (optimal and critical step, spectral radius, ...).
* :mod:`naggs_lightning.curvature`: Hessian-vector products and top-eigenvalue estimates.
* :class:`SpectralStabilityMonitor`: a Lightning callback that watches the iteration's stability.
* :func:`suggest_lr` and the :class:`TheoryLRFinder` callback: the theory's step for a model in one call.
* :class:`GammaMonitor`: logs gamma and mu per parameter group (LearningRateMonitor-style keys).
* :mod:`naggs_lightning.tune` (``naggs-tune``) and :mod:`naggs_lightning.cli` (``naggs-train``).
"""

from naggs_lightning import curvature, theory
from naggs_lightning.callbacks import SpectralStabilityMonitor, StabilityWarning
from naggs_lightning.curvature import estimate_bottom_eigenvalue, estimate_top_eigenvalue
from naggs_lightning.gamma_monitor import GammaMonitor
from naggs_lightning.optim import NAGGS, AccSGD
from naggs_lightning.suggest import TheoryLRFinder, suggest_lr

__all__ = [
    "NAGGS",
    "AccSGD",
    "GammaMonitor",
    "SpectralStabilityMonitor",
    "StabilityWarning",
    "TheoryLRFinder",
    "curvature",
    "estimate_bottom_eigenvalue",
    "estimate_top_eigenvalue",
    "suggest_lr",
    "theory",
]
__version__ = "0.1.0"
