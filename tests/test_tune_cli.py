"""naggs-tune on LightningCLI configs: end to end, best.yaml, resume after a kill, two processes, clear errors.

Real processes and real SQLite files; the shipped digits logistic regression keeps each trial well
under a second. (Many workers on PostgreSQL and killed-worker heartbeats: tests/test_scale_tune.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from naggs_lightning.cli import main as naggs_train
from naggs_lightning.lightning_cli import build_cli
from naggs_lightning.tune import keys
from naggs_lightning.tune.cli import main
from naggs_lightning.tune.space import DEFAULT_RANGES
from naggs_lightning.tune.storage import open_storage

NAGGS_TUNE = [sys.executable, "-m", "naggs_lightning.tune.cli"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _recipe(path: Path, max_epochs: int = 2) -> Path:
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "naggs_lightning.tasks.LogisticRegression",
            "init_args": {"in_features": 64, "num_classes": 10},
        },
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 128}},
        "optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.5, "mu": 1.0, "gamma": 1.0}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _args(recipe: Path, db: Path, *extra: str, name: str = "digits") -> list[str]:
    return ["--config", str(recipe), "--storage", f"sqlite:///{db}", "--study-name", name, "--quiet", *extra]


def _snapshot(db: Path, name: str = "digits"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return study.user_attrs, [(t.number, t.state, t.params, t.value) for t in study.trials]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A 4-trial study made through naggs-tune; returns (recipe, database, output directory)."""
    tmp = tmp_path_factory.mktemp("study")
    recipe, db, out = _recipe(tmp / "recipe.yaml"), tmp / "tune.db", tmp / "out"
    assert main(_args(recipe, db, "--n-trials", "4", "--sampler-seed", "0", "--output-dir", str(out))) == 0
    return recipe, db, out


