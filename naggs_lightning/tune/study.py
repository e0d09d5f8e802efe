"""Run a theory-seeded study: open or resume it, seed it, drive the workers, report.

Order of work in :func:`run`, chosen so that bad input never damages a study:

1. check the options, parse the search space, build one configuration (the recipe at its configured
   values): a malformed config or an unknown parameter fails here, before any storage is touched;
2. connect to the storage (an unreachable URL fails here);
3. if the study exists, resume it: check that it was made with the same config, search space,
   metric and direction, and reuse its curvature estimate and seed (nothing is estimated or
   enqueued again); otherwise estimate the curvature, compute the seed, *then* create the study,
   enqueue the seeded trial(s) and store the estimate, the seed and the space in the study's user
   attributes (``naggs.seed``, ``naggs.space``, ...);
4. run trials until the study holds ``n_trials`` finished (complete or pruned) trials, counted over
   every worker on the storage, or until ``timeout``;
5. print the table of top trials, write ``best.yaml``, ``best_params.yaml`` and the plots.

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
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from optuna.distributions import FloatDistribution
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import TrialState
from rich.console import Console

from naggs_lightning.tune.config import ConfigSource, load_config
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.objective import (
    ConfigBuilder,
    FactoryBuilder,
    Objective,
    SurplusTrial,
    TrialBuilder,
    TrialParts,
)
from naggs_lightning.tune.report import SEED_ATTR, Reporter, results_table, write_best, write_plots
from naggs_lightning.tune.seed import (
    RelativeAlpha,
    TheorySeed,
    measure_curvature,
    naggs_hyperparameters,
    warmed_up_seed,
)
from naggs_lightning.tune.space import ALPHA_RATIO, SearchSpace
from naggs_lightning.tune.storage import DEFAULT_STORAGE, open_storage, redact
from naggs_lightning.tune.warmup import CURVATURE_BATCHES, WARMUP_STEPS

__all__ = ["run", "PRUNERS", "SAMPLERS"]

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")

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
    raise TuneError(f"pruner must be one of {PRUNERS} (or an optuna pruner), got {pruner!r}")


def _sampler(sampler: str | BaseSampler, seed: int | None) -> BaseSampler:
    if isinstance(sampler, BaseSampler):
        return sampler
    if sampler == "tpe":
        return TPESampler(seed=seed)
    if sampler == "random":
        return RandomSampler(seed=seed)
    raise TuneError(f"sampler must be one of {SAMPLERS} (or an optuna sampler), got {sampler!r}")


def _check_options(
    n_trials: int,
    timeout: float | None,
    n_jobs: int,
    study_name: str,
    *,
    seed_trials: int,
    safety: float,
    seed_window: float,
    curvature_batches: int,
    warmup_steps: int,
) -> None:
    if not (isinstance(safety, (int, float)) and 0.0 < safety <= 1.0):
        raise TuneError(f"safety must be in (0, 1], got {safety!r}")
    if not (isinstance(seed_window, (int, float)) and seed_window > 1.0 and math.isfinite(seed_window)):
        raise TuneError(f"seed_window must be finite and > 1, got {seed_window!r}")
    counts = (
        ("n_trials", n_trials),
        ("n_jobs", n_jobs),
        ("seed_trials", seed_trials),
        ("curvature_batches", curvature_batches),
    )
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise TuneError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    for name, value in counts:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TuneError(f"{name} must be an integer >= 1, got {value!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise TuneError(f"timeout must be > 0 seconds (or None), got {timeout!r}")
    if not isinstance(study_name, str) or not study_name.strip():
        raise TuneError(f"study_name must be a non-empty string, got {study_name!r}")


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
    enqueued = [{**base, ALPHA_RATIO: max(0.5**j, 1.0 / window)} for j in range(seed_trials)]
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
        if "naggs.space" in attrs:
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
    if attrs.get("naggs.metric") != metric:
        tuned = attrs.get("naggs.metric")
        raise TuneError(f"study {study.study_name!r} tunes {tuned!r}, not {metric!r}: choose another --study-name")
    if attrs.get("naggs.config") != fingerprint:
        raise TuneError(
            f"study {study.study_name!r} was made with a different config (recipe files or values changed): "
            "re-run with the same config to resume, or choose another --study-name"
        )
    if attrs.get("naggs.declared_space") != declared.to_json():
        before = dict(SearchSpace.from_json(attrs["naggs.declared_space"]).describe())
        now = dict(declared.describe())
        diff = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise TuneError(
            f"study {study.study_name!r} was made with a different search space (differs in {', '.join(diff)}): "
            "re-run with the same space to resume, or choose another --study-name"
        )
    seed = TheorySeed.from_attrs(attrs["naggs.seed"]) if "naggs.seed" in attrs else None
    return seed, SearchSpace.from_json(attrs["naggs.space"])


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
) -> tuple[optuna.Study, TheorySeed | None, SearchSpace, str]:
    """Resume the study, or seed and create it; returns it with its seed, searched space and a note."""
    if study_name in optuna.get_all_study_names(store):
        study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler, pruner=pruner)
        return (study, *_resume(study, declared, metric, direction, fingerprint), "resumed")
    theory, searched, enqueued, note = seeding()  # before the study exists: a failure here leaves nothing behind
    try:
        study = optuna.create_study(
            storage=store, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
        study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler, pruner=pruner)
        return (study, *_resume(study, declared, metric, direction, fingerprint), "joined")
    for params in enqueued:
        study.enqueue_trial(params, user_attrs={SEED_ATTR: True})
    study.set_user_attr("naggs.metric", metric)
    study.set_user_attr("naggs.config", fingerprint)
    study.set_user_attr("naggs.declared_space", declared.to_json())
    if theory is not None:
        study.set_user_attr("naggs.seed", theory.to_attrs())
    study.set_user_attr("naggs.space", searched.to_json())  # last: the study is ready for other workers
    return study, theory, searched, note


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    finished = sum(1 for t in trials if t.state != TrialState.RUNNING)
    return finished, len(trials) - finished


def _work(
    study: optuna.Study,
    objective: Objective,
    n_trials: int,
    deadline: float | None,
    stop: threading.Event,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
) -> None:
    """One worker: start trials while the study has room, wait while others finish the last ones."""
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return
        optuna.storages.fail_stale_trials(study)
        finished, running = _counts(study)
        if finished >= n_trials:
            return
        if finished + running >= n_trials:
            stop.wait(_POLL_S)
            continue
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), callbacks=list(callbacks))


def run(
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    *,
    model: Callable[[dict[str, Any]], LightningModule] | None = None,
    datamodule: LightningDataModule | Callable[[dict[str, Any]], LightningDataModule] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    metric: str = "val_acc",
    direction: str | None = None,
    n_trials: int = 30,
    timeout: float | None = None,
    n_jobs: int = 1,
    storage: str | None = DEFAULT_STORAGE,
    study_name: str = "naggs",
    sampler: str | BaseSampler = "tpe",
    sampler_seed: int | None = None,
    pruner: str | BasePruner = "median",
    seed: bool = True,
    safety: float = 0.9,
    seed_window: float = 10.0,
    seed_trials: int = 3,
    curvature_batches: int = CURVATURE_BATCHES,
    warmup_steps: int = WARMUP_STEPS,
    output_dir: str | Path | None = None,
    heartbeat_interval: int = 10,
    console: Console | None = None,
    verbose: bool = True,
) -> optuna.Study:
    r"""Tune NAG-GS (and whatever else the space names) with an Optuna study seeded by the theory.

    Give either ``config`` (LightningCLI recipe files or mappings, merged in order; parameters are
    dotted config paths) or ``model`` (a factory ``params -> LightningModule``, with ``datamodule``
    and ``trainer_kwargs``; parameters are plain names handed to the factory).

    Args:
        space: parameter name -> spec (see :mod:`naggs_lightning.tune.space`). alpha (``lr``), mu and
            gamma are searched over default ranges unless given; a scalar spec pins a value.
        metric: the validation metric to optimise, as the model logs it.
        direction: ``"maximize"`` or ``"minimize"``; ``None`` minimises metrics whose name contains
            ``loss`` or ``err`` and maximises the others.
        n_trials: finished (complete or pruned) trials the study should hold, over all workers and
            runs: re-running a finished study does nothing, an interrupted one runs the rest.
        timeout: seconds after which this process starts no new trial.
        n_jobs: trials run in parallel threads of this process. Several processes (on several
            machines) may also share one ``storage``.
        storage: an Optuna RDB URL (``sqlite:///file.db``, ``postgresql://user:pw@host/db``), or
            ``None`` for an in-memory study (no resume, one process).
        study_name: re-running with the same name resumes the study.
        sampler, sampler_seed: ``"tpe"`` or ``"random"`` (or an Optuna sampler) and its seed.
        pruner: ``"median"``, ``"hyperband"``, ``"none"`` (or an Optuna pruner), on the metric
            reported after every validation run.
        seed: seed the study from the theory (see :mod:`naggs_lightning.tune.seed`): measure the
            top Hessian eigenvalue after a ``warmup_steps``-step warm-up of a copy of the model at the
            configured mu (:mod:`naggs_lightning.tune.warmup`; 0: at initialisation), the largest over
            ``curvature_batches`` training batches, enqueue ``seed_trials`` trials at ``safety`` times the theory's step for the configured
            mu (then half, a quarter, ...), and search alpha as a multiple in
            ``[1 / seed_window, seed_window]`` of the theory's step for each trial's mu (and gamma, if fixed),
            cut to the user's alpha range (:class:`~naggs_lightning.tune.seed.RelativeAlpha`).
        output_dir: where ``best.yaml`` (config mode), ``best_params.yaml`` and the PNG plots go;
            ``None`` writes nothing.
        heartbeat_interval: seconds between a running trial's heartbeats; a trial silent for twice
            as long counts as failed (its worker died) and is re-queued once.
        console, verbose: where and whether to show progress, the seed and the final table.

    Returns:
        The :class:`optuna.Study`. Its ``user_attrs`` hold ``naggs.seed`` (curvature estimate, regime,
        the theory's step, alpha_crit, the seed), ``naggs.space`` (the searched space, alpha relative
        to the seed), ``naggs.declared_space``, ``naggs.metric`` and ``naggs.config`` (a hash of the
        config). A trial's ``user_attrs`` hold the alpha it trained with (``naggs.alpha``), why it was
        pruned (``naggs.pruned_reason``), its worker (``naggs.worker``), and ``naggs.seeded``.

    Raises:
        TuneError: bad options, config, search space or storage (one-line message, nothing changed).
    """
    _check_options(
        n_trials,
        timeout,
        n_jobs,
        study_name,
        seed_trials=seed_trials,
        safety=safety,
        seed_window=seed_window,
        curvature_batches=curvature_batches,
        warmup_steps=warmup_steps,
    )
    if (config is None) == (model is None):
        raise TuneError("give either a config (LightningCLI recipe) or a model factory, not both and not neither")
    if direction is None:
        direction = "minimize" if ("loss" in metric or "err" in metric) else "maximize"
    if direction not in ("maximize", "minimize"):
        raise TuneError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    pruner_obj, sampler_obj = _pruner(pruner), _sampler(sampler, sampler_seed)
    console = console or Console()

    config_dict = load_config(config) if config is not None else None
    builder: TrialBuilder = (
        ConfigBuilder(config_dict) if config_dict is not None else FactoryBuilder(model, datamodule, trainer_kwargs)
    )
    declared = SearchSpace.parse(space, config=config_dict)
    reference = declared.reference({name: builder.configured(name) for name in declared.distributions})
    fingerprint = _fingerprint(config_dict)

    with _quiet():
        probe = builder.build(reference)  # a bad config or parameter name fails here, before the storage
        if probe.trainer.world_size > 1:
            # Lightning would start the other ranks by re-running naggs-tune, and each would run studies of its own.
            strategy = type(probe.trainer.strategy).__name__
            raise TuneError(
                f"trials on {probe.trainer.world_size} processes (strategy {strategy}) are not supported: "
                "run one naggs-tune worker per device on a shared --storage instead"
            )
        store = open_storage(storage, heartbeat_interval=heartbeat_interval)
        shown = "memory" if storage is None else redact(storage)
        study, theory, searched, note = _open_study(
            store,
            study_name,
            direction,
            sampler_obj,
            pruner_obj,
            declared=declared,
            metric=metric,
            fingerprint=fingerprint,
            seeding=(
                (
                    lambda: _seed_study(
                        probe,
                        declared,
                        reference,
                        safety=safety,
                        window=seed_window,
                        seed_trials=seed_trials,
                        curvature_batches=curvature_batches,
                        warmup_steps=warmup_steps,
                    )
                )
                if seed
                else (lambda: (None, declared, [], "new study, unseeded"))
            ),
        )

        objective = Objective(builder, searched, metric, n_trials=n_trials)
        deadline = None if timeout is None else time.monotonic() + timeout
        stop = threading.Event()
        errors: list[BaseException] = []
        with Reporter(console, searched, n_trials, metric, enabled=verbose) as reporter:
            reporter.header(study, shown, theory, note)
            reporter.refresh(study)

            def worker() -> None:
                try:
                    # Each thread opens the storage for itself, as a separate process would: threads that
                    # share one RDB storage object raced on enqueued trials (two threads ran, then told,
                    # the same trial). The multi-process path is the one tested to run exactly N trials.
                    own = study if storage is None else optuna.load_study(
                        study_name=study.study_name,
                        storage=open_storage(storage, heartbeat_interval=heartbeat_interval),
                        sampler=sampler_obj,
                        pruner=pruner_obj,
                    )
                    _work(own, objective, n_trials, deadline, stop, [reporter.trial_finished])
                except BaseException as exc:  # first error stops the other threads and is re-raised
                    errors.append(exc)
                    stop.set()

            if n_jobs == 1:
                _work(study, objective, n_trials, deadline, stop, [reporter.trial_finished])
            else:
                threads = [threading.Thread(target=worker, name=f"naggs-tune-{i}") for i in range(n_jobs)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]

        if verbose:
            console.print(results_table(study, searched, metric))
        if output_dir is not None:
            out = Path(output_dir)
            written = write_best(study, searched, out, config_dict)
            plots, notes = write_plots(study, searched, out, metric)
            if verbose:
                for path in [*written, *plots]:
                    console.print(f"wrote {path}")
                for line in notes:
                    console.print(line)
    return study
