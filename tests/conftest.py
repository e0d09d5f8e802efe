"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite's models are tiny: one intra-op thread is faster than several and immune to a busy
    machine's oversubscription (subprocesses are started with OMP_NUM_THREADS=1 for the same reason)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quiet_trainer() -> Callable[..., pl.Trainer]:
    """``quiet_trainer(**overrides)`` builds a Trainer with no logger, no checkpoints, no progress bar and no
    model summary, then the test's own settings (``overrides`` win, e.g. ``logger=CSVLogger(...)``).

    One place for the settings that keep test output and disk clean, instead of a copy in every test file.
    The accelerator is left to each test. Session-scoped (it holds no state) so module-scoped fixtures can
    use it too. Subprocess scripts and DDP workers cannot request fixtures and set these themselves.
    """

    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)

    def make(**overrides) -> pl.Trainer:
        return pl.Trainer(**{**quiet, **overrides})

    return make