@pytest.mark.slow
def test_cli_study_writes_a_best_yaml_that_naggs_train_trains(finished_study, tmp_path, monkeypatch):
    recipe, db, out = finished_study
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    trials = study.trials
    assert len(trials) == 4 and all(t.state in FINISHED for t in trials)
    assert trials[0].user_attrs[keys.SEEDED] is True
    seed = study.user_attrs[keys.STUDY_SEED]
    # the seed (the bracket's best step above the theory's), cut to alpha's default range
    assert trials[0].user_attrs[keys.ALPHA] == pytest.approx(min(seed["alpha"], DEFAULT_RANGES["lr"].high))
    # mu comes from the recipe (1.0, inside the default range); gamma is seeded at mu.
    assert trials[0].params["optimizer.init_args.mu"] == 1.0 == seed["mu"]
    assert "optimizer.init_args.gamma" not in trials[0].params  # not searched: it starts at mu and relaxes to it

    best = study.best_trial
    config = yaml.safe_load((out / "best.yaml").read_text())
    recipe_config = yaml.safe_load(recipe.read_text())
    assert config["optimizer"]["init_args"]["lr"] == best.user_attrs[keys.ALPHA]
    assert config["optimizer"]["init_args"]["mu"] == best.params["optimizer.init_args.mu"]
    assert config["optimizer"]["init_args"]["gamma"] == seed["mu"]  # pinned at the seed's mu
    assert config["model"] == recipe_config["model"] and config["trainer"] == recipe_config["trainer"]
    assert {p.name for p in out.iterdir()} >= {
        "best.yaml",
        "best_params.yaml",
        "history.png",
        "alpha.png",
        "importances.png",
    }

    cli = build_cli(["--config", str(out / "best.yaml")], run=False)
    assert cli.model.configure_optimizers().param_groups[0]["lr"] == best.user_attrs[keys.ALPHA]
    monkeypatch.chdir(tmp_path)
    naggs_train(
        [
            "fit",
            "--config",
            str(out / "best.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
        ]
    )


@pytest.mark.slow
def test_optuna_trials_shows_the_alpha_each_trial_trained_with(finished_study):
    recipe, db, out = finished_study
    optuna_cli = [sys.executable, "-c", "import sys; from optuna.cli import main; sys.exit(main())"]
    shown = subprocess.run(
        [*optuna_cli, "trials", "--study-name", "digits", "--storage", f"sqlite:///{db}", "-f", "json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    records = json.loads(shown.stdout)
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    assert [r["number"] for r in records] == [t.number for t in study.trials]
    for record, trial in zip(records, study.trials, strict=True):
        # the searched ratio in params, the alpha the trial trained with beside it
        assert record["params"][keys.ALPHA_RATIO] == trial.params[keys.ALPHA_RATIO]
        assert record["user_attrs"][keys.ALPHA] == trial.user_attrs[keys.ALPHA] > 0


@pytest.mark.slow
def test_rerunning_a_finished_study_changes_nothing(finished_study):
    recipe, db, out = finished_study
    before = _snapshot(db)
    assert main(_args(recipe, db, "--n-trials", "4", "--output-dir", str(out))) == 0
    assert _snapshot(db) == before


def _training(proc: subprocess.Popen, db: Path, min_finished: int, name: str = "digits"):
    """The trial ``proc`` is training (RUNNING, parameters chosen, its worker id) once ``min_finished`` trials have
    finished, read from one snapshot of the storage; ``None`` otherwise."""
    if not db.exists() or name not in optuna.get_all_study_names(open_storage(f"sqlite:///{db}")):
        return None
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials
    if sum(t.state in FINISHED for t in trials) < min_finished:
        return None
    for t in trials:
        # keys.ALPHA is written after the last parameter: a trial with only some of them is still being set up
        chosen = keys.ALPHA in t.user_attrs
        if t.state == TrialState.RUNNING and chosen and t.user_attrs.get(keys.WORKER, "").endswith(f":{proc.pid}"):
            return t
    return None


def _wait_for_training(proc: subprocess.Popen, db: Path, *, min_finished: int = 0) -> optuna.trial.FrozenTrial:
    """Poll the storage until ``proc`` trains a trial (after ``min_finished`` finished ones); return that trial.

    Polled every 50 ms and trials last seconds: the trial returned has just started and is still training
    when the caller signals the process (the caller checks this in the storage afterwards).
    """
    deadline = time.monotonic() + 180
    while (trial := _training(proc, db, min_finished)) is None:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the worker never showed a running trial"
        time.sleep(0.05)
    return trial


@pytest.mark.slow
def test_resume_after_killing_the_process_mid_trial(tmp_path):
    recipe, db = _recipe(tmp_path / "recipe.yaml", max_epochs=8), tmp_path / "tune.db"
    cmd = [
        *NAGGS_TUNE,
        *_args(recipe, db, "--n-trials", "4", "--seed-trials", "3", "--heartbeat-interval", "1", "--pruner", "none"),
    ]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Killed while the storage shows it training a trial of its own: that trial is cut short.
        victim = _wait_for_training(proc, db, min_finished=1)
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up, like a crashed machine
        proc.wait(timeout=30)
    attrs, killed_at = _snapshot(db)
    assert [state for number, state, _, _ in killed_at if number == victim.number] == [TrialState.RUNNING]
    finished_before = [t for t in killed_at if t[1] in FINISHED]
    assert 1 <= len(finished_before) < 4

    rerun = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    attrs_after, trials = _snapshot(db)
    assert attrs_after == attrs  # the seed was not recomputed
    by_number = {t[0]: t for t in trials}
    assert all(by_number[t[0]] == t for t in finished_before)  # finished trials preserved exactly
    assert sum(t[1] in FINISHED for t in trials) == 4
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert sum(bool(t.user_attrs.get(keys.SEEDED)) for t in study.trials if t.state in FINISHED) == 3
    # The killed trial is failed by its stale heartbeat and its point trained again, once.
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.number == victim.number and failed.params == victim.params
    (retry,) = [t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed.number]
    assert retry.params == victim.params and retry.state in FINISHED


@pytest.mark.slow
def test_ctrl_c_mid_trial_exits_130_fails_the_trial_and_resume_trains_it_again(tmp_path):
    recipe, db = _recipe(tmp_path / "recipe.yaml", max_epochs=8), tmp_path / "tune.db"
    cmd = [*NAGGS_TUNE, *_args(recipe, db, "--n-trials", "3", "--seed-trials", "2", "--pruner", "none")]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        victim = _wait_for_training(proc, db)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("naggs-tune:")]
    assert line == (
        "naggs-tune: interrupted; finished trials are kept in the storage: re-run the same command to resume "
        "study 'digits'"
    )
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = study.trials[victim.number]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs.get(keys.SEEDED)
    (queued,) = [t for t in study.trials if t.user_attrs.get(keys.RETRY_OF) == victim.number]
    assert queued.state == TrialState.WAITING and queued.user_attrs.get(keys.SEEDED)

    rerun = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 3 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retrained = study.trials[queued.number]
    assert retrained.state in FINISHED and retrained.params == interrupted.params == victim.params
    assert sum(bool(t.user_attrs.get(keys.SEEDED)) for t in finished) == 2  # both seeded points trained once


@pytest.mark.slow
def test_two_processes_on_one_storage_run_exactly_n_distinct_trials(tmp_path):
    recipe, db = _recipe(tmp_path / "recipe.yaml", max_epochs=1), tmp_path / "tune.db"
    cmd = [*NAGGS_TUNE, *_args(recipe, db, "--n-trials", "6", "--seed-trials", "3", "--pruner", "none")]
    procs = [
        subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    finished = study.get_trials(states=FINISHED)
    # Invariants only (which process ran which trial is up to the scheduler):
    assert len(finished) == 6 and len({t.number for t in finished}) == 6
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 6, "a point was trained twice"
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert {t.user_attrs[keys.WORKER] for t in finished} <= {f"{os.uname().nodename}:{p.pid}" for p in procs}
    assert sum(bool(t.user_attrs.get(keys.SEEDED)) for t in finished) == 3  # seeded once, not per process
    # Anything else is a trial that lost the race for the last slot and never trained.
    assert all(t.user_attrs.get(keys.SURPLUS) for t in study.trials if t.state not in FINISHED)


@pytest.mark.slow
def test_processes_asking_at_the_same_instant_never_claim_the_same_enqueued_trial(tmp_path):
    url, start, waiting = f"sqlite:///{tmp_path / 'claims.db'}", tmp_path / "go", 60
    study = optuna.create_study(study_name="claims", storage=url)
    for i in range(waiting):
        study.enqueue_trial({"x": float(i)})
    script = Path(__file__).parent / "scripts" / "claim_waiting.py"
    cmd = [sys.executable, str(script), url, str(start), str(waiting // 2)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(5)  # every process has imported and opened the study: they ask at once
    start.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    claimed = [int(n) for out in outputs for n in out.split()]
    # Optuna's own RDBStorage let 2-9 of these 90 asks claim a trial another process had (seen on this machine).
    assert len(claimed) == 90 and len(set(claimed)) == 90
    assert {t.number for t in study.get_trials(states=(TrialState.RUNNING,))} == set(claimed)


# ----------------------------------------------------------------------------------------------------
# Clear errors: exit status 2, one line naming the problem, no study created or changed.


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("naggs-tune: error: ") and "\n" not in err, err
    return err


def test_malformed_config_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: naggs_lightning.tasks.MLP\n   init_args: {}\n")
    db = tmp_path / "tune.db"
    assert main(_args(bad, db)) == 2
    assert "is not valid YAML (line 3" in _error(capsys)
    assert main(_args(tmp_path / "missing.yaml", db)) == 2
    assert "cannot read config" in _error(capsys)
    assert not db.exists()


@pytest.mark.slow
def test_config_the_parser_rejects_is_a_one_line_error(tmp_path, capsys):
    db = tmp_path / "tune.db"
    recipe = _recipe(tmp_path / "recipe.yaml")
    config = yaml.safe_load(recipe.read_text())
    config["model"]["class_path"] = "naggs_lightning.tasks.NoSuchModel"
    (tmp_path / "nosuch.yaml").write_text(yaml.safe_dump(config))
    assert main(_args(tmp_path / "nosuch.yaml", db)) == 2
    assert "NoSuchModel" in _error(capsys)
    assert main(_args(recipe, db, "--param", "optimizer.init_args.momentum=0.1..0.9")) == 2
    err = _error(capsys)
    assert "parameter 'optimizer.init_args.momentum' does not fit the config" in err
    assert "Option 'momentum' is not accepted" in err
    assert main(_args(recipe, db, "--param", "trainer.strategy=ddp", "--param", "trainer.devices=2")) == 2
    assert "trials on 2 processes need trainer.strategy: ddp_spawn (strategy DDPStrategy" in _error(capsys)
    assert not db.exists()


def test_bad_space_and_storage_are_one_line_errors(tmp_path, capsys):
    recipe, db = _recipe(tmp_path / "recipe.yaml"), tmp_path / "tune.db"
    assert main(_args(recipe, db, "--param", "lr")) == 2
    assert "--param expects NAME=SPEC" in _error(capsys)
    assert main(_args(recipe, db, "--param", "learning_rate=0.1..1")) == 2
    assert "unknown parameter 'learning_rate'" in _error(capsys)
    assert main(_args(recipe, db, "--param", "mu={low: 1, high: 0.1}")) == 2
    assert "optimizer.init_args.mu: needs finite low < high" in _error(capsys)
    assert not db.exists()


@pytest.mark.slow
def test_unreachable_storage_is_a_one_line_error(tmp_path, capsys):
    recipe = _recipe(tmp_path / "recipe.yaml")
    url = "postgresql+psycopg2://tuner:s3cret@127.0.0.1:9/optuna"
    assert main(["--config", str(recipe), "--storage", url, "--quiet"]) == 2
    err = _error(capsys)
    assert "cannot reach storage postgresql+psycopg2://tuner:***@127.0.0.1:9/optuna" in err and "s3cret" not in err


@pytest.mark.slow
def test_rejected_runs_leave_an_existing_study_untouched(finished_study, capsys):
    recipe, db, out = finished_study
    before = _snapshot(db)
    cases = [
        (["--param", "mu=0.1"], "different search space (differs in optimizer.init_args.mu)"),
        (["--metric", "val_loss"], "was made to maximize, not to minimize"),
        (["--param", "optimizer.init_args.nonsense=1..2"], "'optimizer.init_args.nonsense' does not fit the config"),
    ]
    for extra, needle in cases:
        assert main(_args(recipe, db, "--n-trials", "6", *extra)) == 2
        assert needle in _error(capsys)
    config = yaml.safe_load(recipe.read_text())
    config["trainer"]["max_epochs"] = 3
    changed = recipe.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(config))
    assert main(_args(changed, db, "--n-trials", "6")) == 2
    assert "different config" in _error(capsys)
    assert _snapshot(db) == before
