"""suggest_lr and TheoryLRFinder against the closed forms, on a least-squares task whose Hessian is known."""

from __future__ import annotations

import warnings

import pytest
import torch

from naggs_lightning import TheoryLRFinder, suggest_lr, theory
from naggs_lightning.tasks import DigitsDataModule, LeastSquares, LogisticRegression, QuadraticDataModule

MU, L, DIM = 0.5, 8.0, 10


def _data() -> QuadraticDataModule:
    # one full batch: its Hessian is the data's exact Hessian, with top eigenvalue L
    return QuadraticDataModule(dim=DIM, mu=MU, L=L, n_samples=200, batch_size=200, noise=0.0)


def test_suggest_lr_is_safety_times_alpha_star_of_the_measured_curvature():
    model = LeastSquares(dim=DIM, lr=0.01, mu=MU, gamma=3.0)  # evolving gamma: the step is taken at gamma = mu
    before = [p.detach().clone() for p in model.parameters()]
    seed = suggest_lr(model, _data(), curvature_batches=1)
    assert seed.lambda_max == pytest.approx(L, rel=1e-3)
    assert seed.alpha == pytest.approx(0.9 * theory.alpha_opt(MU, L), rel=2e-3)
    assert seed.alpha < seed.alpha_crit == pytest.approx(theory.alpha_crit(MU, MU, L), rel=2e-3)
    assert all((p == b).all() for p, b in zip(model.parameters(), before, strict=True))  # the model is untouched
    assert suggest_lr(model, _data(), mu=1.0, safety=1.0, curvature_batches=1).alpha == pytest.approx(
        theory.alpha_opt(1.0, L), rel=2e-3
    )


def test_suggest_lr_needs_naggs_or_explicit_mu_and_gamma():
    class SGDModel(LeastSquares):
        def configure_optimizers(self):
            import torch

            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="does not return NAGGS: pass mu= and gamma="):
        suggest_lr(SGDModel(dim=DIM), _data())
    seed = suggest_lr(SGDModel(dim=DIM), _data(), mu=MU, gamma=MU, curvature_batches=1)
    assert seed.alpha == pytest.approx(0.9 * theory.alpha_opt(MU, L), rel=2e-3)


def test_theory_lr_finder_sets_the_models_lr_and_the_optimizer_before_the_first_step(quiet_trainer):
    model = LeastSquares(dim=DIM, lr=0.01, mu=MU, gamma=MU)
    finder = TheoryLRFinder(curvature_batches=1)
    trainer = quiet_trainer(max_steps=3, callbacks=[finder], limit_val_batches=0)
    trainer.fit(model, _data())
    alpha = finder.optimal_lr.alpha
    assert alpha == pytest.approx(0.9 * theory.alpha_opt(MU, L), rel=2e-3)
    assert model.lr == alpha and trainer.optimizers[0].param_groups[0]["lr"] == alpha


def test_theory_lr_finder_checks_its_arguments():
    with pytest.raises(ValueError, match=r"safety must be in \(0, 1\]"):
        TheoryLRFinder(safety=0.0)
    with pytest.raises(ValueError, match="curvature_batches must be >= 1"):
        TheoryLRFinder(curvature_batches=0)


class LoggingStepOnly(LogisticRegression):
    """A module with no compute_loss whose training_step logs, as most users' modules do."""

    compute_loss = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.linear(x), y)
        self.log("train_loss", loss)
        return loss


def test_measuring_a_module_whose_training_step_logs_makes_lightning_warn_nothing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        suggest_lr(LoggingStepOnly(), DigitsDataModule(batch_size=64), curvature_batches=1)
    assert not [w for w in caught if "self.trainer` reference is not registered" in str(w.message)]
