"""The user's callbacks and logger inside trials: where each trial writes, and what cannot run in a trial.

A trial trains with the trainer section of the config as written, with these changes (config mode):

* loggers: each logger's ``save_dir`` is ``<output_dir>/trials``; :class:`~lightning.pytorch.loggers.CSVLogger`
  and :class:`~lightning.pytorch.loggers.TensorBoardLogger` (and their subclasses) also get
  ``version: trial_<number>``, so ``tensorboard --logdir <output_dir>/trials`` shows one run per trial. Every
  logger receives the trial's parameters and number as hyper-parameters (:class:`TrialHparams`).
  ``logger: true`` is Lightning's default logger (TensorBoard when installed, else CSV), redirected the same way.
  A config that names no logger keeps none, unless a callback needs one (:data:`NEEDS_LOGGER`): then the trial
  gets Lightning's default logger, as ``naggs-train fit`` would.
* checkpoints: a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` writes to
  ``<output_dir>/trials/checkpoints/trial_<number>``, and only the best trial's folder is kept
  (:func:`keep_best_checkpoints`); a config without one keeps ``enable_checkpointing: false``.
* progress bars and model summaries are dropped: the tuner prints one line per trial.
* refused before anything is written (:class:`TuneError`, one line): a callback that needs a logger under
  ``logger: false``, and a learning-rate finder (it would replace the alpha each trial is given).

``best.yaml`` is written from the config as the user wrote it, never from these changes.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import (
    DeviceStatsMonitor,
    LearningRateFinder,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from optuna.trial import TrialState

from naggs_lightning.callbacks import GammaMonitor, TheoryLRFinder
from naggs_lightning.tune.errors import TuneError

__all__ = [
    "TRIAL_TRAINER_SETTINGS",
    "NEEDS_LOGGER",
    "TrialDir",
    "TrialTrainer",
    "TrialHparams",
    "keep_best_checkpoints",
]

#: Trainer settings every trial runs with: the tuner shows its own progress.
TRIAL_TRAINER_SETTINGS: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}

#: Callbacks that log through the trainer's logger (Lightning refuses them on a trainer without one).
NEEDS_LOGGER: tuple[type[Callback], ...] = (LearningRateMonitor, GammaMonitor, DeviceStatsMonitor)

#: Callbacks that set the learning rate when training starts, replacing the alpha the trial is given.
_SETS_THE_LR: tuple[type[Callback], ...] = (LearningRateFinder, TheoryLRFinder)

#: Callbacks whose output is the tuner's job (and that Lightning refuses with progress bar / summary off).
_DROPPED: tuple[type[Callback], ...] = (ProgressBar, ModelSummary)

#: Loggers whose ``version`` names their folder under ``save_dir/name``.
_VERSIONED: tuple[type, ...] = (CSVLogger, TensorBoardLogger)

_CALLBACK_MODULES = ("lightning.pytorch.callbacks", "naggs_lightning.callbacks")
_LOGGER_MODULES = ("lightning.pytorch.loggers",)
_CHECKPOINT_PATH = "lightning.pytorch.callbacks.ModelCheckpoint"


@dataclass(frozen=True)
class TrialDir:
    """Where trial ``number`` of a study writes: ``root`` is ``<output_dir>/trials``, shared by its trials."""

    root: Path
    number: int

    @property
    def version(self) -> str:
        """The logger version (folder) of the trial."""
        return f"trial_{self.number}"

    @property
    def checkpoints(self) -> Path:
        """The trial's ModelCheckpoint folder."""
        return self.root / "checkpoints" / self.version


def class_of(entry: Any, modules: Sequence[str]) -> type | None:
    """The class a config entry (``class_path`` string or mapping) names; ``None`` when it cannot be imported
    here (LightningCLI then reports it when the trial is built)."""
    path = entry.get("class_path") if isinstance(entry, Mapping) else entry
    if not isinstance(path, str):
        return None
    module, _, name = path.rpartition(".")
    for candidate in [module] if module else modules:
        try:
            found = getattr(importlib.import_module(candidate), name, None)
        except ImportError:
            continue
        if isinstance(found, type):
            return found
    return None


