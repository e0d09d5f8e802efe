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

Counting trials exactly across workers: before each trial a worker counts finished and running
trials and starts one only if their sum is below ``n_trials``; otherwise it waits, because a running
trial may still fail (a killed worker's trial is marked failed by the heartbeat and re-queued) and
need replacing. Two workers that ask for the last trial at the same instant are resolved by trial
number in :class:`~naggs_lightning.tune.objective.Objective`: the later one ends as failed without
training. Optuna's ``MaxTrialsCallback`` is not used: it counts after a trial ends, so with several
workers the study overshoots by up to one trial per extra worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from optuna.distributions import FloatDistribution
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import TrialState
from rich.console import Console

from naggs_lightning.tune import keys
from naggs_lightning.tune.config import ConfigSource, load_config
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.interrupts import Interrupted, InterruptGuard
from naggs_lightning.tune.objective import (
    ConfigBuilder,
    FactoryBuilder,
    Objective,
    SurplusTrial,
    TrialBuilder,
    TrialParts,
)
from naggs_lightning.tune.options import TuneOptions
from naggs_lightning.tune.report import Reporter, results_table, write_best, write_plots
from naggs_lightning.tune.seed import (
    RelativeAlpha,
    TheorySeed,
    measure_curvature,
    naggs_hyperparameters,
    warmed_up_seed,
)
from naggs_lightning.tune.space import DEFAULT_RANGES, SearchSpace
from naggs_lightning.tune.storage import open_storage, redact

__all__ = ["run"]

#: How long a worker that found the study just created by another worker waits for its seed.
_READY_TIMEOUT_S = 120.0
_POLL_S = 1.0


def _pruner(pruner: str | BasePruner) -> BasePruner:
    if isinstance(pruner, BasePruner):
        return pruner
    if pruner == "median":
        # Five trials before any pruning; never on the first validation, which is noisy.
        return MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if pruner == "hyperband":
        return HyperbandPruner(min_resource=1)
    if pruner == "none":
        return NopPruner()
    raise AssertionError(f"TuneOptions admitted the pruner {pruner!r}")


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
            warnings.filterwarnings("ignore", message=r"Heartbeat of storage is supposed to be used with Study.optimize")
            # Lightning 2.6 on torch >= 2.10, repeated every trial; nothing a user can act on.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        optuna.logging.set_verbosity(verbosity)


def _seed_study(
    probe: TrialParts,
    declared: SearchSpace,
    reference: dict[str, Any],
    *,
    safety: float,
    window: float,
    seed_trials: int,
    curvature_batches: int,
    warmup_steps: int,
) -> tuple[TheorySeed | None, SearchSpace, list[dict[str, Any]], str]:
    """The seed, the space with alpha relative to it, the seeded trials' params, and a note."""
    alpha_dist = declared.distributions.get(declared.alpha)
    if alpha_dist is None:
        return None, declared, [], f"unseeded: alpha ({declared.alpha}) is pinned"
    if not isinstance(alpha_dist, FloatDistribution) or alpha_dist.step is not None:
        return None, declared, [], f"unseeded: alpha ({declared.alpha}) is not searched over a continuous range"
    hyper = naggs_hyperparameters(probe.model)
    if hyper is None:
        return None, declared, [], "unseeded: the optimizer is not NAGGS (the seed is NAG-GS theory)"
    mu, gamma, fixed_gamma = hyper
    gamma_dist = declared.distributions.get(declared.gamma)
    if isinstance(gamma_dist, FloatDistribution):
        # gamma = mu is the best (alpha, gamma) pair of the quadratic analysis; gamma relaxes to mu anyway.
        gamma = min(max(mu, gamma_dist.low), gamma_dist.high)
    warmup = measure_curvature(
        probe.model,
        probe.datamodule,
        mu,
        warmup_steps=warmup_steps,
        n_batches=curvature_batches,
        device=probe.trainer.strategy.root_device,
    )
    seed = warmed_up_seed(warmup, gamma, safety=safety, fixed_gamma=fixed_gamma)
    relative = RelativeAlpha(seed.lambda_max, seed.safety, window, alpha_dist.low, alpha_dist.high, fixed_gamma)
    base = {name: reference[name] for name in declared.distributions if name != declared.alpha}
    if isinstance(gamma_dist, FloatDistribution):
        base[declared.gamma] = gamma
    # Further seeded trials halve alpha: curvature grows in training and minibatch noise lowers the
    # stable step, so the theory's step for the start is an upper guess.
    base = declared.encode(base)
    enqueued = [{**base, keys.ALPHA_RATIO: max(0.5**j, 1.0 / window)} for j in range(seed_trials)]
    first = relative.alpha(1.0, mu, gamma)
    note = (
        "new study"
        if first == seed.alpha
        else f"new study; the seed lies outside the alpha range: trial 0 uses {first:.4g}"
    )
    return seed, declared.seeded(relative), enqueued, note


def _wait_ready(study: optuna.Study) -> dict[str, Any]:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        attrs = study.user_attrs
        if keys.STUDY_SPACE in attrs:
            return attrs
        if time.monotonic() > deadline:
            raise TuneError(
                f"study {study.study_name!r} exists but has no naggs-tune search space (made by another tool, or "
                "its creator stopped while seeding): choose another --study-name"
            )
        time.sleep(_POLL_S)


def _fingerprint(config: Mapping[str, Any] | None) -> str | None:
    """A hash of the merged config: a study resumes only with the config it was made with."""
    if config is None:
        return None
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume(
    study: optuna.Study, declared: SearchSpace, metric: str, direction: str, fingerprint: str | None
) -> tuple[TheorySeed | None, SearchSpace]:
    attrs = _wait_ready(study)
    if study.direction.name.lower() != direction:
        raise TuneError(
            f"study {study.study_name!r} was made to {study.direction.name.lower()}, not to {direction}: "
            "choose another --study-name"
        )
    if attrs.get(keys.STUDY_METRIC) != metric:
        tuned = attrs.get(keys.STUDY_METRIC)
        raise TuneError(f"study {study.study_name!r} tunes {tuned!r}, not {metric!r}: choose another --study-name")
    if attrs.get(keys.STUDY_CONFIG) != fingerprint:
        raise TuneError(
            f"study {study.study_name!r} was made with a different config (recipe files or values changed): "
            "re-run with the same config to resume, or choose another --study-name"
        )
    if attrs.get(keys.STUDY_DECLARED_SPACE) != declared.to_json():
        before = dict(SearchSpace.from_json(attrs[keys.STUDY_DECLARED_SPACE]).describe())
        now = dict(declared.describe())
        diff = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise TuneError(
            f"study {study.study_name!r} was made with a different search space (differs in {', '.join(diff)}): "
            "re-run with the same space to resume, or choose another --study-name"
        )
    seed = TheorySeed.from_attrs(attrs[keys.STUDY_SEED]) if keys.STUDY_SEED in attrs else None
    return seed, SearchSpace.from_json(attrs[keys.STUDY_SPACE])


def _open_study(
    store: optuna.storages.BaseStorage,
    study_name: str,
    direction: str,
    sampler: BaseSampler,
    pruner: BasePruner,
    *,
    declared: SearchSpace,
    metric: str,
    fingerprint: str | None,
    seeding: Callable[[], tuple[TheorySeed | None, SearchSpace, list[dict[str, Any]], str]],
    guard: InterruptGuard,
) -> tuple[optuna.Study, TheorySeed | None, SearchSpace, str]:
    """Resume the study, or seed and create it; returns it with its seed, searched space and a note."""
    if study_name in optuna.get_all_study_names(store):
        study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler, pruner=pruner)
        return (study, *_resume(study, declared, metric, direction, fingerprint), "resumed")
    theory, searched, enqueued, note = seeding()  # before the study exists: a failure here leaves nothing behind
    with guard.deferred():  # a study is created whole or not at all
        try:
            study = optuna.create_study(
                storage=store, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner
            )
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
            study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler, pruner=pruner)
            return (study, *_resume(study, declared, metric, direction, fingerprint), "joined")
        try:
            for params in enqueued:
                study.enqueue_trial(params, user_attrs={keys.SEEDED: True})
            study.set_user_attr(keys.STUDY_METRIC, metric)
            study.set_user_attr(keys.STUDY_CONFIG, fingerprint)
            study.set_user_attr(keys.STUDY_DECLARED_SPACE, declared.to_json())
            if theory is not None:
                study.set_user_attr(keys.STUDY_SEED, theory.to_attrs())
            study.set_user_attr(keys.STUDY_SPACE, searched.to_json())  # last: the study is ready for other workers
        except BaseException:
            optuna.delete_study(study_name=study_name, storage=store)  # roll back the half-made study
            raise
    return study, theory, searched, note


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    finished = sum(1 for t in trials if t.state != TrialState.RUNNING)
    return finished, len(trials) - finished


