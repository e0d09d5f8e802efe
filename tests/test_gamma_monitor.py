"""GammaMonitor: gamma and mu per parameter group in the logger, against gamma's closed form."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from naggs_lightning import NAGGS, GammaMonitor
from naggs_lightning.tasks import DigitsDataModule, LogisticRegression


class TwoGroups(LogisticRegression):
    """Weights and bias in separate groups, with different mu and gamma."""

    def configure_optimizers(self):
        groups = [
            {"params": [self.linear.weight], "mu": 0.5, "gamma": 2.0},
            {"params": [self.linear.bias], "mu": 1.0, "gamma": 0.25, "name": "bias"},
        ]
        return NAGGS(groups, lr=0.3)


def _fit(quiet_trainer, tmp_path, model, steps: int, every: int = 1, lr_interval=None, **monitor):
    logger = CSVLogger(tmp_path, name="", version=0)
    trainer = quiet_trainer(
        max_steps=steps,
        logger=logger,
        log_every_n_steps=every,
        callbacks=[GammaMonitor(**monitor), LearningRateMonitor(logging_interval=lr_interval)],
        limit_val_batches=0,
    )
    trainer.fit(model, DigitsDataModule(batch_size=64))
    with open(tmp_path / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _gamma(k: int, mu: float, gamma0: float, alpha: float) -> float:
    return mu + (gamma0 - mu) * (1.0 + alpha) ** (-k)  # THEORY.md section 1


def test_gamma_and_mu_of_each_group_follow_the_closed_form(tmp_path, quiet_trainer):
    rows = _fit(quiet_trainer, tmp_path, TwoGroups(), steps=6)
    logged = {int(r["step"]): r for r in rows if r.get("lr-NAGGS/pg1-gamma")}
    assert sorted(logged) == list(range(6))  # before each of the 6 steps
    for k, row in logged.items():
        assert float(row["lr-NAGGS/pg1-gamma"]) == pytest.approx(_gamma(k, 0.5, 2.0, 0.3), rel=1e-6)
        assert float(row["lr-NAGGS/bias-gamma"]) == pytest.approx(_gamma(k, 1.0, 0.25, 0.3), rel=1e-6)
        assert float(row["lr-NAGGS/pg1-mu"]) == 0.5 and float(row["lr-NAGGS/bias-mu"]) == 1.0
    # the keys sit beside LearningRateMonitor's own for the same groups
    assert any(r.get("lr-NAGGS/pg1") for r in rows) and any(r.get("lr-NAGGS/bias") for r in rows)


@pytest.mark.parametrize("interval", [None, "step", "epoch"])
def test_logged_on_the_steps_learning_rate_monitor_logs(tmp_path, interval, quiet_trainer):
    model = LogisticRegression(lr=0.2, mu=0.1, gamma=1.0)
    rows = _fit(quiet_trainer, tmp_path, model, steps=45, every=5, lr_interval=interval, logging_interval=interval)
    lr_steps = [int(r["step"]) for r in rows if r.get("lr-NAGGS")]
    gamma_steps = [int(r["step"]) for r in rows if r.get("lr-NAGGS-gamma")]
    assert len(gamma_steps) >= 2 and gamma_steps == lr_steps
    for row in rows:  # the step number is the same count: gamma_k after k steps
        if row.get("lr-NAGGS-gamma"):
            assert float(row["lr-NAGGS-gamma"]) == pytest.approx(_gamma(int(row["step"]), 0.1, 1.0, 0.2), rel=1e-6)


def test_one_group_per_epoch_and_without_mu(tmp_path, quiet_trainer):
    model = LogisticRegression(lr=0.2, mu=0.1, gamma=1.0)
    rows = _fit(quiet_trainer, tmp_path, model, steps=40, logging_interval="epoch", log_mu=False)
    logged = [r for r in rows if r.get("lr-NAGGS-gamma")]
    assert len(logged) >= 2 and not any("lr-NAGGS-mu" in r and r["lr-NAGGS-mu"] for r in rows)
    for row in logged:
        assert float(row["lr-NAGGS-gamma"]) == pytest.approx(_gamma(int(row["step"]), 0.1, 1.0, 0.2), rel=1e-6)


def test_needs_a_logger_and_a_valid_interval(quiet_trainer):
    with pytest.raises(MisconfigurationException, match="logging_interval must be 'step', 'epoch' or None"):
        GammaMonitor(logging_interval="batch")
    trainer = quiet_trainer(max_steps=1, callbacks=[GammaMonitor()])
    with pytest.raises(MisconfigurationException, match="no logger"):
        trainer.fit(LogisticRegression(), DigitsDataModule(batch_size=64))
