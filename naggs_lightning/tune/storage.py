"""Where a study lives: an Optuna RDB storage (SQLite by default, PostgreSQL for many machines).

Every worker of a study opens the same URL. Trials send a heartbeat; a trial whose worker was
killed stops beating and, ``grace_period`` seconds later (twice the interval), the next worker that
looks marks it failed and re-queues its parameters once
(:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`), so a killed worker loses no point of
the search. Failed trials do not count towards ``n_trials``. A waiting (enqueued) trial is claimed by one
worker only (:class:`AtomicClaimStorage`).
"""

from __future__ import annotations

import itertools
import re
import time
import warnings
from collections.abc import Sequence
from datetime import datetime

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from naggs_lightning.tune.errors import TuneError

__all__ = ["open_storage", "redact", "AtomicClaimStorage"]

_SCHEMA_ATTEMPTS = 5
_SCHEMA_RACE = re.compile(r"already exists|UNIQUE constraint failed|duplicate key", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str | None, *, heartbeat_interval: int = 10) -> BaseStorage:
    """Connect to ``url`` (any SQLAlchemy URL Optuna supports), or in-memory storage for ``None``.

    The connection is made here, so an unreachable server, a missing driver, a bad URL or a
    database with a newer Optuna schema fail now with a one-line :class:`TuneError`, before any
    study is created or changed. SQLite connections wait up to 60 s for a lock held by another
    worker instead of failing at once.
    """
    if url is None:
        return InMemoryStorage()
    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise TuneError(
            f"storage {url!r} is not a database URL (e.g. sqlite:///naggs-tune.db or "
            "postgresql://user:password@host/db)"
        ) from None
    engine_kwargs = {"connect_args": {"timeout": 60}} if parsed.get_backend_name() == "sqlite" else {}
    try:
        return _connect(url, engine_kwargs, heartbeat_interval)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        cause = exc.__cause__ or exc
        hint = ""
        if parsed.get_backend_name() == "postgresql":
            # SQLAlchemy >= 2.1 reads postgresql:// as psycopg 3; psycopg2 must be named.
            hint = "; install psycopg ('psycopg[binary]') or name another driver, e.g. postgresql+psycopg2://"
        raise TuneError(f"storage {shown}: no database driver for {parsed.drivername!r} ({cause}){hint}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise TuneError(f"cannot reach storage {shown}: {detail[0] if detail else type(exc).__name__}") from None
    except RuntimeError as exc:  # Optuna's schema-version check
        raise TuneError(f"storage {shown}: {' '.join(str(exc).split())}") from None


class AtomicClaimStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` whose claim of a waiting (enqueued) trial is atomic.

    ``study.ask()`` claims a waiting trial by setting it RUNNING; Optuna reads the state and then writes it,
    with ``SELECT ... FOR UPDATE``, which SQLite ignores: two processes that asked at the same instant both
    claimed the same trial and trained it twice. Here the claim is one conditional ``UPDATE ... WHERE state =
    WAITING``, and only the process whose update changed the row owns the trial (the other moves on to the
    next waiting trial, as Optuna does for a trial it lost).
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        # Optuna's own session helper and table model: the claim must use the storage's engine and schema.
        with _create_scoped_session(self.scoped_session) as session:
            claimed = (
                session.query(models.TrialModel)
                .filter(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.WAITING)
                .update({models.TrialModel.state: TrialState.RUNNING}, synchronize_session=False)
            )
            if claimed == 1:  # the update holds the write lock: the rest of the claim is this process's alone
                models.TrialModel.find_or_raise_by_id(trial_id, session).datetime_start = datetime.now()
        return claimed == 1


def _connect(url: str, engine_kwargs: dict, heartbeat_interval: int) -> RDBStorage:
    for attempt in itertools.count(1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return AtomicClaimStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
            # Workers that start together on a new database race to create Optuna's tables ("table
            # studies already exists", a duplicate alembic_version row); once one has won, the tables
            # are there and another attempt opens them.
            if attempt == _SCHEMA_ATTEMPTS or not _SCHEMA_RACE.search(str(exc)):
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("itertools.count() does not end")
