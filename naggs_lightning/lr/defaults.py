"""Defaults of the curvature measurement, shared by :mod:`naggs_lightning.lr`, ``TheoryLRFinder`` and
``naggs-tune``'s options (this module imports nothing, so the options read them without torch)."""

from __future__ import annotations

__all__ = ["BRACKET_FACTORS", "BRACKET_STEPS", "CURVATURE_BATCHES", "WARMUP_STEPS"]

#: Default warm-up length in optimizer steps: on the design tasks (a deep digits CNN, a 1-D signal CNN)
#: the top eigenvalue rose 10-30x within the first 40-60 steps.
WARMUP_STEPS = 60
#: Default number of batches read after the warm-up (the largest top eigenvalue is kept).
CURVATURE_BATCHES = 2
#: Multiples of the theory's step that ``suggest_lr``'s bracket tries (see :mod:`naggs_lightning.lr.bracket`).
BRACKET_FACTORS = (1.0, 2.0, 4.0)
#: Steps of each bracket run: collapses past the best step showed within a few dozen steps.
BRACKET_STEPS = 40
