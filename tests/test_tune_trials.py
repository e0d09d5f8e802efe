"""The user's callbacks and logger inside naggs-tune trials, through the real CLI on real SQLite studies.

Each trial logs to ``<output_dir>/trials/<name>/trial_<n>`` with its parameters as hparams, the best trial's
checkpoints are the only ones kept, EarlyStopping ends a trial that still reports its metric, and a callback
that cannot work in a trial is refused before anything is written.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from naggs_lightning.tune import keys
from naggs_lightning.tune.cli import main
from naggs_lightning.tune.storage import open_storage

LOGREG = {"class_path": "naggs_lightning.tasks.LogisticRegression", "init_args": {"lr": 0.5, "mu": 1.0, "gamma": 1.0}}
MAX_EPOCHS = 4


def _recipe(path: Path, trainer: dict) -> Path:
    config = {
        "seed_everything": 0,
        "model": LOGREG,
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 256}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": MAX_EPOCHS, "log_every_n_steps": 2, **trainer},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _tune(recipe: Path, tmp_path: Path, *extra: str) -> int:
    db, out = tmp_path / "t.db", tmp_path / "out"
    args = ["--config", str(recipe), "--storage", f"sqlite:///{db}", "--study-name", "s", "--output-dir", str(out)]
    return main([*args, "--quiet", "--warmup-steps", "5", "--curvature-batches", "1", *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


TRAINER = {
    "logger": [
        {"class_path": "CSVLogger", "init_args": {"save_dir": "ignored"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"},
    ],
    "callbacks": [
        {"class_path": "LearningRateMonitor"},
        {"class_path": "naggs_lightning.callbacks.GammaMonitor"},
        {"class_path": "ModelCheckpoint", "init_args": {"monitor": "val_acc", "mode": "max", "dirpath": "ignored"}},
        # patience 0 and an improvement no metric can make: stops after the second validation
        {
            "class_path": "EarlyStopping",
            "init_args": {"monitor": "val_acc", "mode": "max", "patience": 0, "min_delta": 10},
        },
    ],
}


@pytest.mark.slow
def test_each_trial_runs_with_the_configs_loggers_and_callbacks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path / "r.yaml", TRAINER)
    code = _tune(recipe, tmp_path, "--n-trials", "2", "--seed-trials", "2", "--pruner", "none")
    assert code == 0, capsys.readouterr()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 't.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    trials = tmp_path / "out" / "trials"
    for trial in study.trials:
        folder = trials / "lightning_logs" / f"trial_{trial.number}"
        rows = _rows(folder / "metrics.csv")
        lr_steps = [r["step"] for r in rows if r["lr-NAGGS"]]
        assert lr_steps and [r["step"] for r in rows if r["lr-NAGGS-gamma"]] == lr_steps  # GammaMonitor, same steps
        assert float(next(r for r in rows if r["lr-NAGGS"])["lr-NAGGS"]) == pytest.approx(trial.user_attrs[keys.ALPHA])
        assert max(int(r["epoch"]) for r in rows if r["epoch"]) == 1 < MAX_EPOCHS - 1  # EarlyStopping
        assert list(folder.glob("events.out.tfevents.*"))  # TensorBoardLogger, same folder
        hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
        assert hparams["trial"] == trial.number
        assert hparams["model.init_args.lr"] == pytest.approx(trial.user_attrs[keys.ALPHA])
        assert (hparams["model.init_args.mu"], hparams["model.init_args.gamma"]) == (1.0, 1.0)
    # The best trial's checkpoints only; nothing where the config's own paths point.
    assert [p.name for p in (trials / "checkpoints").iterdir()] == [f"trial_{study.best_trial.number}"]
    assert list((trials / "checkpoints" / f"trial_{study.best_trial.number}").glob("*.ckpt"))
    assert not (tmp_path / "ignored").exists()
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert {k: best["trainer"][k] for k in ("logger", "callbacks")} == TRAINER  # as the user wrote them


@pytest.mark.slow
def test_a_callback_that_needs_a_logger_gives_a_config_without_one_lightnings_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path / "r.yaml", {"callbacks": [{"class_path": "naggs_lightning.callbacks.GammaMonitor"}]})
    assert _tune(recipe, tmp_path, "--n-trials", "1", "--no-seed", "--pruner", "none") == 0, capsys.readouterr()
    folder = tmp_path / "out" / "trials" / "lightning_logs" / "trial_0"
    assert list(folder.glob("events.out.tfevents.*")) or (folder / "metrics.csv").exists()
    assert not (tmp_path / "out" / "trials" / "checkpoints").exists()  # no ModelCheckpoint: no checkpoints


@pytest.mark.slow
def test_a_config_without_logger_or_logging_callback_writes_no_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path / "r.yaml", {"max_epochs": 1})
    assert _tune(recipe, tmp_path, "--n-trials", "1", "--no-seed", "--pruner", "none") == 0, capsys.readouterr()
    assert not (tmp_path / "out" / "trials").exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "trainer, needle",
    [
        (
            {"logger": False, "callbacks": [{"class_path": "LearningRateMonitor"}]},
            "trainer.callbacks: LearningRateMonitor logs through the trainer's logger and the config sets "
            "trainer.logger: false",
        ),
        (
            {"callbacks": [{"class_path": "naggs_lightning.TheoryLRFinder"}]},
            "trainer.callbacks: TheoryLRFinder sets the learning rate when training starts",
        ),
    ],
)
def test_a_callback_that_cannot_work_in_a_trial_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, trainer, needle
):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path / "r.yaml", trainer)
    assert _tune(recipe, tmp_path, "--n-trials", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"naggs-tune: error: {needle}") and err.count("\n") == 1
    db = tmp_path / "t.db"
    assert not db.exists() or optuna.get_all_study_names(open_storage(f"sqlite:///{db}")) == []
    assert not (tmp_path / "out").exists()