class _Heartbeat:
    """A running trial's heartbeat: the first beat now, then one every ``interval`` seconds until the trial ends.

    Optuna's own heartbeat thread (inside ``study.optimize``) records its first beat asynchronously,
    and a RUNNING trial that never beat is never judged stale: a worker killed before that first beat
    (seen on a busy machine, the thread starved behind the trial's own writes) left its trial RUNNING
    for ever and every other worker waiting for it. Here the first beat is written before the trial
    starts.
    """

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.storage = trial.storage
        # Optuna's storage API names trials by their storage id, which Trial keeps private.
        self.trial_id = trial._trial_id
        self.interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a busy database: the next beat retries; a missed one only shortens the grace
                pass

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="naggs-tune-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


#: Serialises asking for a trial among this process's worker threads. Optuna claims a waiting (enqueued)
#: trial with a read and a conditional update; SQLite has no SELECT ... FOR UPDATE, so two threads that ask
#: at the same instant both claimed the same seeded trial and trained it twice.
_ASK_LOCK = threading.Lock()


def _run_trial(
    study: optuna.Study,
    objective: Objective,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
    guard: InterruptGuard,
) -> None:
    """Ask for a trial, train it, tell its end (as Optuna's ``_run_trial``, with the first heartbeat written first).

    A trial that another worker finished meanwhile (failed as stale while this one still trained, or
    claimed twice by two processes on SQLite) is left as that worker recorded it.
    """
    # Asking and telling are never cut by a Ctrl-C: one that lands there is raised inside the objective (which
    # lets it cut training only), or once the trial is told.
    with guard.deferred():
        with _ASK_LOCK:
            trial = study.ask()
        state, value = TrialState.COMPLETE, None
        with _Heartbeat(trial):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except SurplusTrial:
                state = TrialState.FAIL
            except optuna.exceptions.UpdateFinishedTrialError:
                return
            except BaseException:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study.tell(trial, state=TrialState.FAIL)
                raise
        try:
            frozen = study.tell(trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            return
        for callback in callbacks:
            callback(study, frozen)


def _work(
    study: optuna.Study,
    objective: Objective,
    n_trials: int,
    deadline: float | None,
    stop: threading.Event,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
    guard: InterruptGuard,
) -> None:
    """One worker: start trials while the study has room, wait while others finish the last ones."""
    while not (stop.is_set() or guard.requested.is_set()):
        if deadline is not None and time.monotonic() >= deadline:
            return
        with guard.deferred():  # Optuna's bookkeeping between trials is not cut by a Ctrl-C
            optuna.storages.fail_stale_trials(study)
            finished, running = _counts(study)
        if finished >= n_trials:
            return
        if finished + running < n_trials:
            _run_trial(study, objective, callbacks, guard)
        else:
            stop.wait(_POLL_S)  # the study is full until a running trial ends: it may fail and need replacing


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


def _default_study_name(config: ConfigSource | Sequence[ConfigSource] | None) -> str:
    """The last config file's name without extension, else ``naggs``."""
    sources = [config] if isinstance(config, (str, os.PathLike, Mapping)) else list(config or [])
    files = [Path(s) for s in sources if isinstance(s, (str, os.PathLike))]
    return files[-1].stem if files else "naggs"


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
        logged = sorted(k for k in trainer.callback_metrics if not k.startswith("stability/"))
        raise TuneError(f"the metric {metric!r} is not logged during validation; logged: {logged or 'nothing'}")


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


def _seeding(prepared: _Prepared, opts: TuneOptions) -> Callable[[], tuple[Any, ...]]:
    if not opts.seed:
        return lambda: (None, prepared.declared, [], "new study, unseeded")
    return lambda: _seed_study(
        prepared.probe,
        prepared.declared,
        prepared.reference,
        safety=opts.safety,
        window=opts.seed_window,
        seed_trials=opts.seed_trials,
        curvature_batches=opts.curvature_batches,
        warmup_steps=opts.warmup_steps,
    )


def _optimize(
    study: optuna.Study,
    objective: Objective,
    opts: TuneOptions,
    reporter: Reporter,
    guard: InterruptGuard,
) -> None:
    """Step 4: this process's workers (threads on a pool, as Optuna's own ``n_jobs``) until the study is full."""
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    stop = threading.Event()
    args = (objective, opts.n_trials, deadline, stop, [reporter.trial_finished], guard)
    if opts.n_jobs == 1:
        _work(study, *args)
        return

    def worker() -> None:
        # Each thread opens the storage for itself, as a separate process would: threads that share one
        # RDB storage object raced on enqueued trials (two threads ran, then told, the same trial).
        own = study
        if opts.storage is not None:
            store = open_storage(opts.storage, heartbeat_interval=opts.heartbeat_interval)
            own = optuna.load_study(
                study_name=study.study_name, storage=store, sampler=study.sampler, pruner=study.pruner
            )
        _work(own, *args)

    with ThreadPoolExecutor(max_workers=opts.n_jobs, thread_name_prefix="naggs-tune") as pool:
        futures = [pool.submit(worker) for _ in range(opts.n_jobs)]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            stop.set()  # the first error (or a Ctrl-C here) stops the other workers after their trial
        for future in done:
            future.result()  # re-raise the first error
        wait(futures)
        for future in futures:
            future.result()


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
    study_name = opts.study_name or _default_study_name(config)
    console = console or Console()
    with _quiet(), InterruptGuard() as guard:
        try:
            prepared = _prepare(builder, config_dict, space, opts)
            store = open_storage(opts.storage, heartbeat_interval=opts.heartbeat_interval)
            study, theory, searched, note = _open_study(
                store,
                study_name,
                opts.resolved_direction,
                _sampler(opts.sampler, opts.sampler_seed),
                _pruner(opts.pruner),
                declared=prepared.declared,
                metric=opts.metric,
                fingerprint=_fingerprint(config_dict),
                seeding=_seeding(prepared, opts),
                guard=guard,
            )
            del prepared  # the probe's model is no longer needed
            objective = Objective(builder, searched, opts.metric, n_trials=opts.n_trials, guard=guard)
            with Reporter(console, searched, opts.n_trials, opts.metric, enabled=opts.verbose) as reporter:
                shown = "memory" if opts.storage is None else redact(opts.storage)
                reporter.header(study, shown, theory, note)
                reporter.refresh(study)
                _optimize(study, objective, opts, reporter, guard)
            _finish(study, searched, builder, opts, console)
        except Interrupted:
            raise KeyboardInterrupt from None
    return study
