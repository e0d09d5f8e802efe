"""Every recipe under recipes/ runs as shipped (a few steps) through naggs-train; one through the console script."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from naggs_lightning.lightning_cli import build_cli

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
STEPS = 3


@pytest.fixture(autouse=True)
def quiet_and_single_threaded(monkeypatch):
    monkeypatch.setattr("sys.argv", ["naggs-train"])
    # Tiny models: intra-op threads cost more than they save, and far more on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overrides(root):
    return [
        "--trainer.max_steps", str(STEPS),
        "--trainer.limit_val_batches", "1",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root),
    ]  # fmt: skip


def test_every_task_has_naggs_and_the_three_baselines():
    names = {p.stem for p in RECIPES}
    tasks = {n.rsplit("_", 1)[0] for n in names if n.endswith("_naggs")}
    assert tasks >= {"digits_logreg", "digits_mlp", "digits_cnn", "breast_cancer_logreg", "quadratic"}
    assert "sequence_reverse" in tasks
    for task in tasks:
        assert {f"{task}_{opt}" for opt in ("naggs", "sgd", "adamw", "accsgd")} <= names


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_as_shipped(recipe, tmp_path):
    config = yaml.safe_load(recipe.read_text())
    cli = build_cli(["fit", "--config", str(recipe), *_overrides(tmp_path)])
    trainer = cli.trainer
    assert trainer.global_step == STEPS
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))

    optimizer = trainer.optimizers[0]
    want = config["optimizer"]["class_path"].rsplit(".", 1)[-1]
    assert type(optimizer).__name__ == want
    for key, value in config["optimizer"].get("init_args", {}).items():
        if key not in ("lr", "gamma"):  # a scheduler moves lr, and NAG-GS evolves gamma
            assert optimizer.param_groups[0][key] == value
    assert all(optimizer.state[p] for p in cli.model.parameters())  # every parameter was stepped

    if "SGD" == want:
        assert optimizer.param_groups[0]["nesterov"] is True
    if "lr_scheduler" in config:
        # Stepped every batch: alpha after STEPS steps is OneCycleLR's own value at that step.
        args = config["lr_scheduler"]["init_args"]
        reference_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, **args)
        for _ in range(STEPS):
            reference_opt.step()
            reference.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
    monitors = [cb for cb in trainer.callbacks if type(cb).__name__ == "SpectralStabilityMonitor"]
    if "callbacks" in config["trainer"]:
        assert len(monitors) == 1
        assert float(trainer.callback_metrics["stability/lambda_max"]) > 0.0  # probed after the first step
    else:
        assert not monitors


@pytest.mark.slow
def test_console_script_runs_a_recipe(tmp_path):
    script = Path(sys.executable).with_name("naggs-train")
    assert script.exists(), "naggs-train is not installed next to this Python: pip install -e ."
    recipe = next(p for p in RECIPES if p.stem == "digits_logreg_naggs")
    done = subprocess.run(
        [str(script), "fit", "--config", str(recipe), *_overrides(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"`max_steps={STEPS}` reached" in done.stderr + done.stdout
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["optimizer"]["class_path"] == "naggs_lightning.NAGGS"
    assert saved["optimizer"]["init_args"]["lr"] == 0.5
