"""Ctrl-C during a study: stop at once, leave no trial RUNNING, and say so.

Lightning's ``Trainer.fit`` turns a :class:`KeyboardInterrupt` into ``sys.exit(1)``, so a study
whose trial is training would die with status 1 and leave that trial RUNNING in the storage. While
a study runs, :class:`InterruptGuard` replaces the SIGINT handler: the first Ctrl-C raises
:class:`Interrupted`, a :class:`BaseException` that Lightning passes through (after its own
``on_exception`` clean-up), and sets :attr:`InterruptGuard.requested`, which trials running in
worker threads poll (:class:`StopOnInterrupt`). The objective turns it into a failed trial (queued
again for the next run) and the driver into a :class:`KeyboardInterrupt` for its caller.

Optuna's own bookkeeping (creating a trial, recording its end, creating and seeding a study) must
not be cut in half: inside :meth:`InterruptGuard.deferred` a Ctrl-C is only recorded and raised
when the block ends.

A ``ddp_spawn`` trial's rank processes are ended with everything they started
(:func:`kill_process_trees`): a Ctrl-C sent to the study's process alone (``kill -INT``) reaches no
other process, and a rank's DataLoader workers, orphaned, could live on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["Interrupted", "InterruptGuard", "StopOnInterrupt", "kill_process_trees"]


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) reached a running study.

    Not a :class:`KeyboardInterrupt`: Lightning's trainer would turn that into ``sys.exit(1)``.
    """


class InterruptGuard:
    """Owns SIGINT while a study runs (in the main thread; elsewhere it only carries the flag).

    Use as a context manager around the study. The first SIGINT sets :attr:`requested` and raises
    :class:`Interrupted` in the main thread unless a :meth:`deferred` block is running; later ones
    are only recorded, so the clean-up they interrupt still finishes.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._depth = 0  # nesting of deferred() blocks in the main thread
        self._raised = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested.set()
        if self._depth == 0:
            self._raise_once()

    def _raise_once(self) -> None:
        if not self._raised:
            self._raised = True
            raise Interrupted()

    def check(self) -> None:
        """Raise :class:`Interrupted` if a Ctrl-C was requested (for code outside the main thread)."""
        if self.requested.is_set():
            raise Interrupted()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block a Ctrl-C must not cut: it is raised when the block ends instead."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._depth += 1
        try:
            yield
        finally:
            if main:
                self._depth -= 1
        if main and self._depth == 0 and self.requested.is_set():
            self._raise_once()

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """A block inside :meth:`deferred` that a Ctrl-C may cut (training a trial)."""
        self.check()
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        depth, self._depth = self._depth, 0
        try:
            yield
        finally:
            self._depth = depth


class StopOnInterrupt(Callback):
    """Ends a trial's ``fit`` after a Ctrl-C, for trials trained in worker threads (the signal only
    reaches the main thread): raises :class:`Interrupted` at the next batch."""

    def __init__(self, guard: InterruptGuard | None) -> None:
        self.guard = guard

    def __getstate__(self) -> dict[str, Any]:
        # A ddp_spawn trainer pickles its callbacks into the rank processes: the guard (a signal handler and
        # an event of the study's process) stays behind; the study's process stops the ranks itself.
        return {"guard": None}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.guard is not None:
            self.guard.check()

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.guard is not None:
            self.guard.check()


def _children(parents: set[int]) -> set[int]:
    """The processes whose parent is in ``parents``, read from ``/proc`` (none where there is no ``/proc``)."""
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read()
        except OSError:  # it ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the fields after its last ")" do not
        if int(fields[fields.rfind(b")") + 2 :].split()[1]) in parents:
            found.add(int(entry))
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # ended already, or not ours to signal
        os.kill(pid, signum)


def kill_process_trees(pids: Iterable[int]) -> None:
    """SIGKILL the processes ``pids`` and every process below them (their DataLoader workers, say).

    Killing a rank alone orphans its children: a DataLoader worker notices its parent is gone only by
    polling, and one still starting when the rank dies never does (it records the new parent, init, as
    its own and waits for work for ever). Each generation is stopped (SIGSTOP) before the next is looked
    up: a stopped process can neither start a child nor reap one, so none is missed and no process id
    is reused meanwhile. Without ``/proc`` (not Linux) only ``pids`` themselves are killed.
    """
    tree: set[int] = set()
    generation = set(pids)
    while generation:
        for pid in generation:
            _signal(pid, signal.SIGSTOP)
        tree |= generation
        generation = _children(generation) - tree
    for pid in tree:
        _signal(pid, signal.SIGKILL)
