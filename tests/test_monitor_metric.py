"""SpectralStabilityMonitor on AdaNAGGS: the curvature is read in the optimizer's metric.

Oracle: a least-squares problem with a known Hessian H, the optimizer's own P at the probe
(``AdaNAGGS.metric``), and ``eigvalsh(P^-1/2 H P^-1/2)``; the edge from :func:`naggs_lightning.theory.lambda_stab`.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from naggs_lightning import NAGGS, AdaNAGGS, theory
from naggs_lightning.callbacks import SpectralStabilityMonitor
from naggs_lightning.tasks import LeastSquares, QuadraticDataModule

DIM, N = 8, 64


class AdaLeastSquares(LeastSquares):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return AdaNAGGS(self.parameters(), lr=self.lr, mu=self.mu, gamma=self.gamma, beta2=0.9)


class MixedLeastSquares(LeastSquares):
    def __init__(self) -> None:
        super().__init__(dim=DIM)
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias

    def configure_optimizers(self):
        return [AdaNAGGS([self.weight], lr=0.01), NAGGS([self.bias], lr=0.01)]

    def training_step(self, batch, batch_idx):  # two optimizers: manual optimization
        for opt in self.optimizers():
            opt.zero_grad()
        loss = self.compute_loss(batch)
        self.manual_backward(loss)
        for opt in self.optimizers():
            opt.step()
        return loss


def _fit(quiet_trainer, model: pl.LightningModule, monitor: SpectralStabilityMonitor, steps: int) -> pl.Trainer:
    data = QuadraticDataModule(dim=DIM, mu=0.5, L=20.0, n_samples=N, batch_size=N, seed=0)
    trainer = quiet_trainer(max_steps=steps, callbacks=[monitor], limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    return trainer


def test_lambda_max_is_the_preconditioned_sharpness_and_the_edge_is_nag_gs(quiet_trainer):
    torch.manual_seed(0)
    model = AdaLeastSquares(dim=DIM, lr=0.05, mu=0.1, gamma=0.1)
    monitor = SpectralStabilityMonitor(every_n_steps=1, dense_growth=0, max_iter=DIM, tol=0.0)
    trainer = _fit(quiet_trainer, model, monitor, 6)
    opt = trainer.optimizers[0]
    p = opt.metric(model.weight).double().numpy()
    h = QuadraticDataModule(dim=DIM, mu=0.5, L=20.0, n_samples=N, batch_size=N, seed=0).hessian
    expected = np.linalg.eigvalsh(h / np.sqrt(np.outer(p, p))).max()
    last = monitor.history[-1]
    assert last["in_metric"] is True
    assert last["lambda_max"] == pytest.approx(expected, rel=1e-4)
    assert abs(expected - np.linalg.eigvalsh(h).max()) > 0.1 * expected  # not the plain sharpness
    group = opt.param_groups[0]
    edge = theory.lambda_stab(group["lr"], group["mu"], group["gamma"])
    assert monitor.last_metrics["stability/lambda_stab"] == pytest.approx(edge)
    assert last["edge_ratio"] == pytest.approx(expected / edge, rel=1e-4)


def test_a_plain_optimizer_is_probed_on_the_plain_hessian(quiet_trainer):
    torch.manual_seed(0)
    monitor = SpectralStabilityMonitor(every_n_steps=1, dense_growth=0, max_iter=DIM, tol=0.0)
    _fit(quiet_trainer, LeastSquares(dim=DIM, lr=0.05), monitor, 2)
    h = QuadraticDataModule(dim=DIM, mu=0.5, L=20.0, n_samples=N, batch_size=N, seed=0).hessian
    assert monitor.history[-1]["in_metric"] is False
    assert monitor.history[-1]["lambda_max"] == pytest.approx(np.linalg.eigvalsh(h).max(), rel=1e-4)


def test_mixing_a_metric_with_plain_steps_is_refused(quiet_trainer):
    model = MixedLeastSquares()
    model.automatic_optimization = False
    with pytest.raises(MisconfigurationException, match="mix a metric of their own with plain steps"):
        _fit(quiet_trainer, model, SpectralStabilityMonitor(every_n_steps=1), 2)
