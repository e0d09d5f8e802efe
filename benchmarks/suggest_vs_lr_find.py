"""Which step to trust: Lightning's ``Tuner.lr_find`` against ``naggs_lightning.suggest_lr`` on the shipped tasks.

For each task both tools propose an lr for the same NAG-GS optimizer (the task's mu and gamma):

* ``lr_find``: Lightning's learning-rate range test (``min_lr`` 1e-4 to ``max_lr`` 10, 100 steps,
  exponential), its ``suggestion()`` (steepest descent of the smoothed loss);
* ``suggest_lr``: 0.9 x the theory's optimal step for the top Hessian eigenvalue measured over 4
  training batches at initialisation (no training step).

Then each proposed lr trains the task from the same initialisation for the recipe's epochs, over
``--seeds`` seeds, and the script prints the proposal, the seconds each tool took, and the final
validation accuracy and loss (mean over seeds; a diverged run counts as accuracy 0, loss inf).

Run: ``OMP_NUM_THREADS=1 python benchmarks/suggest_vs_lr_find.py [--seeds 3] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from _trainer import quiet_trainer
from lightning.pytorch.tuner import Tuner

from naggs_lightning import suggest_lr
from naggs_lightning.tasks import (
    MLP,
    BreastCancerDataModule,
    DigitsDataModule,
    LogisticRegression,
)


@dataclass
class Task:
    name: str
    model: Callable[[float], pl.LightningModule]
    data: Callable[[], pl.LightningDataModule]
    epochs: int


def _tasks() -> list[Task]:
    return [
        Task(
            "digits logreg (mu 1)",
            lambda lr: LogisticRegression(lr=lr, mu=1.0, gamma=1.0),
            lambda: DigitsDataModule(batch_size=128),
            10,
        ),
        Task(
            "digits MLP 128 (mu 1)",
            lambda lr: MLP(hidden_sizes=[128], lr=lr, mu=1.0, gamma=1.0),
            lambda: DigitsDataModule(batch_size=128),
            10,
        ),
        Task(
            "digits MLP 128 (mu 0.1)",
            lambda lr: MLP(hidden_sizes=[128], lr=lr, mu=0.1, gamma=0.1),
            lambda: DigitsDataModule(batch_size=128),
            10,
        ),
        Task(
            "breast cancer logreg (mu 1)",
            lambda lr: LogisticRegression(in_features=30, num_classes=2, lr=lr, mu=1.0, gamma=1.0),
            lambda: BreastCancerDataModule(batch_size=64),
            20,
        ),
    ]


def _trainer(epochs: int) -> pl.Trainer:
    return quiet_trainer(max_epochs=epochs, accelerator="cpu", devices=1)


def _lr_find(task: Task) -> tuple[float, float]:
    pl.seed_everything(0, verbose=False)
    model = task.model(0.1)
    start = time.perf_counter()
    finder = Tuner(_trainer(1000)).lr_find(  # epochs enough for its 100 steps on the smallest data set
        model, datamodule=task.data(), min_lr=1e-4, max_lr=10.0, num_training=100, update_attr=False
    )
    suggestion = finder.suggestion()
    if suggestion is None:
        raise RuntimeError(f"{task.name}: lr_find made no suggestion")
    return float(suggestion), time.perf_counter() - start


def _suggest(task: Task) -> tuple[float, float]:
    pl.seed_everything(0, verbose=False)
    model = task.model(0.1)
    start = time.perf_counter()
    seed = suggest_lr(model, task.data())
    return seed.alpha, time.perf_counter() - start


def _train(task: Task, lr: float, seed: int, epochs: int) -> tuple[float, float]:
    pl.seed_everything(seed, verbose=False)
    trainer = _trainer(epochs)
    trainer.fit(task.model(lr), datamodule=task.data())
    acc, loss = (float(trainer.callback_metrics.get(k, math.nan)) for k in ("val_acc", "val_loss"))
    if not (math.isfinite(acc) and math.isfinite(loss)):
        return 0.0, math.inf
    return acc, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="override every task's epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    header = f"{'task':<28} {'tool':<10} {'lr':>8} {'seconds':>8} {'val_acc':>8} {'val_loss':>9}"
    print(header)
    print("-" * len(header))
    for task in _tasks():
        epochs = args.epochs or task.epochs
        for tool, propose in (("lr_find", _lr_find), ("suggest_lr", _suggest)):
            lr, seconds = propose(task)
            runs = [_train(task, lr, seed, epochs) for seed in range(args.seeds)]
            acc = statistics.mean(a for a, _ in runs)
            loss = statistics.mean(loss for _, loss in runs)
            print(f"{task.name:<28} {tool:<10} {lr:>8.4g} {seconds:>8.2f} {acc:>8.4f} {loss:>9.4f}", flush=True)
    print(f"(mean over {args.seeds} seeds of training; each task's recipe epochs unless --epochs)")


if __name__ == "__main__":
    main()
