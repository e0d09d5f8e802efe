"""Run a theory-seeded study: open or resume it, seed it, drive the workers, report.

Order of work in :func:`run`, chosen so that bad input never damages a study:

1. check the options (:class:`~naggs_lightning.tune.options.TuneOptions`), parse the search space,
   build one configuration (the recipe at its configured values) and run one validation batch of it:
   a malformed config, an unknown parameter or a metric the model does not log fails here, before
   any storage is touched;
2. connect to the storage (an unreachable URL fails here);
3. if the study exists, resume it: check that it was made with the same config, search space,
   metric and direction, and reuse its curvature estimate and seed (nothing is estimated or
   enqueued again); otherwise estimate the curvature, compute the seed, *then* create the study,
   enqueue the seeded trial(s) and store the estimate, the seed and the space in the study's user
   attributes (:mod:`~naggs_lightning.tune.keys`); a study that fails half-made is deleted again;
4. run trials until the study holds ``n_trials`` finished (complete or pruned) trials, counted over
   every worker on the storage, or until ``timeout``;
5. print the table of top trials, write ``best_params.yaml``, ``best.yaml`` and the plots.

A Ctrl-C at any step ends the run with :class:`KeyboardInterrupt`; a trial that was training ends
FAIL and its point is queued again (:mod:`~naggs_lightning.tune.interrupts`).

Step 3 lives in :mod:`~naggs_lightning.tune.opening` and :mod:`~naggs_lightning.tune.seeding`, step 4
in :mod:`~naggs_lightning.tune.workers`, step 5's writing in :mod:`~naggs_lightning.tune.report`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from rich.console import Console

from naggs_lightning.lr.measure import naggs_hyperparameters
from naggs_lightning.tune.config import ConfigSource, load_config
from naggs_lightning.tune.errors import TuneError, reported_as_tune_error
from naggs_lightning.tune.interrupts import Interrupted, InterruptGuard
from naggs_lightning.tune.objective import (
    ConfigBuilder,
    FactoryBuilder,
    Objective,
    TrialBuilder,
    TrialParts,
    metric_not_logged,
)
from naggs_lightning.tune.opening import config_fingerprint, open_study
from naggs_lightning.tune.options import TuneOptions, default_output_dir, default_study_name
from naggs_lightning.tune.pruning import make_pruner
from naggs_lightning.tune.report import Reporter, results_table, write_best, write_plots
from naggs_lightning.tune.run_length import expected_validations
from naggs_lightning.tune.seeding import seed_new_study
from naggs_lightning.tune.space import DEFAULT_RANGES, SearchSpace
from naggs_lightning.tune.storage import open_storage, redact
from naggs_lightning.tune.trial_outputs import keep_best_checkpoints
from naggs_lightning.tune.workers import optimize

__all__ = ["run"]


def _sampler(sampler: str | BaseSampler, seed: int | None) -> BaseSampler:
    if isinstance(sampler, BaseSampler):
        return sampler
    if sampler == "tpe":
        return TPESampler(seed=seed)
    if sampler == "random":
        return RandomSampler(seed=seed)
    raise AssertionError(f"TuneOptions admitted the sampler {sampler!r}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence per-trial chatter (Lightning's device banner, Optuna's trial log, data-loader hints).

    The tuner prints its own line per trial; failures still raise.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    verbosity = optuna.logging.get_verbosity()
    for log in loggers:  # "GPU available: ...", "Seed set to 0", once per trial
        log.setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PossibleUserWarning)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # LightningCLI warns when given a config while sys.argv holds naggs-tune's own flags.
            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")
            # study.ask() with a heartbeat storage: this module beats for its trials itself (_Heartbeat).
            warnings.filterwarnings(
                "ignore", message=r"Heartbeat of storage is supposed to be used with Study.optimize"
            )
            # Lightning 2.6 on torch >= 2.10, repeated every trial; nothing a user can act on.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        optuna.logging.set_verbosity(verbosity)


@dataclass
class _Prepared:
    """What step 1 of :func:`run` made: the declared space, its reference point, one built trial."""

    declared: SearchSpace
    reference: dict[str, Any]
    probe: TrialParts


def _options(options: TuneOptions | None, overrides: Mapping[str, Any]) -> TuneOptions:
    if options is None:
        return TuneOptions(**overrides)
    return replace(options, **overrides) if overrides else options


def _builder(
    config: ConfigSource | Sequence[ConfigSource] | None,
    model: Callable[[dict[str, Any]], LightningModule] | None,
    datamodule: Any,
    trainer_kwargs: Mapping[str, Any] | None,
) -> tuple[TrialBuilder, dict[str, Any] | None]:
    if (config is None) == (model is None):
        raise TuneError("give either a config (LightningCLI recipe) or a model factory, not both and not neither")
    if config is not None:
        config_dict = load_config(config)
        return ConfigBuilder(config_dict), config_dict
    return FactoryBuilder(model, datamodule, trainer_kwargs), None


def _check_processes(probe: TrialParts, storage: str | None) -> None:
    """A trial may train on several processes only as ``ddp_spawn`` does, and only with an RDB storage.

    ``strategy: ddp`` starts the other ranks by re-running the command (naggs-tune), and each would run
    a study of its own; ``ddp_spawn`` starts them from inside ``fit``, in the one process that runs the
    study, and its rank zero reports to the trial through the storage.
    """
    trainer = probe.trainer
    if trainer.world_size <= 1:
        return
    strategy = type(trainer.strategy).__name__
    if isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise TuneError(
            f"trials on {trainer.world_size} processes need trainer.strategy: ddp_spawn (strategy {strategy} "
            "re-runs the command on every rank); or run one naggs-tune worker per device on a shared --storage"
        )
    if storage is None:
        raise TuneError(
            f"trials on {trainer.world_size} processes report through the storage: give an RDB storage, not None"
        )


def _check_metric(probe: TrialParts, metric: str) -> None:
    """Run one validation batch of the reference configuration: the metric must be among what it logs.

    A multi-process trainer is replaced by a one-process one on the same accelerator for this check:
    the metric's name does not depend on the number of ranks, and starting them costs seconds.
    """
    trainer = probe.trainer
    if trainer.world_size > 1:
        trainer = Trainer(
            accelerator=trainer.accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    limit = trainer.limit_val_batches
    trainer.limit_val_batches = 1
    try:
        # Starting a DataLoader draws from torch's global generator: fork it, so that the seed's curvature
        # batches (drawn next, from a shuffled loader) are the ones an unchecked run would draw.
        with torch.random.fork_rng(devices=[]):
            trainer.validate(probe.model, datamodule=probe.datamodule, verbose=False)
    except (KeyboardInterrupt, Interrupted):
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise TuneError(f"validating the configuration failed ({type(exc).__name__}: {detail})") from exc
    finally:
        trainer.limit_val_batches = limit
    if metric not in trainer.callback_metrics:
        raise metric_not_logged(metric, trainer.callback_metrics)


def _use_the_models_own(declared: SearchSpace, reference: dict[str, Any], probe: TrialParts) -> SearchSpace:
    """Factory mode: mu and gamma as the model's optimizer has them when the factory does not pass ours on.

    A factory that builds its optimizer with its own mu (or gamma) ignores the trial's value: searching
    it would record values no trial trained with, and seed from a mu the model does not use. Left to its
    default range, such a parameter is pinned at the optimizer's value; named by the user, it is an error.
    """
    hyper = naggs_hyperparameters(probe.model)
    if hyper is None:
        return declared
    for role, name, used in (("mu", declared.mu, hyper[0]), ("gamma", declared.gamma, hyper[1])):
        asked = reference.get(name)
        if name not in declared.distributions or asked is None or float(asked) == used:
            continue
        if declared.distributions[name] is not DEFAULT_RANGES[role]:
            raise TuneError(
                f"the model factory ignores params[{name!r}]: asked for {name} = {asked:.4g}, its NAGGS optimizer "
                f"has {used:.4g}; pass params[{name!r}] to NAGGS, or pin it (space={{{name!r}: {used:g}}})"
            )
        declared = declared.pinned(name, used)
        reference[name] = used
    return declared


def _prepare(
    builder: TrialBuilder, config: dict[str, Any] | None, space: Mapping[str, Any] | None, opts: TuneOptions
) -> _Prepared:
    """Step 1: every check that can fail, before any storage is touched."""
    declared = SearchSpace.parse(space, config=config)
    reference = declared.reference({name: builder.configured(name) for name in declared.distributions})
    probe = builder.build(reference)  # a bad config or parameter name fails here
    _check_processes(probe, opts.storage)
    if config is None:
        declared = _use_the_models_own(declared, reference, probe)
    _check_metric(probe, opts.metric)
    return _Prepared(declared, reference, probe)


def _finish(
    study: optuna.Study,
    searched: SearchSpace,
    builder: TrialBuilder,
    opts: TuneOptions,
    console: Console,
) -> None:
    """Step 5: the table of top trials, best_params.yaml, best.yaml and the plots."""
    if opts.verbose:
        console.print(results_table(study, searched, opts.metric))
    if opts.output_dir is None:
        return
    out = Path(opts.output_dir)
    written, notes = write_best(study, searched, out, builder.best_config)
    plots, plot_notes = write_plots(study, searched, out, opts.metric)
    if opts.verbose:
        for path in [*written, *plots]:
            console.print(f"wrote {path}")
        for line in [*notes, *plot_notes]:
            console.print(line)


def _keep_best_checkpoints(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, root: Path) -> None:
    """After each trial: only the best trial's checkpoints stay (an Optuna-style trial callback)."""
    keep_best_checkpoints(study, root)


