"""naggs-train: optimizer short forms and class paths, help, the model's fallback optimizer, scheduler intervals."""

import contextlib
import io
import warnings

import pytest
import torch
import yaml

from naggs_lightning.lightning_cli import build_cli
from naggs_lightning.optim import NAGGS, AccSGD, AdaNAGGS
from naggs_lightning.tasks import MLP, DigitsDataModule, LogisticRegression

QUIET = (
    "--trainer.logger false --trainer.enable_checkpointing false --trainer.enable_progress_bar false "
    "--trainer.enable_model_summary false --trainer.limit_val_batches 1"
)


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    # LightningCLI warns when it is given args while sys.argv holds pytest's own arguments.
    monkeypatch.setattr("sys.argv", ["naggs-train"])


def _fit(tmp_path, args: str, steps=2):
    """``naggs-train fit`` with ``args`` (split on spaces) for ``steps`` optimizer steps."""
    extra = ["--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(tmp_path)]
    return build_cli(["fit", *args.split(), *QUIET.split(), *extra])


def _help(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        build_cli([*args])
    assert exit_info.value.code == 0
    return out.getvalue()


def test_short_optimizer_name_with_its_arguments(tmp_path):
    cli = _fit(
        tmp_path,
        "--model MLP --data DigitsDataModule "
        "--optimizer NAGGS --optimizer.lr 0.7 --optimizer.mu 0.5 --optimizer.gamma 2.0",
    )
    assert isinstance(cli.model, MLP) and isinstance(cli.datamodule, DigitsDataModule)
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, NAGGS)
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["mu"]) == (0.7, 0.5)
    assert optimizer.param_groups[0]["gamma"] != 2.0  # gamma evolved towards mu over the steps
    assert cli.trainer.global_step == 2


def test_short_adanaggs_name_with_its_arguments(tmp_path):
    cli = _fit(
        tmp_path,
        "--model MLP --data DigitsDataModule "
        "--optimizer AdaNAGGS --optimizer.lr 0.05 --optimizer.mu 2.0 --optimizer.gamma 3.0 --optimizer.beta2 0.99",
    )
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, AdaNAGGS)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["mu"], group["beta2"]) == (0.05, 2.0, 0.99)
    assert 2.0 < group["gamma"] < 3.0  # gamma evolved towards mu over the steps
    assert all(float(s["step"]) == 2 for s in optimizer.state.values())
    assert cli.trainer.global_step == 2


def test_short_accsgd_name(tmp_path):
    cli = _fit(tmp_path, "--model LogisticRegression --data DigitsDataModule --optimizer AccSGD --optimizer.kappa 100")
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, AccSGD) and optimizer.param_groups[0]["kappa"] == 100.0
    assert all("wbar" in optimizer.state[p] for p in cli.model.parameters())


def test_full_class_paths_in_a_config_dict_without_running():
    config = {
        "model": {"class_path": "naggs_lightning.tasks.LogisticRegression", "init_args": {"lr": 0.3}},
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 32}},
        "optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.25, "mu": 0.1, "gamma": 0.4}},
        "trainer": {"logger": False, "enable_checkpointing": False, "max_steps": 1},
    }
    cli = build_cli(config, run=False, save_config_callback=None)
    assert isinstance(cli.model, LogisticRegression) and cli.datamodule.batch_size == 32
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, NAGGS)
    assert {k: optimizer.param_groups[0][k] for k in ("lr", "mu", "gamma")} == {"lr": 0.25, "mu": 0.1, "gamma": 0.4}


def test_without_an_optimizer_section_the_model_fallback_is_used(tmp_path):
    cli = _fit(tmp_path, "--model MLP --model.init_args.lr 0.6 --model.init_args.mu 0.2 --data DigitsDataModule")
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, NAGGS)
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["mu"]) == (0.6, 0.2)


def test_injected_optimizer_replaces_the_fallback_without_a_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = _fit(tmp_path, "--model MLP --data DigitsDataModule --optimizer SGD --optimizer.lr 0.01")
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)
    assert not [w for w in caught if "configure_optimizers` will be overridden" in str(w.message)]


def test_optimizer_help_lists_its_arguments():
    text = _help("fit", "--optimizer.help", "NAGGS")
    for name in ("lr", "mu", "gamma", "fixed_gamma", "weight_decay"):
        assert f"--optimizer.{name}" in text
    assert "--optimizer.kappa" in _help("fit", "--optimizer.help", "AccSGD")


def test_fit_help_names_the_optimizers_tasks_and_where_their_arguments_are():
    text = " ".join(_help("fit", "--help").split())
    assert "naggs_lightning.NAGGS" in text and "AccSGD" in text
    assert "naggs_lightning.tasks.DigitsDataModule" in text and "naggs_lightning.tasks.SequenceTransformer" in text
    assert "--optimizer.help NAGGS" in text


NO_CYCLE = "--lr_scheduler.cycle_momentum false"


@pytest.mark.parametrize(
    "scheduler, args, interval",
    [
        ("OneCycleLR", f"--lr_scheduler.max_lr 1 --lr_scheduler.total_steps 9 {NO_CYCLE}", "step"),
        ("CyclicLR", f"--lr_scheduler.base_lr 0.1 --lr_scheduler.max_lr 1 {NO_CYCLE}", "step"),
        ("StepLR", "--lr_scheduler.step_size 1", "epoch"),
    ],
)
def test_per_batch_schedulers_step_every_batch(tmp_path, scheduler, args, interval):
    model = "--model MLP --data DigitsDataModule --optimizer NAGGS"
    cli = _fit(tmp_path, f"{model} --lr_scheduler {scheduler} {args}", steps=3)
    config = cli.trainer.lr_scheduler_configs[0]
    assert config.interval == interval
    assert config.scheduler.last_epoch == (3 if interval == "step" else 0)


def test_one_cycle_with_momentum_cycling_fails_on_naggs(tmp_path):
    # NAGGS has no momentum/betas key: the recipes set cycle_momentum: false, and this is why.
    with pytest.raises(ValueError, match="cycle_momentum"):
        _fit(
            tmp_path,
            "--model MLP --data DigitsDataModule --optimizer NAGGS "
            "--lr_scheduler OneCycleLR --lr_scheduler.max_lr 1.0 --lr_scheduler.total_steps 10",
        )


def test_fit_twice_in_one_folder_without_a_logger(tmp_path, monkeypatch):
    """With ``logger: false`` both runs write config.yaml into the same folder: the second replaces the first."""
    monkeypatch.chdir(tmp_path)
    for lr in (0.3, 0.4):
        cli = build_cli(
            ["fit", "--model", "LogisticRegression", "--data", "DigitsDataModule", "--model.lr", str(lr)]
            + ["--trainer.logger", "false", "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"]
            + ["--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1"]
        )
        assert cli.trainer.global_step == 1
        saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
        assert saved["model"]["init_args"]["lr"] == lr


def test_a_logger_still_protects_an_existing_config(tmp_path):
    """Only the logger-less case overwrites: a logger's version folder that already holds a config is refused."""
    args = ["fit", "--model", "LogisticRegression", "--data", "DigitsDataModule", "--trainer.max_steps", "1"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]
    args += ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path)]
    args += ["--trainer.logger.version", "0"]
    args += ["--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1"]
    build_cli(args)
    with pytest.raises(RuntimeError, match="config.yaml"):
        build_cli(args)
