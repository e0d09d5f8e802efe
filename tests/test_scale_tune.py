"""Tuning at scale with real processes: several ``naggs-tune`` workers on one PostgreSQL study, and bad input.

(That a pruning decision reaches every DDP rank of a trial is checked in ``test_scale_ddp.py``, which
starts its two ranks once for all its checks.)

The PostgreSQL tests need a server (``bash .ci/postgres.sh`` starts one on localhost); they read its URL
from ``NAGGS_TEST_POSTGRES_URL`` (default ``postgresql+psycopg2://naggs:naggs@localhost:5432/naggs``; the
driver is named because SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, while the ``postgres``
extra installs psycopg2) and skip when it cannot be reached. Each test works in a study of its own name
and deletes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from naggs_lightning.tune import keys

POSTGRES_URL = os.environ.get("NAGGS_TEST_POSTGRES_URL", "postgresql+psycopg2://naggs:naggs@localhost:5432/naggs")
NAGGS_TUNE = [sys.executable, "-m", "naggs_lightning.tune.cli"]


# ---------------------------------------------------------------------------------------------------
# PostgreSQL


def _postgres_reachable(url: str) -> str | None:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # no driver, no server, bad credentials: all mean "skip"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


@pytest.fixture(scope="module")
def postgres_url() -> str:
    problem = _postgres_reachable(POSTGRES_URL)
    if problem is not None:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable ({problem}); run `bash .ci/postgres.sh`")
    return POSTGRES_URL


@pytest.fixture
def study_name(postgres_url):
    name = f"naggs-test-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=postgres_url)


def _recipe(tmp_path: Path, max_epochs: int, hidden: int = 32) -> Path:
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "naggs_lightning.tasks.MLP",
            "init_args": {"hidden_sizes": [hidden, hidden], "lr": 0.5},
        },
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 64}},
        "optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.5, "mu": 1.0, "gamma": 1.0}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _worker(recipe: Path, url: str, study: str, n_trials: int, name: str) -> subprocess.Popen:
    cmd = [*NAGGS_TUNE, "--config", str(recipe), "--storage", url, "--study-name", study]
    cmd += ["--n-trials", str(n_trials), "--param", "lr=0.05..2.0:log", "--param", "mu=1.0", "--param", "gamma=1.0"]
    cmd += ["--pruner", "none", "--heartbeat-interval", "1", "--output-dir", str(recipe.parent / name)]
    log = (recipe.parent / f"{name}.log").open("w")
    # Unbuffered: the test reads the logs while the workers run. One thread each: two workers share the cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=recipe.parent, env=env)


def _trials_run_by(log: Path) -> set[int]:
    """Trial numbers a worker reports as finished by itself (``trial N...`` lines)."""
    return {int(m) for m in re.findall(r"^trial (\d+)", log.read_text(), flags=re.MULTILINE)}


def _running_trial_of(proc: subprocess.Popen, url: str, study_name: str) -> optuna.trial.FrozenTrial | None:
    """The trial ``proc`` is training, as the storage shows it (RUNNING, parameters chosen, its worker id)."""
    for t in _running(url, study_name):
        if t.user_attrs.get(keys.WORKER, "").endswith(f":{proc.pid}"):
            return t
    return None


def _running(url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """Trials past suggest(): training."""
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:  # not created yet
        return []
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.params]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_two_workers_share_a_study_and_survive_a_killed_worker(tmp_path, postgres_url, study_name):
    """Two ``naggs-tune`` workers on one study; one is killed mid-trial once both are training.

    The killed worker's trial stops beating, the survivor's next look at the study marks it FAIL and
    re-queues its point (``RetryHeartbeatStaleTrialCallback``), and the survivor finishes the study
    with exactly ``n_trials`` finished trials, each a distinct point.
    """
    # Long enough trials (about 2 s each on an idle core) and enough of them that, on a fast idle
    # machine too, the victim is still mid-study when both workers are seen training.
    n_trials = 6
    recipe = _recipe(tmp_path, max_epochs=15)
    victim = _worker(recipe, postgres_url, study_name, n_trials, "victim")
    survivor = _worker(recipe, postgres_url, study_name, n_trials, "survivor")
    logs = {name: tmp_path / f"{name}.log" for name in ("victim", "survivor")}

    # Kill the victim once it has finished a trial and the storage shows it training one of its own.
    deadline = time.monotonic() + 240
    while not (_trials_run_by(logs["victim"]) and (killed := _running_trial_of(victim, postgres_url, study_name))):
        assert victim.poll() is None and survivor.poll() is None, logs["victim"].read_text()[-3000:]
        assert time.monotonic() < deadline, "the victim never showed a running trial"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # no clean-up: its trial stays RUNNING until the heartbeat goes stale
    victim.wait(timeout=30)
    running = [t for t in _running(postgres_url, study_name) if t.number == killed.number]
    assert running, "the victim's trial ended before the kill landed"
    assert survivor.wait(timeout=300) == 0, logs["survivor"].read_text()[-3000:]

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(finished) == n_trials
    assert len({t.number for t in finished}) == n_trials
    assert len({tuple(sorted(t.params.items())) for t in finished}) == n_trials, "a point was trained twice"

    by_victim, by_survivor = _trials_run_by(logs["victim"]), _trials_run_by(logs["survivor"])
    assert by_victim and by_survivor and not by_victim & by_survivor
    assert by_victim | by_survivor == {t.number for t in finished}
    # The failed trial is the one the victim was training; the survivor re-ran its point.
    assert failed.number == killed.number and failed.number not in by_victim | by_survivor
    (retry,) = [t for t in finished if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed.number]
    assert retry.params == failed.params and retry.number in by_survivor


def _snapshot(url: str, study_name: str) -> tuple:
    study = optuna.load_study(study_name=study_name, storage=url)
    trials = [(t.number, t.state, t.params, t.value) for t in study.trials]
    return trials, study.user_attrs, sorted(optuna.get_all_study_names(url))


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, postgres_url):
    """A one-trial study made by ``naggs-tune`` (in this process), and the arguments that made it."""
    from naggs_lightning.tune.cli import main

    tmp_path = tmp_path_factory.mktemp("tune")
    name = f"naggs-test-{uuid.uuid4().hex[:12]}"
    args = ["--config", str(_recipe(tmp_path, max_epochs=1, hidden=8)), "--storage", postgres_url, "--study-name", name]
    args += ["--param", "lr=0.05..2.0:log", "--param", "mu=1.0", "--param", "gamma=1.0", "--quiet", "--no-seed"]
    args += ["--output-dir", str(tmp_path / "out")]
    assert main([*args, "--n-trials", "1"]) == 0
    yield tmp_path, args, _snapshot(postgres_url, name)
    optuna.delete_study(study_name=name, storage=postgres_url)


def _bad_input(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Bad invocations of a resumed study -> a pattern its one-line error must match."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  class_path: naggs_lightning.tasks.MLP\n  init_args: {hidden_sizes: [8, 8]\n")
    unknown_class = tmp_path / "unknown_class.yaml"
    unknown_class.write_text(yaml.safe_dump({"model": {"class_path": "naggs_lightning.tasks.NoSuchModel"}}))
    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text(yaml.safe_dump({"trainer": {"max_epochs": "many"}}))
    return {
        "unknown-parameter": (["--param", "optimizer.init_args.momentum=0.1..0.9"], r"\bmomentum\b"),
        "malformed-yaml": (["--config", str(broken)], r"broken\.yaml' is not valid YAML \(line 4"),
        "unknown-class": (["--config", str(unknown_class)], r"NoSuchModel"),
        "wrong-type": (["--config", str(bad_type)], r"trainer\.max_epochs.*int"),
        "other-space": (
            ["--param", "gamma=0.5..2.0"],
            r"different search space \(differs in optimizer\.init_args\.gamma\)",
        ),
        "bad-option": (["--n-trials", "0"], r"n_trials must be an integer >= 1"),
    }


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("naggs-tune: error:")]


@pytest.mark.slow
def test_bad_tuner_input_exits_2_and_leaves_the_study_intact(finished_study, postgres_url, capsys):
    from naggs_lightning.tune.cli import main

    tmp_path, args, before = finished_study
    (study_name,) = [args[i + 1] for i, a in enumerate(args) if a == "--study-name"]
    for case, (extra, _) in _bad_input(tmp_path).items():
        assert main([*args, "--n-trials", "2", *extra]) == 2, case
        assert len(_error_lines(capsys.readouterr().err)) == 1, case
        assert _snapshot(postgres_url, study_name) == before, f"{case} changed the storage"


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["unknown-parameter", "malformed-yaml", "unknown-class", "wrong-type", "other-space", "bad-option"],
)
def test_bad_tuner_input_message_names_the_problem(finished_study, case, capsys):
    from naggs_lightning.tune.cli import main

    tmp_path, args, _ = finished_study
    extra, pattern = _bad_input(tmp_path)[case]
    assert main([*args, "--n-trials", "2", *extra]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert re.search(pattern, line), line
