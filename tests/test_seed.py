"""The tuner's warm-up seed: what it reads, the steps it takes, its restarts, and what a study stores.

Oracles: the exact Hessian of least squares (X^T X / n, a closed form), the NAG-GS iteration matrix of
THEORY.md section 2 written out here (its spectral radius says whether a step is stable for a
curvature), and the NAG-GS trajectory of a linear loss (how far a step moves the parameter).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from naggs_lightning.lr import (
    LRError,
    TheorySeed,
    theory_seed,
    warm_up_curvature,
    warmed_up_seed,
)
from naggs_lightning.optim import NAGGS
from naggs_lightning.tasks import DeepDigitsCNN, SignalCNN, SignalDataModule
from naggs_lightning.tune import run

_GEN = torch.Generator().manual_seed(0)
_X = torch.randn(128, 6, generator=_GEN) * torch.linspace(0.5, 2.5, 6)
_Y = torch.randn(128, generator=_GEN)


class LeastSquares(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(6))

    def compute_loss(self, batch):
        x, y = batch
        return 0.5 * ((x @ self.w - y) ** 2).mean()


def _batches() -> DataLoader:
    return DataLoader(TensorDataset(_X, _Y), batch_size=32, shuffle=False)


def _exact_tops() -> list[float]:
    """Top eigenvalue of each batch's Hessian X^T X / n, in loader order."""
    return [float(np.linalg.eigvalsh((x.T @ x / len(x)).double().numpy())[-1]) for x, _ in _batches()]


def _rho(alpha: float, mu: float, lam: float) -> float:
    """Spectral radius of one NAG-GS step (gamma = mu) on a mode of curvature lam (THEORY.md section 2)."""
    gamma = mu
    d = (1 + alpha) * (gamma + alpha * mu)
    e = (
        np.array(
            [
                [gamma + alpha * mu, alpha * (gamma + alpha * mu)],
                [alpha * (mu - lam), gamma * (1 + alpha) + alpha**2 * (mu - lam)],
            ]
        )
        / d
    )
    return float(max(abs(np.linalg.eigvals(e))))


def test_warm_up_on_a_quadratic_reads_the_exact_curvature_and_leaves_the_model_and_rng_alone():
    model = LeastSquares()
    rng = torch.random.get_rng_state()
    mu = 0.05
    result = warm_up_curvature(model, _batches(), mu, warmup_steps=12, stages=3, curvature_batches=2)
    assert torch.equal(model.w.detach(), torch.zeros(6)) and torch.equal(torch.random.get_rng_state(), rng)
    tops = _exact_tops()
    # The first batch is read before and after: a quadratic's curvature does not move.
    assert result.readings[0].lambda_max == pytest.approx(tops[0], rel=1e-3)
    assert result.final[0] == pytest.approx(tops[0], rel=1e-3)
    assert result.growth == pytest.approx(1.0, abs=2e-3)
    assert all(min(abs(v - t) / t for t in tops) < 1e-3 for v in result.final)
    assert max(tops) * (1 + 1e-3) >= result.lambda_run >= result.lambda_max
    assert [r.step for r in result.readings] == [0, 4, 8] and not result.restarts and math.isinf(result.cap)
    # Every stage's step is stable for its margin over the curvature read so far (growth 20, then 4).
    for j, reading in enumerate(result.readings):
        read = max(r.lambda_max for r in result.readings[: j + 1])
        assert _rho(reading.alpha, mu, (20.0 if j == 0 else 4.0) * read) <= 1.0 + 1e-9
    # The seed is the theory's step for the curvature the run meets, stable on every batch.
    seed = warmed_up_seed(result, mu)
    assert seed.alpha == pytest.approx(theory_seed(result.lambda_run, mu, mu).alpha)
    assert all(_rho(seed.alpha, mu, t) < 1.0 for t in tops)


