"""naggs-tune's pruners: how many validations a trial reports, and a median pruner that waits for half of them.

Oracles: the count of validation runs Lightning's ``Trainer`` makes (counted from a real fit of a tiny model), and
the median rule itself (a trial below the median of five earlier trials at every validation).
"""

from __future__ import annotations

import lightning.pytorch as pl
import optuna
import pytest
import torch
from optuna.pruners import HyperbandPruner, NopPruner, PercentilePruner
from torch.utils.data import DataLoader, TensorDataset

from naggs_lightning.tune.pruning import STARTUP_TRIALS, expected_validations, make_pruner


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.net(batch[0]).pow(2).mean())

    def on_validation_end(self) -> None:
        self.validations += 0 if self.trainer.sanity_checking else 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=4)  # 10 batches an epoch


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": 6},
        {"max_epochs": 7, "check_val_every_n_epoch": 2},
        {"max_epochs": 3, "val_check_interval": 0.5},
    ],
)
def test_expected_validations_count_what_lightning_runs(settings, quiet_trainer):
    trainer, model = quiet_trainer(num_sanity_val_steps=0, **settings), Tiny()
    expected = expected_validations(trainer)
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    assert expected == model.validations


@pytest.mark.parametrize("settings", [{"max_steps": 30}, {"max_epochs": 3, "val_check_interval": 5}])
def test_a_run_whose_validations_the_trainer_does_not_fix_gives_none(settings, quiet_trainer):
    assert expected_validations(quiet_trainer(**settings)) is None


def pruned_at(pruner: optuna.pruners.BasePruner, validations: int) -> int | None:
    """The first validation at which ``pruner`` stops a trial that is worse than five finished ones at every one."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(STARTUP_TRIALS):
        trial = study.ask()
        for step in range(validations):
            trial.report(0.9, step)
        study.tell(trial, 0.9)
    trial = study.ask()
    for step in range(validations):
        trial.report(0.1, step)
        if trial.should_prune():
            return step
    return None


@pytest.mark.parametrize(("validations", "first"), [(8, 4), (6, 3), (3, 1), (1, None), (None, 1)])
def test_the_median_pruner_judges_from_the_middle_of_the_run_never_the_first_validation(validations, first):
    assert pruned_at(make_pruner("median", validations), validations or 8) == first


def test_other_pruners_are_optunas_as_named_or_given():
    assert isinstance(make_pruner("hyperband", 8), HyperbandPruner)
    assert isinstance(make_pruner("none", 8), NopPruner)
    given = PercentilePruner(25.0)
    assert make_pruner(given, 8) is given
