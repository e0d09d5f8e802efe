"""One trial: build model, data and trainer for a point of the search space, train, report, prune.

Two ways to build a trial share one interface (:class:`TrialBuilder`):

* :class:`ConfigBuilder`: a LightningCLI config (the recipes) with the trial's values set at their
  dotted paths, instantiated by :func:`naggs_lightning.lightning_cli.build_cli` (``run=False``);
* :class:`FactoryBuilder`: the Python API, a ``model_factory(params)`` and a datamodule.

:class:`TrialCallback` reports the validation metric to Optuna after every validation run, asks the
pruner, and stops a run whose training loss or metric stops being finite. It never raises inside
``fit``: it sets ``trainer.should_stop`` and records why, and :class:`Objective` raises
:class:`optuna.TrialPruned` after ``fit`` returns. Only global rank zero talks to the trial (and so to
the storage); the pruning decision is broadcast, so under DDP every rank stops at the same step.
"""

from __future__ import annotations

import atexit
import inspect
import math
import os
import re
import signal
import socket
from argparse import ArgumentError
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from optuna.trial import TrialState

from naggs_lightning._checks import all_finite
from naggs_lightning.callbacks import SpectralStabilityMonitor
from naggs_lightning.callbacks.collapse import CollapseDetector
from naggs_lightning.callbacks.report import METRIC_PREFIX
from naggs_lightning.tune.config import get_path, with_params
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.interrupts import Interrupted, InterruptGuard, StopOnInterrupt, kill_process_trees
from naggs_lightning.tune.keys import COLLAPSED, PRUNED_REASON, RETRY_OF, SEEDED, SURPLUS, WORKER, WORLD_SIZE
from naggs_lightning.tune.run_length import expected_validations
from naggs_lightning.tune.space import SearchSpace
from naggs_lightning.tune.trial_outputs import (
    TRIAL_TRAINER_SETTINGS,
    TrialDir,
    TrialHparams,
    TrialTrainer,
    class_of,
)
from naggs_lightning.tune.trials import trial_counts

__all__ = [
    "TrialParts",
    "TrialBuilder",
    "ConfigBuilder",
    "FactoryBuilder",
    "TrialCallback",
    "Objective",
    "SurplusTrial",
    "metric_not_logged",
]


@dataclass
class TrialParts:
    model: LightningModule
    datamodule: LightningDataModule | None
    trainer: Trainer


