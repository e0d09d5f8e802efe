"""The trial loop: each worker asks for a trial, trains it, tells its end, while the study has room.

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
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import optuna
from optuna.trial import TrialState

from naggs_lightning.tune.interrupts import InterruptGuard
from naggs_lightning.tune.objective import Objective, SurplusTrial
from naggs_lightning.tune.options import TuneOptions
from naggs_lightning.tune.storage import open_storage
from naggs_lightning.tune.trials import trial_counts

__all__ = ["optimize"]

#: How often a worker that found the study full looks again (a running trial may fail and need replacing).
_FULL_POLL_S = 1.0


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
            # a busy database: the next beat retries; a missed one only shortens the grace
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="naggs-tune-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


#: Serialises asking for a trial among this process's worker threads. Optuna claimed a waiting (enqueued)
#: trial with a read and a conditional update; SQLite has no SELECT ... FOR UPDATE, so two threads that asked
#: at the same instant both claimed the same seeded trial and trained it twice. Across processes the storage
#: makes the claim atomic (:class:`~naggs_lightning.tune.storage.AtomicClaimStorage`).
_ASK_LOCK = threading.Lock()


def _run_trial(
    study: optuna.Study,
    objective: Objective,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
    guard: InterruptGuard,
) -> None:
    """Ask for a trial, train it, tell its end (as Optuna's ``_run_trial``, with the first heartbeat written first).

    A trial that another worker finished meanwhile (failed as stale while this one still trained) is left as
    that worker recorded it.
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
            finished, running = trial_counts(study)
        if finished >= n_trials:
            return
        if finished + running < n_trials:
            _run_trial(study, objective, callbacks, guard)
        else:
            stop.wait(_FULL_POLL_S)  # the study is full until a running trial ends: it may fail and need replacing


def optimize(
    study: optuna.Study,
    objective: Objective,
    opts: TuneOptions,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
    guard: InterruptGuard,
) -> None:
    """This process's workers (threads on a pool, as Optuna's own ``n_jobs``) until the study is full.

    ``callbacks`` are called after each trial this process ran, as Optuna's ``study.optimize`` calls its own.
    """
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    stop = threading.Event()
    args = (objective, opts.n_trials, deadline, stop, callbacks, guard)
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
