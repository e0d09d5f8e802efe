"""The Trainer the benchmarks build: no logger, checkpoints, progress bar or model summary, which would be
timed (or printed) with what a benchmark measures."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A :class:`~lightning.pytorch.Trainer` with ``kwargs`` and nothing written or shown besides."""
    return pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
    )