class Runaway(nn.Module):
    """A linear loss (no curvature) whose value is NaN once the parameter passes ``limit``."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.w = nn.Parameter(torch.zeros(1))

    def compute_loss(self, batch):
        loss = -(self.w * batch[0].mean()).sum()
        return loss if float(self.w.detach().abs().max()) <= self.limit else loss * float("nan")


def _travel(alpha: float, steps: int) -> float:
    """How far NAG-GS (mu = gamma = 1) moves the parameter of -w in ``steps`` steps."""
    w = nn.Parameter(torch.zeros(1))
    opt = NAGGS([w], lr=alpha, mu=1.0, gamma=1.0)
    for _ in range(steps):
        opt.zero_grad()
        (-w.sum()).backward()
        opt.step()
    return float(w.detach())


def test_a_warm_up_that_diverges_restarts_at_half_the_step_and_caps_the_seed():
    batches = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=4)
    first = 0.9 * 2 * (1 + math.sqrt(2))  # no curvature: the all-stable regime's step at mu = 1
    limit = (_travel(first, 12) + _travel(first / 2, 12)) / 2  # passed at the full step, not at half
    result = warm_up_curvature(Runaway(limit), batches, 1.0, warmup_steps=12, stages=3)
    assert len(result.restarts) == 1 and "non-finite" in result.restarts[0]
    assert result.cap == pytest.approx(first / 2)
    assert all(r.alpha <= result.cap for r in result.readings)
    seed = warmed_up_seed(result, 1.0)
    assert seed.alpha == pytest.approx(result.cap) and seed.safety < 0.9
    # What the study stores reads back to the same seed, and says what was measured.
    back = TheorySeed.from_attrs(seed.to_attrs())
    assert back == seed and "restarted with alpha" in back.describe()


def test_a_warm_up_that_always_diverges_is_a_clear_error():
    batches = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=4)
    with pytest.raises(LRError, match=r"warm-up at mu = 1 failed 4 times"):
        warm_up_curvature(Runaway(1e-6), batches, 1.0, warmup_steps=6, stages=3)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mu": 0.0}, "needs mu > 0"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"stages": 0}, "stages must be an integer >= 1"),
        ({"growth": 0.5}, "growth must be finite and >= 1"),
        ({"margin": math.inf}, "margin must be finite and >= 1"),
        ({"curvature_batches": 0}, "curvature_batches must be an integer >= 1"),
    ],
)
def test_warm_up_rejects_bad_options(kwargs, needle):
    args = {"mu": 0.1, **kwargs}
    with pytest.raises(LRError, match=needle):
        warm_up_curvature(LeastSquares(), _batches(), args.pop("mu"), **args)


def test_without_a_warm_up_the_seed_reads_the_first_batches_at_initialisation():
    result = warm_up_curvature(LeastSquares(), _batches(), 0.05, warmup_steps=0, curvature_batches=3)
    tops = _exact_tops()
    assert result.final == pytest.approx(tops[:3], rel=1e-3)
    assert result.growth == 1.0 and result.lambda_run == pytest.approx(max(tops[:3]), rel=1e-3)


def test_a_study_stores_and_prints_the_warm_up_behind_its_seed():
    config = {
        "seed_everything": 0,
        "model": {"class_path": "naggs_lightning.tasks.LeastSquares", "init_args": {"dim": 5}},
        "data": {
            "class_path": "naggs_lightning.tasks.QuadraticDataModule",
            "init_args": {"dim": 5, "mu": 0.1, "L": 4.0, "n_samples": 64, "batch_size": 32},
        },
        "optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.1, "mu": 0.1, "gamma": 0.1}},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
    }
    study = run(config, metric="val_loss", n_trials=1, seed_trials=1, warmup_steps=6, storage=None, verbose=False)
    attrs = study.user_attrs["naggs.seed"]
    seed = TheorySeed.from_attrs(attrs)
    assert seed.warmup is not None and seed.warmup.steps == 6 and len(seed.warmup.readings) == 3
    assert study.trials[0].user_attrs["naggs.alpha"] == pytest.approx(seed.alpha)
    assert seed.lambda_max == pytest.approx(seed.warmup.lambda_run)
    assert "warm-up of 6 NAG-GS steps at mu = gamma = 0.1" in seed.describe()


def test_signal_data_are_balanced_deterministic_and_checked():
    dm = SignalDataModule(n_train=50, n_val=10, n_test=10, length=32)
    x, y = dm.splits["train"].tensors
    assert x.shape == (50, 1, 32) and torch.bincount(y).tolist() == [10] * 5
    assert torch.equal(x, SignalDataModule(n_train=50, n_val=10, n_test=10, length=32).splits["train"].tensors[0])
    assert SignalCNN()(x).shape == (50, 5)
    with pytest.raises(ValueError, match="noise must be finite and >= 0"):
        SignalDataModule(noise=-1.0)
    with pytest.raises(ValueError, match="length must be >= 8"):
        SignalDataModule(length=4)


def test_deep_digits_cnn_takes_flat_digits():
    assert DeepDigitsCNN()(torch.randn(3, 64)).shape == (3, 10)
    with pytest.raises(ValueError, match="channels must be four positive widths"):
        DeepDigitsCNN(channels=(8, 16))
