"""The monitor at the edge of stability: a full-batch tanh MLP trained with a fixed NAG-GS step sharpens to
lambda_stab(alpha) and keeps training there. Oracle: the loss itself (it falls) and the theory's edge.

The 5,000-step version of this run is ``benchmarks/edge_of_stability.py``; this one is 200 steps.
"""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from naggs_lightning import NAGGS, theory
from naggs_lightning.callbacks import SpectralStabilityMonitor, StabilityWarning

ALPHA = 2.4  # lambda_stab(2.4, 1, 1) = 4.36; the network starts at 0.6x that and reaches it within 100 steps


class TanhMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 10))

    def compute_loss(self, batch):
        x, t = batch
        return 0.5 * (self.net(x) - t).pow(2).sum(1).mean()

    def training_step(self, batch, batch_idx):
        return self.compute_loss(batch)

    def configure_optimizers(self):
        return NAGGS(self.parameters(), lr=ALPHA, mu=1.0, gamma=1.0)


class LrTrace(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


def full_batch_loader() -> DataLoader:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-8), dtype=torch.float32)[:1200]
    t = nn.functional.one_hot(torch.tensor(y[:1200]), 10).float()
    return DataLoader(TensorDataset(x, t), batch_size=len(x))


class Infos(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run(quiet_trainer, action: str):
    monitor, trace, infos = SpectralStabilityMonitor(every_n_steps=25, on_unstable=action), LrTrace(), Infos()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's rank_zero_info goes
    logger.addHandler(infos)
    level = logger.level
    logger.setLevel(logging.INFO)
    trainer = quiet_trainer(max_steps=200, callbacks=[trace, monitor])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            trainer.fit(TanhMLP(), full_batch_loader())
        finally:
            logger.removeHandler(infos)
            logger.setLevel(level)
    return monitor, trace, infos.messages, [w for w in record if issubclass(w.category, StabilityWarning)]


@pytest.fixture(scope="module")
def runs(quiet_trainer):
    return {action: run(quiet_trainer, action) for action in ("warn", "cap_lr")}


@pytest.mark.slow
def test_warn_stays_silent_at_the_edge(runs):
    monitor, _, infos, stability_warnings = runs["warn"]
    ratios = [h["edge_ratio"] for h in monitor.history]
    edge = theory.lambda_stab(ALPHA, 1.0, 1.0)
    assert ratios[0] < 0.9  # below the edge at initialisation ...
    assert max(ratios) >= 1.0  # ... then past it (progressive sharpening), transiently up to 1.4x
    assert all(h["zone"] != "past" for h in monitor.history)
    assert all(h["lambda_max"] / edge == pytest.approx(h["edge_ratio"]) for h in monitor.history)
    assert monitor.history[-1]["loss"] < 0.5 * monitor.history[0]["loss"]  # and the loss falls
    assert stability_warnings == []
    assert not monitor.unstable
    # Reaching the edge is told once, as information, though the run sits at the edge at several probes.
    reports = [m for m in infos if "stability edge of the step" in m]
    assert len(reports) == 1 and "Not divergence" in reports[0]
    assert sum(h["zone"] == "edge" for h in monitor.history) > 1


@pytest.mark.slow
def test_cap_lr_keeps_the_asked_for_step_at_the_edge(runs):
    monitor, trace, _, stability_warnings = runs["cap_lr"]
    assert stability_warnings == []
    assert monitor.lr_caps == {}
    assert max(h["edge_ratio"] for h in monitor.history) >= 1.0
    assert len(trace.lrs) == 200 and min(trace.lrs) == ALPHA