def run(
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    *,
    model: Callable[[dict[str, Any]], LightningModule] | None = None,
    datamodule: LightningDataModule | Callable[[dict[str, Any]], LightningDataModule] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    options: TuneOptions | None = None,
    console: Console | None = None,
    **overrides: Any,
) -> optuna.Study:
    r"""Tune NAG-GS (and whatever else the space names) with an Optuna study seeded by the theory.

    Give either ``config`` (LightningCLI recipe files or mappings, merged in order; parameters are
    dotted config paths) or ``model`` (a factory ``params -> LightningModule``, with ``datamodule``
    and ``trainer_kwargs``; parameters are plain names handed to the factory).

    Args:
        space: parameter name -> spec (see :mod:`naggs_lightning.tune.space`). alpha (``lr``), mu and
            gamma are searched over default ranges unless given; a scalar spec pins a value. In factory
            mode, a mu or gamma the factory does not pass to its NAGGS optimizer is read from that
            optimizer (and pinned) instead of searched.
        options: a :class:`~naggs_lightning.tune.options.TuneOptions`; keyword ``overrides`` (its field
            names: ``metric``, ``n_trials``, ``storage``, ``study_name``, ``seed``, ``safety``,
            ``output_dir``, ...) replace its values. Defaults and meanings are documented there, once.
        console: where progress, the seed and the final table go (``verbose`` decides whether).

    Returns:
        The :class:`optuna.Study`. Its user attributes and its trials' are named in
        :mod:`naggs_lightning.tune.keys` (the seed and curvature estimate, the searched space, the
        alpha each trial trained with, why a trial was pruned, which worker ran it).

    Raises:
        TuneError: bad options, config, search space, metric or storage (one-line message, raised before
            the storage is written; an existing study is never changed by a rejected run).
        KeyboardInterrupt: Ctrl-C. The trial that was training ends FAIL and is queued again; re-running
            the same call resumes the study.
    """
    opts = _options(options, overrides)
    builder, config_dict = _builder(config, model, datamodule, trainer_kwargs)
    study_name = opts.study_name or default_study_name(config)
    console = console or Console()
    with _quiet(), InterruptGuard() as guard, reported_as_tune_error():
        try:
            prepared = _prepare(builder, config_dict, space, opts)
            store = open_storage(opts.storage, heartbeat_interval=opts.heartbeat_interval)
            study, theory, searched, note = open_study(
                store,
                study_name,
                opts.resolved_direction,
                _sampler(opts.sampler, opts.sampler_seed),
                make_pruner(opts.pruner, expected_validations(prepared.probe.trainer)),
                declared=prepared.declared,
                metric=opts.metric,
                fingerprint=config_fingerprint(config_dict),
                seeding=functools.partial(seed_new_study, prepared.probe, prepared.declared, prepared.reference, opts),
                guard=guard,
            )
            del prepared  # the probe's model is no longer needed
            trials_dir = Path(opts.output_dir or default_output_dir(study_name)) / "trials"
            objective = Objective(
                builder, searched, opts.metric, n_trials=opts.n_trials, guard=guard, trials_dir=trials_dir
            )
            with Reporter(console, searched, opts.n_trials, opts.metric, enabled=opts.verbose) as reporter:
                shown = "memory" if opts.storage is None else redact(opts.storage)
                reporter.header(study, shown, theory, note)
                reporter.refresh(study)
                cleanup = functools.partial(_keep_best_checkpoints, root=trials_dir)
                optimize(study, objective, opts, [reporter.trial_finished, cleanup], guard)
            _finish(study, searched, builder, opts, console)
        except Interrupted:
            raise KeyboardInterrupt from None
    return study
