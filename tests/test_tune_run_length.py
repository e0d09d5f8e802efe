"""How long a trial runs, read from its trainer before it starts: its validations and its optimizer steps.

Oracle: what Lightning's ``Trainer`` does in a real fit of a tiny model (the validation runs it makes, the optimizer
steps it counts in ``global_step``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from naggs_lightning.tune.run_length import expected_validations, planned_steps


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


class Stream(IterableDataset):
    """Ten batches with no length: the epochs do not say how long a run is."""

    def __iter__(self):
        return iter(torch.randn(10, 4, 2).unbind())


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": 3},
        {"max_epochs": 5, "max_steps": 7},
        {"max_epochs": 2, "limit_train_batches": 0.55},
        {"max_epochs": 2, "limit_train_batches": 3},
        {"max_epochs": 2, "accumulate_grad_batches": 3},
    ],
)
def test_planned_steps_count_the_optimizer_steps_lightning_takes(settings, quiet_trainer):
    trainer = quiet_trainer(num_sanity_val_steps=0, limit_val_batches=0, **settings)
    planned = planned_steps(trainer, len(loader()))
    trainer.fit(Tiny(), train_dataloaders=loader())
    assert planned == trainer.global_step


def test_a_run_without_an_end_has_no_planned_steps(quiet_trainer):
    assert planned_steps(quiet_trainer(max_epochs=-1), 10) is None
    # A loader without a length: only max_steps bounds the run.
    assert planned_steps(quiet_trainer(max_epochs=3), None) is None
    trainer = quiet_trainer(max_epochs=3, max_steps=12, num_sanity_val_steps=0, limit_val_batches=0)
    planned = planned_steps(trainer, None)
    trainer.fit(Tiny(), train_dataloaders=DataLoader(Stream(), batch_size=None))
    assert planned == 12 and trainer.global_step == 12
