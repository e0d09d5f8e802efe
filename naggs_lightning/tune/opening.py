"""Opening a study: resume one made with the same config, space and metric, or seed and create it whole.

A new study is created only after its seed is computed, and its enqueued trials and user attributes
(:mod:`~naggs_lightning.tune.keys`) are written under a deferred Ctrl-C; one that fails half-made is
deleted again. Another worker that finds the study being created waits until its search space (the
last attribute written) is there.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from naggs_lightning.lr.seed import TheorySeed
from naggs_lightning.tune import keys
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.space import SearchSpace

if TYPE_CHECKING:
    from naggs_lightning.tune.interrupts import InterruptGuard
    from naggs_lightning.tune.seeding import Seeding

__all__ = ["config_fingerprint", "open_study"]

#: How long a worker that found the study just created by another worker waits for its seed, polling.
_READY_TIMEOUT_S = 120.0
_READY_POLL_S = 1.0


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
        time.sleep(_READY_POLL_S)


def config_fingerprint(config: Mapping[str, Any] | None) -> str | None:
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


def open_study(
    store: optuna.storages.BaseStorage,
    study_name: str,
    direction: str,
    sampler: BaseSampler,
    pruner: BasePruner,
    *,
    declared: SearchSpace,
    metric: str,
    fingerprint: str | None,
    seeding: Callable[[], Seeding],
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