class TrialBuilder(Protocol):
    def build(
        self, params: Mapping[str, Any], callbacks: Sequence[Callback] = (), trial: TrialDir | None = None
    ) -> TrialParts:
        """Model, data and trainer for one point of the search space, with extra trainer callbacks, writing its
        logs and checkpoints to ``trial``'s folder (``None``: the study's check of the config, which writes nothing)."""

    def configured(self, name: str) -> Any:
        """The value the user's configuration gives parameter ``name`` (``None`` if it gives none)."""

    def best_config(self, params: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """A LightningCLI config that trains the point ``params`` with ``naggs-train fit``, or ``None`` and why not."""


class ConfigBuilder:
    """Builds trials from a LightningCLI config dict through :func:`naggs_lightning.lightning_cli.build_cli`.

    The trainer section is the config's, with the changes of :class:`~naggs_lightning.tune.trial_outputs.TrialTrainer`
    (checked here: a callback that cannot work in a trial raises :class:`TuneError`).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        from naggs_lightning.lightning_cli import unimportable_class_path

        self.config = dict(config)
        problem = unimportable_class_path(self.config)
        if problem is not None:
            raise TuneError(problem)
        TrialTrainer(self.config.get("trainer"))  # refuses a callback that cannot work in a trial, now

    def configured(self, name: str) -> Any:
        """The config's value, else the default of the configured class's argument (``optimizer.init_args.mu``
        of a config that names ``class_path: naggs_lightning.AdaNAGGS`` alone is AdaNAGGS's default mu)."""
        value = get_path(self.config, name)
        root, _, arg = name.rpartition(".init_args.")
        if value is not None or not root:
            return value
        return _class_default(get_path(self.config, f"{root}.class_path"), arg)

    def build(
        self, params: Mapping[str, Any], callbacks: Sequence[Callback] = (), trial: TrialDir | None = None
    ) -> TrialParts:
        # The LightningCLI imports every shipped task (for the short class names): only config mode needs it.
        from naggs_lightning.lightning_cli import build_cli

        config = with_params(self.config, params)
        config["trainer"] = TrialTrainer(config.get("trainer")).section(trial)
        try:
            cli = build_cli(config, run=False, save_config_callback=None, parser_kwargs={"exit_on_error": False})
        except ArgumentError as exc:
            raise TuneError(_config_message(_parser_problem(str(exc)), params)) from None
        except Exception as exc:
            raise TuneError(_config_message(f"{type(exc).__name__}: {exc}", params)) from exc
        cli.trainer.callbacks.extend(callbacks)
        return TrialParts(cli.model, cli.datamodule, cli.trainer)

    def best_config(self, params: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        return with_params(self.config, params), "the recipe with the best values set"


def _class_default(class_path: Any, arg: str) -> Any:
    """The default of ``arg`` in the ``__init__`` of the class at the dotted ``class_path`` (``None`` if none)."""
    cls = class_of(class_path, ())
    try:
        default = inspect.signature(cls).parameters[arg].default if cls is not None else None
    except (KeyError, TypeError, ValueError):
        return None
    return None if default is inspect.Parameter.empty else default


# Lines of a jsonargparse error that repeat the schema instead of naming the problem.
_PARSER_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:"
    r"|Expected a <class 'NoneType'>|Given value)"
)


def _parser_problem(message: str) -> str:
    lines = (line.strip().lstrip("-").strip() for line in message.splitlines())
    return " ".join(line for line in lines if line and not _PARSER_NOISE.match(line))


def _config_message(detail: str, params: Mapping[str, Any]) -> str:
    detail = " ".join(detail.split())
    for name in params:  # name the search-space parameter the parser complains about, if it is one
        leaf = name.rsplit(".", 1)[-1]
        if name in detail or f"'{leaf}'" in detail or f'"{leaf}"' in detail:
            return f"parameter {name!r} does not fit the config: {detail}"
    return f"invalid config: {detail}"


class FactoryBuilder:
    """Builds trials from ``model_factory(params) -> LightningModule`` and a datamodule.

    ``datamodule`` is an instance (reused by every trial) or a callable ``params -> datamodule``
    (for searched batch sizes); ``None`` when the model brings its own dataloaders.
    ``trainer_kwargs`` go to :class:`~lightning.pytorch.Trainer` as given (callback and logger objects are
    shared by every trial) on top of :data:`~naggs_lightning.tune.trial_outputs.TRIAL_TRAINER_SETTINGS`, no
    logger, checkpointing only with a ModelCheckpoint among the callbacks, and the trials' folder as
    ``default_root_dir``.
    """

    def __init__(
        self,
        model_factory: Callable[[dict[str, Any]], LightningModule],
        datamodule: LightningDataModule | Callable[[dict[str, Any]], LightningDataModule] | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(model_factory):
            raise TuneError(f"model must be a callable params -> LightningModule, got {model_factory!r}")
        self.model_factory = model_factory
        self.datamodule = datamodule
        self.trainer_kwargs = dict(trainer_kwargs or {})

    def configured(self, name: str) -> Any:
        return None

    def build(
        self, params: Mapping[str, Any], callbacks: Sequence[Callback] = (), trial: TrialDir | None = None
    ) -> TrialParts:
        model = self.model_factory(dict(params))
        if not isinstance(model, LightningModule):
            raise TuneError(f"the model factory returned {type(model).__name__}, not a LightningModule")
        dm = self.datamodule
        if dm is not None and not isinstance(dm, LightningDataModule):
            dm = dm(dict(params))
        own = self.trainer_kwargs.get("callbacks") or []
        own = list(own) if isinstance(own, (list, tuple)) else [own]
        kwargs = {
            **TRIAL_TRAINER_SETTINGS,
            "logger": False,
            "enable_checkpointing": any(isinstance(cb, ModelCheckpoint) for cb in own),
            **({} if trial is None else {"default_root_dir": trial.root}),
            **self.trainer_kwargs,
        }
        kwargs["callbacks"] = [*own, *callbacks]
        return TrialParts(model, dm, Trainer(**kwargs))

    def best_config(self, params: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The factory's model (and datamodule) for ``params`` as ``class_path`` + ``init_args``.

        Possible when each class is importable by name (not defined in ``__main__`` or a function) and
        its ``hparams`` (``self.save_hyperparameters()`` in ``__init__``) hold every argument its
        constructor needs; the result is checked by building it with :func:`naggs_lightning.lightning_cli.build_cli`.
        Trainer arguments that are not plain values (callback objects, ...) are left out.
        """
        from naggs_lightning.lightning_cli import build_cli

        model = self.model_factory(dict(params))
        dm = self.datamodule
        if dm is not None and not isinstance(dm, LightningDataModule):
            dm = dm(dict(params))
        config: dict[str, Any] = {}
        for section, obj in (("model", model), ("data", dm)):
            if obj is None:
                continue
            entry, problem = _as_class_path(obj)
            if entry is None:
                return None, problem
            config[section] = entry
        plain = {k: v for k, v in self.trainer_kwargs.items() if _plain(v)}
        left_out = sorted(set(self.trainer_kwargs) - set(plain))
        config["trainer"] = plain
        try:
            build_cli(config, run=False, save_config_callback=None, parser_kwargs={"exit_on_error": False})
        except Exception as exc:
            detail = " ".join(_parser_problem(str(exc)).split())
            return None, f"the model's class_path and hparams do not build it: {detail}"
        note = "the factory's model" + (" and datamodule" if dm is not None else "") + " with their hparams"
        if left_out:
            note += f"; trainer arguments left out (not plain values): {', '.join(left_out)}"
        return config, note


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _as_class_path(obj: Any) -> tuple[dict[str, Any] | None, str]:
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None, f"{cls.__qualname__} is defined in {cls.__module__} (a script or a function): move it to a module"
    signature = inspect.signature(cls.__init__).parameters.values()
    accepted = {p.name for p in signature if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature)
    # A parent class's save_hyperparameters() leaves its own arguments in hparams too: keep the constructor's.
    hparams = {k: v for k, v in dict(getattr(obj, "hparams", {}) or {}).items() if takes_any or k in accepted}
    required = [p.name for p in signature if p.name in accepted and p.default is p.empty]
    missing = [p for p in required if p not in hparams]
    if missing:
        return (
            None,
            f"{name} needs {', '.join(missing)}, not in its hparams: call self.save_hyperparameters() in __init__",
        )
    if not _plain(hparams):
        return None, f"{name}'s hparams are not plain values (numbers, strings, lists)"
    return {"class_path": name, "init_args": hparams}, ""


def metric_not_logged(metric: str, logged: Iterable[str]) -> TuneError:
    """The error for a validation metric the model does not log, listing the keys it does log (the
    stability monitor's own left out)."""
    shown = sorted(k for k in logged if not k.startswith(METRIC_PREFIX))
    return TuneError(f"the metric {metric!r} is not logged during validation; logged: {shown or 'nothing'}")


class TrialCallback(Callback):
    """Report ``monitor`` to the trial after each validation run; prune; stop diverging runs.

    After ``fit``, :attr:`reason` is ``None`` for a run that went to the end, else why it stopped:
    the pruner's decision, or divergence (a non-finite training loss or validation metric).
    The step reported to Optuna counts validation runs (epochs, unless ``val_check_interval`` asks
    for more than one per epoch). The pruner is not asked at the validation that ends the run: stopping there
    saves no training, and a pruned trial's value is lost to the study (on the panel of user models the median
    pruner had stopped 6 of the CNN's 48 sampled trials there, at 0.970-0.982, so they never counted as finished).

    A run whose training loss is still collapsed at the end (the
    :class:`~naggs_lightning.callbacks.collapse.CollapseDetector`'s rule: it left its initial value, came back to
    it and stays there) is marked with the user attribute :data:`~naggs_lightning.tune.keys.COLLAPSED`; a seeded
    study caps its later steps below it (:func:`~naggs_lightning.tune.ceiling.capped`).

    Only global rank zero talks to the trial (and so to the storage); a decision to stop is broadcast,
    so every rank of a DDP trial stops at the same step. The reason is also stored in the trial's user
    attribute :data:`~naggs_lightning.tune.keys.PRUNED_REASON`: under ``ddp_spawn`` the ranks run in
    processes of their own and this object's :attr:`reason` never reaches the process that runs the
    study, which reads the storage instead (:func:`stop_reason`). A
    :class:`~naggs_lightning.callbacks.SpectralStabilityMonitor` of the trainer that stopped the run
    (``on_unstable="stop"``) is read at the end of training on each rank and its reason stored the same way.
    (optuna-integration's
    ``PyTorchLightningPruningCallback`` shares its decision through the storage the same way, but
    raises inside ``fit`` on one process, warns instead of failing when the metric is missing, counts
    epochs rather than validations and knows nothing of divergence: this callback replaces it, and the
    package does not depend on optuna-integration.)
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.reason: str | None = None
        self._validations = 0
        self._collapse = CollapseDetector()
        self._collapsed: str | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial.set_user_attr(WORLD_SIZE, trainer.world_size)
        if trainer.world_size > 1:
            atexit.register(_destroy_process_group)

    def _stop(self, trainer: Trainer, reason: str) -> None:
        self.reason = reason
        trainer.should_stop = True
        if trainer.is_global_zero:
            self.trial.set_user_attr(PRUNED_REASON, reason)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and self._collapse.diverging:  # still collapsed at the end
            self.trial.set_user_attr(COLLAPSED, self._collapsed)
        # A SpectralStabilityMonitor that stopped the run: its reason lives in this process (a rank's, under
        # ddp_spawn), so rank zero stores it where the study's process reads it (:func:`stop_reason`).
        if self.reason is None and (reason := _monitor_stop(trainer)) is not None:
            self.reason = reason
            if trainer.is_global_zero:
                self.trial.set_user_attr(PRUNED_REASON, reason)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.reason is not None or not isinstance(loss, torch.Tensor):
            return
        bad = not all_finite(loss)
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop(trainer, f"diverged: the training loss is not finite at step {trainer.global_step}")
        elif trainer.is_global_zero and loss.numel() == 1:  # only rank zero writes the mark
            collapsed, reason = self._collapse.check(float(loss))
            if collapsed:
                self._collapsed = reason

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.reason is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise metric_not_logged(self.monitor, trainer.callback_metrics)
        value = float(value)
        step = self._validations
        self._validations += 1
        if not math.isfinite(value):
            self._stop(trainer, f"diverged: {self.monitor} = {value} at validation {step}")
            return
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, step=step)
            prune = not self._ends_run(trainer, step) and self.trial.should_prune()
        if trainer.strategy.broadcast(prune):
            pruner = type(self.trial.study.pruner).__name__
            self._stop(trainer, f"pruned by {pruner} at validation {step}: {self.monitor} = {value:.6g}")

    @staticmethod
    def _ends_run(trainer: Trainer, step: int) -> bool:
        """Whether validation ``step`` is the run's last: its step limit is reached, or its planned validations."""
        if trainer.max_steps not in (-1, None) and trainer.global_step >= trainer.max_steps:
            return True
        planned = expected_validations(trainer)
        return planned is not None and step >= planned - 1


def _destroy_process_group() -> None:
    """Tear a rank's process group down before the interpreter does. Lightning does so only for NCCL; a gloo group
    left to interpreter shutdown can abort the rank ("terminate called without an active exception") while rank zero
    still saves its results, and the trial then fails instead of ending as it did (seen once in CI, on a trial the
    monitor stopped at its first step)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _monitor_stop(trainer: Trainer) -> str | None:
    """Why a :class:`SpectralStabilityMonitor` ended the run (its :attr:`~SpectralStabilityMonitor.stop_reason`)."""
    for cb in trainer.callbacks:
        if isinstance(cb, SpectralStabilityMonitor) and cb.stop_reason is not None:
            return f"diverging: stopped by SpectralStabilityMonitor ({cb.stop_reason})"
    return None


class SurplusTrial(Exception):
    """A worker's trial that would take the study past ``n_trials`` (a race between workers)."""


class Objective:
    """The Optuna objective: one trial of the search space, trained to the end or pruned.

    Returns the last value of ``metric`` logged in validation. Pruned, diverging and
    monitor-stopped runs raise :class:`optuna.TrialPruned` with the reason, also stored in the
    trial's user attribute :data:`~naggs_lightning.tune.keys.PRUNED_REASON`.

    Each trial writes its logs and checkpoints under ``trials_dir`` (``<output_dir>/trials``;
    :mod:`~naggs_lightning.tune.trial_outputs`); with ``None`` it keeps no logger.

    A Ctrl-C (:class:`~naggs_lightning.tune.interrupts.Interrupted`) during training fails the trial
    (never leaving it RUNNING) and queues its point again for the next run.

    With ``n_trials`` set, the objective first checks that fewer than ``n_trials`` earlier trials are
    finished or running; otherwise two workers asked for a trial at the same instant near the end, and
    this one raises :class:`SurplusTrial` (the trial ends as failed without training, which does not
    count towards ``n_trials``).
    """

    def __init__(
        self,
        builder: TrialBuilder,
        space: SearchSpace,
        metric: str,
        *,
        n_trials: int | None = None,
        guard: InterruptGuard | None = None,
        trials_dir: Path | None = None,
    ) -> None:
        self.builder = builder
        self.trials_dir = trials_dir
        self.space = space
        self.metric = metric
        self.n_trials = n_trials
        self.guard = guard or InterruptGuard()

    def __call__(self, trial: optuna.trial.Trial) -> float:
        try:
            with self.guard.deferred():  # the trial's parameters are in the storage before a Ctrl-C can land
                if self.n_trials is not None and sum(trial_counts(trial.study, below=trial.number)) >= self.n_trials:
                    trial.set_user_attr(SURPLUS, True)
                    raise SurplusTrial(f"the study already has {self.n_trials} trials")
                trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
                params = self.space.suggest(trial)
            with self.guard.allowed():
                return self._train(trial, params)
        except Interrupted:
            _queue_again(trial)
            # Optuna records a trial that raised KeyboardInterrupt as FAIL, then re-raises it.
            raise KeyboardInterrupt from None

    def _train(self, trial: optuna.trial.Trial, params: dict[str, Any]) -> float:
        watcher = TrialCallback(trial, self.metric)
        where = None if self.trials_dir is None else TrialDir(self.trials_dir, trial.number)
        callbacks = [watcher, StopOnInterrupt(self.guard), TrialHparams(trial.number, params)]
        parts = self.builder.build(params, callbacks, where)
        try:
            parts.trainer.fit(parts.model, datamodule=parts.datamodule)
        except Interrupted:
            _stop_ranks(parts.trainer)
            raise
        reason = watcher.reason or stop_reason(trial) or _monitor_stop(parts.trainer)
        value = parts.trainer.callback_metrics.get(self.metric)
        if reason is None and value is None:
            raise TuneError(f"the metric {self.metric!r} was never logged: does the trainer run validation?")
        if reason is None and not math.isfinite(float(value)):
            reason = f"diverged: final {self.metric} = {float(value)}"
        if reason is not None:
            trial.set_user_attr(PRUNED_REASON, reason)
            raise optuna.TrialPruned(reason)
        return float(value)


def stop_reason(trial: optuna.trial.Trial) -> str | None:
    """Why the trial's run stopped early, as its rank zero stored it (None: it ran to the end).

    Read from the storage: under ``ddp_spawn`` the callback that decided lived in another process.
    """
    for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            return frozen.user_attrs.get(PRUNED_REASON)
    return None


def _stop_ranks(trainer: Trainer) -> None:
    """Ctrl-C during a ``ddp_spawn`` fit: the rank processes would train on; end them and what they started."""
    launcher = trainer.strategy.launcher
    if trainer.world_size <= 1 or launcher is None:
        return
    procs = getattr(launcher, "procs", None)  # the rank processes of Lightning's _MultiProcessingLauncher
    if procs is None:
        launcher.kill(signal.SIGKILL)
        return
    kill_process_trees(proc.pid for proc in procs if proc.is_alive())
    for proc in procs:
        proc.join(timeout=10)  # reaped now, not left as zombies while the study's process lives on


def _queue_again(trial: optuna.trial.Trial) -> None:
    """Queue an interrupted trial's point again, so the next run trains it (a seeded trial stays seeded)."""
    attrs: dict[str, Any] = {RETRY_OF: trial.number}
    if trial.user_attrs.get(SEEDED):
        attrs[SEEDED] = True
    trial.study.enqueue_trial(trial.params, user_attrs=attrs)
