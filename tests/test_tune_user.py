"""naggs-tune as a new user meets it: a typo in the metric, their own module, factory mode, list-valued choices.

Through the real CLI entry point (``naggs_lightning.tune.cli.main``) and real SQLite files.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from naggs_lightning import NAGGS
from naggs_lightning.cli import main as naggs_train
from naggs_lightning.tasks import DigitsDataModule, LogisticRegression
from naggs_lightning.tune import keys, run
from naggs_lightning.tune.cli import main
from naggs_lightning.tune.storage import open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
QUIET_TRAIN = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _recipe(path: Path, model: dict, max_epochs: int = 1) -> Path:
    config = {
        "seed_everything": 0,
        "model": model,
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 256}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


LOGREG = {"class_path": "naggs_lightning.tasks.LogisticRegression", "init_args": {"lr": 0.5, "mu": 1.0, "gamma": 1.0}}


def _args(recipe: Path, db: Path, *extra: str) -> list[str]:
    return ["--config", str(recipe), "--storage", f"sqlite:///{db}", "--study-name", "s", "--quiet", *extra]


def _studies(db: Path) -> list[str]:
    return optuna.get_all_study_names(open_storage(f"sqlite:///{db}")) if db.exists() else []


def test_a_metric_typo_writes_nothing_and_the_corrected_command_then_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # naggs-tune-out/ goes here
    recipe, db = _recipe(tmp_path / "r.yaml", LOGREG), tmp_path / "t.db"
    assert main(_args(recipe, db, "--metric", "val_acuracy", "--n-trials", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "naggs-tune: error: the metric 'val_acuracy' is not logged during validation; logged: ['val_acc', 'val_loss']"
    )
    assert _studies(db) == []  # no study, no enqueued trial
    assert main(_args(recipe, db, "--metric", "val_acc", "--n-trials", "1", "--no-seed")) == 0
    assert _studies(db) == ["s"]


MODULE = '''
from naggs_lightning.tasks import LogisticRegression


class {name}(LogisticRegression):
    """A user's own model, in a file next to the config."""
'''


@pytest.mark.slow
def test_a_class_path_in_the_working_directory_is_importable(tmp_path, monkeypatch, capsys):
    name = "UserNet"
    module = f"user_module_{tmp_path.name.replace('-', '_')}"  # unique: this process may import it
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(MODULE.format(name=name)))
    recipe = _recipe(tmp_path / "r.yaml", {**LOGREG, "class_path": f"{module}.{name}"})
    monkeypatch.chdir(tmp_path)
    # As a console script starts: its own folder first on sys.path, not the working directory.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), ".")])
    code = main(_args(recipe, tmp_path / "t.db", "--n-trials", "1", "--no-seed", "--output-dir", "out"))
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "out" / "best.yaml").read_text()
    assert "from the folder the study ran in" in text and "naggs-train fit --config out/best.yaml\n" in text
    best = yaml.safe_load(text)
    assert best["model"]["class_path"] == f"{module}.{name}"
    naggs_train(["fit", "--config", "out/best.yaml", "--trainer.logger=false", "--trainer.max_epochs=1", *QUIET_TRAIN])
    # Run from inside out/, the module is not importable: one line, status 2, for both commands.
    monkeypatch.chdir(tmp_path / "out")
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        naggs_train(["fit", "--config", "best.yaml"])
    problem = f"class_path {module}.{name}: cannot import '{module}' (No module named '{module}'); run the command"
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"naggs-train: error: {problem}")
    assert main(_args(Path("best.yaml"), tmp_path / "t.db", "--n-trials", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"naggs-tune: error: {problem}") and err.count("\n") == 1


class OwnOptimizerNet(LogisticRegression):
    """A model whose factory passes only lr: its NAGGS takes mu = 0.5 and gamma = 2.0 from the class itself."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__(lr=lr, mu=0.5, gamma=2.0)
        self.save_hyperparameters()

    def configure_optimizers(self):
        return NAGGS(self.parameters(), lr=self.lr, mu=0.5, gamma=2.0)


@pytest.mark.slow
def test_factory_mode_reads_mu_and_gamma_from_the_models_optimizer_and_writes_a_runnable_best_config(
    tmp_path, monkeypatch
):
    out = tmp_path / "out"
    study = run(
        model=lambda p: OwnOptimizerNet(lr=p["lr"]),
        datamodule=DigitsDataModule(batch_size=256),
        trainer_kwargs={"max_epochs": 1, "accelerator": "cpu", "devices": 1},
        storage=f"sqlite:///{tmp_path / 't.db'}",
        n_trials=2,
        seed_trials=1,
        output_dir=out,
        verbose=False,
    )
    seed = study.user_attrs[keys.STUDY_SEED]
    assert (seed["mu"], seed["gamma"]) == (0.5, 0.5)  # the optimizer's mu; gamma seeded at mu (it relaxes there)
    assert all(set(t.params) == {keys.ALPHA_RATIO} for t in study.trials)  # mu and gamma are not searched
    params = yaml.safe_load((out / "best_params.yaml").read_text())["params"]
    assert params == {"lr": study.best_trial.user_attrs[keys.ALPHA], "mu": 0.5, "gamma": 2.0}
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["class_path"] == f"{__name__}.OwnOptimizerNet"
    assert best["model"]["init_args"] == {"lr": study.best_trial.user_attrs[keys.ALPHA]}
    assert best["data"]["class_path"] == "naggs_lightning.tasks.digits.DigitsDataModule"
    monkeypatch.chdir(tmp_path)
    naggs_train(["fit", "--config", str(out / "best.yaml"), "--trainer.logger=false", *QUIET_TRAIN])


def test_factory_mode_refuses_a_named_mu_range_the_factory_ignores(tmp_path):
    with pytest.raises(Exception, match=r"the model factory ignores params\['mu'\]"):
        run(
            model=lambda p: OwnOptimizerNet(lr=p["lr"]),
            datamodule=DigitsDataModule(batch_size=256),
            trainer_kwargs={"max_epochs": 1, "accelerator": "cpu", "devices": 1},
            space={"mu": "0.01..1:log"},
            storage=f"sqlite:///{tmp_path / 't.db'}",
            n_trials=1,
            verbose=False,
        )
    assert not (tmp_path / "t.db").exists()


@pytest.mark.slow
def test_list_valued_choices_from_the_command_line(tmp_path, capsys):
    mlp = {"class_path": "naggs_lightning.tasks.MLP", "init_args": {"hidden_sizes": [8], "lr": 0.5}}
    recipe, db, out = _recipe(tmp_path / "r.yaml", mlp), tmp_path / "t.db", tmp_path / "out"
    extra = ["--param", "model.init_args.hidden_sizes=[[8], [12, 6]]", "--n-trials", "4", "--output-dir", str(out)]
    assert main(_args(recipe, db, "--sampler", "random", "--sampler-seed", "1", *extra)) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert all(t.state in FINISHED for t in study.trials)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["init_args"]["hidden_sizes"] in ([8], [12, 6])
    # The seeded trials keep the configured layer sizes; the others may take either.
    assert [t.params["model.init_args.hidden_sizes"] for t in study.trials[:3]] == ["[8]"] * 3
