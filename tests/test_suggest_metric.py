"""suggest_lr, TheoryLRFinder and naggs-tune on AdaNAGGS: the warm-up trains with AdaNAGGS (the user's beta2 and
eps) and the seed is computed from the preconditioned sharpness.

Oracle: a least-squares problem with a known Hessian H. Without a warm-up the metric is the one AdaNAGGS's first
step takes, P = |g0| + eps with g0 the full-batch gradient at the initialisation (v_hat = g0^2 after one step,
whatever beta2); the seed's lambda_max must be ``eigvalsh(P^-1/2 H P^-1/2).max()`` and its step the theory's
for it (:func:`naggs_lightning.lr.theory_seed`).
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
import yaml

from naggs_lightning import AdaNAGGS, suggest_lr
from naggs_lightning.callbacks import TheoryLRFinder
from naggs_lightning.lr import OptimizerKind, naggs_hyperparameters, theory_seed, warm_up_curvature
from naggs_lightning.lr.readings import Bracket
from naggs_lightning.tasks import LeastSquares, QuadraticDataModule
from naggs_lightning.tune import keys
from naggs_lightning.tune.cli import main as naggs_tune

DIM, N, MU, EPS = 10, 100, 0.05, 1e-3


class AdaLeastSquares(LeastSquares):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return AdaNAGGS(self.parameters(), lr=self.lr, mu=self.mu, gamma=self.gamma, beta2=0.9, eps=EPS)


def _data() -> QuadraticDataModule:
    return QuadraticDataModule(dim=DIM, mu=0.1, L=10.0, n_samples=N, batch_size=N, noise=0.0, seed=0)


def test_the_model_s_optimizer_kind_is_read_with_its_metric():
    hyper = naggs_hyperparameters(AdaLeastSquares(dim=DIM, mu=MU, gamma=MU))
    assert hyper.mu == MU and hyper.kind == OptimizerKind(AdaNAGGS, (("beta2", 0.9), ("eps", EPS)))
    assert hyper.kind.preconditioned and not naggs_hyperparameters(LeastSquares(dim=DIM)).kind.preconditioned


def test_seed_without_warm_up_is_the_theory_s_step_for_the_preconditioned_sharpness():
    data = _data()
    data.setup("fit")
    x, y = data.train_dataloader().dataset.tensors
    g0 = (-(x.double().T @ y.double()) / N).numpy()  # the gradient of 0.5 mean((Xw - y)^2) at w = 0
    p = np.abs(g0) + EPS
    expected = np.linalg.eigvalsh(data.hessian / np.sqrt(np.outer(p, p))).max()
    assert abs(expected - data.eigenvalues.max()) > 0.5 * expected  # the metric changes the number

    seed = suggest_lr(
        AdaLeastSquares(dim=DIM, mu=MU, gamma=MU), data, warmup_steps=0, curvature_batches=1, bracket_steps=0
    )
    assert seed.warmup.metric == "AdaNAGGS" and "AdaNAGGS's metric" in seed.describe()
    assert seed.lambda_max == pytest.approx(expected, rel=1e-4)
    assert seed.alpha == pytest.approx(theory_seed(expected, MU, MU).alpha, rel=1e-4)


def test_in_a_metric_the_seed_is_half_the_bracket_s_best_even_below_the_theory_s_step():
    from naggs_lightning.lr.measure import SEED_FRACTION

    seed = suggest_lr(AdaLeastSquares(dim=DIM, mu=MU, gamma=MU), _data(), warmup_steps=0, bracket_steps=10)
    assert seed.bracket is not None and SEED_FRACTION == 0.5
    assert seed.alpha == pytest.approx(0.5 * seed.bracket.best.alpha)
    assert seed.bracket.best.factor == 1.0 and seed.alpha < seed.bracket.runs[0].alpha  # below the theory's step
    assert "0.5 x the best" in seed.describe()
    plain = suggest_lr(LeastSquares(dim=DIM, mu=MU, gamma=MU), _data(), warmup_steps=0, bracket_steps=10)
    assert plain.alpha == max(0.5 * plain.bracket.best.alpha, plain.bracket.runs[0].alpha)


def test_the_warm_up_trains_in_the_metric_and_reads_the_metric_it_ended_with():
    data = _data()
    data.setup("fit")
    model = AdaLeastSquares(dim=DIM, mu=MU, gamma=MU)
    kind = naggs_hyperparameters(model).kind
    result = warm_up_curvature(model, data.train_dataloader(), MU, warmup_steps=9, stages=3, optimizer=kind)
    plain = warm_up_curvature(LeastSquares(dim=DIM), data.train_dataloader(), MU, warmup_steps=9, stages=3)
    assert result.metric == "AdaNAGGS" and plain.metric is None
    assert plain.lambda_max == pytest.approx(data.eigenvalues.max(), rel=1e-3)  # a quadratic: H itself
    assert abs(result.lambda_max - plain.lambda_max) > 0.1 * plain.lambda_max
    assert torch.all(model.weight == 0)  # the copy trained, not the model
    # From the stored record back (naggs-tune's resume).
    assert type(result).from_attrs(result.to_attrs()) == result


def test_theory_lr_finder_seeds_adanaggs_in_its_metric(quiet_trainer):
    model = AdaLeastSquares(dim=DIM, mu=MU, gamma=MU)
    finder = TheoryLRFinder(warmup_steps=0, curvature_batches=1, bracket_steps=0)
    trainer = quiet_trainer(max_steps=1, callbacks=[finder], limit_val_batches=0)
    trainer.fit(model, datamodule=_data())
    assert finder.optimal_lr.warmup.metric == "AdaNAGGS"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(finder.optimal_lr.alpha)


def test_naggs_tune_runs_a_seeded_adanaggs_study(tmp_path):
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "naggs_lightning.tasks.LogisticRegression",
            "init_args": {"in_features": 64, "num_classes": 10},
        },
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 128}},
        "optimizer": {
            "class_path": "naggs_lightning.AdaNAGGS",
            "init_args": {"lr": 0.03, "mu": 1.0, "gamma": 1.0, "beta2": 0.99, "eps": 1e-6},
        },
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1},
    }
    recipe, db = tmp_path / "ada.yaml", tmp_path / "tune.db"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    args = ["--config", str(recipe), "--storage", f"sqlite:///{db}", "--study-name", "ada", "--quiet"]
    args += ["--param", "mu=0.1..100:log"]  # mu searched, with room on both sides of the configured 1.0
    assert naggs_tune([*args, "--n-trials", "4", "--sampler-seed", "0", "--output-dir", str(tmp_path / "out")]) == 0
    study = optuna.load_study(study_name="ada", storage=f"sqlite:///{db}")
    seed = study.user_attrs[keys.STUDY_SEED]
    assert seed["warmup"]["metric"] == "AdaNAGGS"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(t.user_attrs[keys.SEEDED] for t in done)
    assert np.isfinite(study.best_value)
    best = Bracket.from_attrs(seed["bracket"]).best.alpha  # the first trial: half the bracket's best, then the best
    assert [t.user_attrs[keys.ALPHA] for t in done[:2]] == pytest.approx([0.5 * best, best])
    # mu is searched, but the seeded trials vary the step only: all four run at the configured mu
    assert {t.params["optimizer.init_args.mu"] for t in done} == {1.0}


def test_a_network_warms_up_in_a_forming_metric_without_a_false_collapse():
    """Adam's metric starts as one gradient's |g| + eps: the preconditioned sharpness read in it falls as the
    second moment averages (on a digits MLP from about 1e4 to 1e3 in 20 steps). That fall is the metric forming,
    not a collapse: the warm-up must not restart, and the curvature the run meets is the reading after it."""
    from naggs_lightning.tasks import MLP, DigitsDataModule

    torch.manual_seed(0)
    model = MLP(hidden_sizes=[64])
    data = DigitsDataModule(batch_size=64)
    data.setup("fit")
    kind = OptimizerKind.of(AdaNAGGS([torch.zeros(1, requires_grad=True)]), {"beta2": 0.999, "eps": 1e-8})
    warmup = warm_up_curvature(model, data.train_dataloader(), 1.0, optimizer=kind)
    assert warmup.restarts == () and warmup.metric == "AdaNAGGS"
    assert warmup.readings[0].lambda_max > 2 * warmup.lambda_max  # the metric formed: the reading fell
    assert warmup.lambda_run == pytest.approx(warmup.lambda_max * warmup.headroom)