def _entries(value: Any) -> list[Any]:
    """A ``callbacks`` / ``logger`` value as a list of entries (the trainer takes one object or a list)."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _as_mapping(entry: Any) -> dict[str, Any]:
    return {"class_path": entry} if isinstance(entry, str) else copy.deepcopy(dict(entry))


def _with_init_args(entry: Any, **init_args: Any) -> dict[str, Any]:
    out = _as_mapping(entry)
    out["init_args"] = {**(out.get("init_args") or {}), **init_args}
    return out


def _default_logger() -> dict[str, Any]:
    """Lightning's default logger (``logger: true``), as a config entry; the same choice as its logger connector."""
    cls = TensorBoardLogger if (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE) else CSVLogger
    return {"class_path": f"{cls.__module__}.{cls.__name__}"}


class TrialTrainer:
    """The trainer section of a trial, from the config's: loggers and checkpoints redirected into the trial's folder.

    Made once per study from the user's trainer section; raises :class:`TuneError` (before any study is
    touched) for a callback that cannot work inside a trial. See the module docstring for each rule.
    """

    def __init__(self, trainer: Mapping[str, Any] | None) -> None:
        self.trainer = dict(trainer or {})
        callbacks = _entries(self.trainer.get("callbacks"))
        classes = [class_of(entry, _CALLBACK_MODULES) for entry in callbacks]
        logger = self.trainer.get("logger")
        needing = [cls.__name__ for cls in classes if cls is not None and issubclass(cls, NEEDS_LOGGER)]
        if needing and logger is False:
            raise TuneError(
                f"trainer.callbacks: {needing[0]} logs through the trainer's logger and the config sets "
                "trainer.logger: false; name a logger (trials log to <output_dir>/trials) or remove the callback"
            )
        for cls in classes:
            if cls is not None and issubclass(cls, _SETS_THE_LR):
                raise TuneError(
                    f"trainer.callbacks: {cls.__name__} sets the learning rate when training starts, replacing the "
                    "alpha each trial is given; remove it (naggs-tune seeds alpha from the same theory)"
                )
        kept = [(e, c) for e, c in zip(callbacks, classes, strict=True) if c is None or not issubclass(c, _DROPPED)]
        self.callbacks = kept
        if logger is True or (logger is None and needing):
            self.loggers: list[Any] = [_default_logger()]
        else:
            self.loggers = _entries(logger)
        named = any(c is not None and issubclass(c, ModelCheckpoint) for _, c in self.callbacks)
        if not named and self.trainer.get("enable_checkpointing") is True:
            self.callbacks.append(({"class_path": _CHECKPOINT_PATH}, ModelCheckpoint))
            named = True
        self.checkpoints = named

    def section(self, trial: TrialDir | None) -> dict[str, Any]:
        """The trainer section for ``trial``; ``None`` (the study's first check of the config) writes nothing."""
        callbacks = [
            _with_init_args(entry, dirpath=str(trial.checkpoints))
            if trial is not None and cls is not None and issubclass(cls, ModelCheckpoint)
            else entry
            for entry, cls in self.callbacks
        ]
        return {
            **self.trainer,
            **TRIAL_TRAINER_SETTINGS,
            "callbacks": callbacks,
            "enable_checkpointing": self.checkpoints,
            "logger": False if trial is None or not self.loggers else [self._logger(e, trial) for e in self.loggers],
        }

    @staticmethod
    def _logger(entry: Any, trial: TrialDir) -> dict[str, Any]:
        cls = class_of(entry, _LOGGER_MODULES)
        accepted = inspect.signature(cls).parameters if cls is not None else {}
        redirect: dict[str, Any] = {}
        if "save_dir" in accepted:
            redirect["save_dir"] = str(trial.root)
        if cls is not None and issubclass(cls, _VERSIONED):
            redirect["version"] = trial.version
        return _with_init_args(entry, **redirect)


class TrialHparams(Callback):
    """Log the trial's number and parameters as hyper-parameters to every logger of the trial's trainer."""

    def __init__(self, number: int, params: Mapping[str, Any]) -> None:
        self.hparams = {"trial": number, **params}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.hparams)


def keep_best_checkpoints(study: optuna.Study, root: Path) -> None:
    """Delete the checkpoint folder of every finished trial under ``root`` but the best complete one."""
    folder = root / "checkpoints"
    if not folder.is_dir():
        return
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial.number if complete else None
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for path in folder.glob("trial_*"):
        number = path.name.removeprefix("trial_")
        if not number.isdigit() or int(number) == best:
            continue
        if states.get(int(number)) in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            shutil.rmtree(path, ignore_errors=True)
