"""naggs_lightning: the NAG-GS optimizer for PyTorch Lightning, with the theory that says which step is stable.

Public API:

* :class:`NAGGS`, :class:`AdaNAGGS` (NAG-GS in Adam's diagonal metric) and the :class:`AccSGD` baseline:
  ``torch.optim.Optimizer`` classes.
* :mod:`naggs_lightning.theory`: closed forms (optimal and critical step, spectral radius, ...).
* :mod:`naggs_lightning.curvature`: Hessian-vector products and top-eigenvalue estimates.
* :class:`SpectralStabilityMonitor`: a Lightning callback that watches the iteration's stability.
* :func:`suggest_lr` and the :class:`TheoryLRFinder` callback: the theory's step for a model in one call.
* :class:`GammaMonitor`: logs gamma and mu per parameter group (LearningRateMonitor-style keys).
* :mod:`naggs_lightning.lr`: the theory's step for a model (warm-up, measured seed), without Optuna.
* :mod:`naggs_lightning.tune` (``naggs-tune``) and :mod:`naggs_lightning.cli` (``naggs-train``), both built on
  :mod:`naggs_lightning.lightning_cli`.

The names are imported on first use (PEP 562): ``import naggs_lightning.tune.cli`` does not import torch,
so the console scripts own Ctrl-C from their first line on, before the heavy imports start.
"""

from naggs_lightning._lazy import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS = {
    "NAGGS": "naggs_lightning.optim",
    "AccSGD": "naggs_lightning.optim",
    "AdaNAGGS": "naggs_lightning.optim",
    "GammaMonitor": "naggs_lightning.callbacks",
    "SpectralStabilityMonitor": "naggs_lightning.callbacks",
    "StabilityWarning": "naggs_lightning.callbacks",
    "TheoryLRFinder": "naggs_lightning.callbacks",
    "estimate_bottom_eigenvalue": "naggs_lightning.curvature",
    "estimate_top_eigenvalue": "naggs_lightning.curvature",
    "suggest_lr": "naggs_lightning.lr",
}
_SUBMODULES = ("curvature", "theory")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBMODULES)
