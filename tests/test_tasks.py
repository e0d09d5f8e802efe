"""The shipped tasks train with NAGGS under a real Trainer, and keep the contract the other parts rely on."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything

from naggs_lightning.optim import NAGGS
from naggs_lightning.tasks import (
    MLP,
    BreastCancerDataModule,
    DigitsCNN,
    DigitsDataModule,
    LeastSquares,
    LogisticRegression,
    QuadraticDataModule,
    SequenceDataModule,
    SequenceTransformer,
)


def _trainer(quiet_trainer, **kwargs):
    settings = dict(num_sanity_val_steps=0, accelerator="cpu", devices=1)
    settings.update(kwargs)
    return quiet_trainer(**settings)


def _fit_and_test(quiet_trainer, model, datamodule, **trainer_kwargs):
    """Fit and test; returns the trainer, the metrics at the end of fit and the test metrics."""
    seed_everything(0, verbose=False)
    trainer = _trainer(quiet_trainer, **trainer_kwargs)
    trainer.fit(model, datamodule)
    fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return trainer, fitted, trainer.test(model, datamodule, verbose=False)[0]


class MLPWithOneCycle(MLP):
    """configure_optimizers returning the optimizer with a per-step scheduler, as a user would write it."""

    def configure_optimizers(self):
        optimizer = NAGGS(self.parameters(), lr=self.lr, mu=self.mu, gamma=self.gamma)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=2.0 * self.lr, total_steps=self.trainer.estimated_stepping_batches, cycle_momentum=False
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@pytest.mark.slow
@pytest.mark.parametrize("model_cls", [MLP, MLPWithOneCycle], ids=["plain", "onecycle"])
def test_digits_mlp_reaches_95_percent_with_naggs(model_cls, quiet_trainer):
    model = model_cls(lr=1.0, mu=1.0, gamma=1.0)
    trainer, fitted, result = _fit_and_test(quiet_trainer, model, DigitsDataModule(batch_size=128), max_epochs=10)
    assert result["test_acc"] >= 0.95
    assert set(fitted) >= {"train_loss", "val_loss", "val_acc"}
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, NAGGS)
    if model_cls is MLPWithOneCycle:
        # Stepped once per batch, OneCycleLR annealed alpha from 2 lr down to near max_lr / 25e4.
        assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == trainer.global_step == 100
        assert optimizer.param_groups[0]["lr"] < 1e-2 * model.lr
    else:
        assert optimizer.param_groups[0]["lr"] == 1.0


@pytest.mark.slow
def test_digits_cnn_and_logistic_regression_train_with_naggs(quiet_trainer):
    *_, cnn = _fit_and_test(quiet_trainer, DigitsCNN(lr=0.5), DigitsDataModule(), max_epochs=4)
    *_, logreg = _fit_and_test(quiet_trainer, LogisticRegression(lr=0.5), DigitsDataModule(), max_epochs=10)
    assert cnn["test_acc"] >= 0.93
    assert logreg["test_acc"] >= 0.93


def test_breast_cancer_logistic_regression_trains_with_naggs(quiet_trainer):
    model = LogisticRegression(in_features=30, num_classes=2, lr=0.5)
    *_, result = _fit_and_test(quiet_trainer, model, BreastCancerDataModule(), max_epochs=10)
    assert result["test_acc"] >= 0.94


def _naggs_on_quadratic(hessian, optimum, steps, lr, mu, gamma):
    """NAG-GS (THEORY.md section 1, training-loop order) on f(w) = (w - w*)^T H (w - w*) / 2 from w = 0, in float64."""
    x = np.zeros_like(optimum)
    v = x.copy()
    for _ in range(steps):
        gamma = (gamma + lr * mu) / (1.0 + lr)
        grad = hessian @ (x - optimum)
        v = (gamma * v + lr * mu * x - lr * grad) / (gamma + lr * mu)
        x = (x + lr * v) / (1.0 + lr)
    return x


def test_least_squares_full_batch_follows_naggs_on_the_exact_quadratic_and_logs_suboptimality(quiet_trainer):
    dim, n, steps, lr, mu, gamma = 8, 200, 25, 0.4, 0.2, 1.0
    data = QuadraticDataModule(dim=dim, mu=0.2, L=5.0, n_samples=n, noise=0.3, batch_size=n)
    model = LeastSquares(dim=dim, lr=lr, mu=mu, gamma=gamma)
    _, fitted, result = _fit_and_test(quiet_trainer, model, data, max_epochs=steps)

    want = _naggs_on_quadratic(data.hessian, data.optimum, steps, lr, mu, gamma)
    got = model.weight.detach().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    gap = got - data.optimum
    suboptimality = 0.5 * gap @ data.hessian @ gap
    initial = 0.5 * data.optimum @ data.hessian @ data.optimum
    assert suboptimality < 1e-3 * initial
    assert fitted["val_loss"] == pytest.approx(suboptimality, rel=1e-3)
    assert result["test_loss"] == pytest.approx(suboptimality, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, spectrum",
    [
        (dict(dim=5, mu=0.5, L=4.5), np.linspace(0.5, 4.5, 5)),
        (dict(dim=4, eigenvalues=[3.0, 0.0, 1e-3, 7.0]), np.array([0.0, 1e-3, 3.0, 7.0])),
    ],
    ids=["mu_L", "list"],
)
def test_quadratic_data_have_exactly_the_chosen_hessian(kwargs, spectrum):
    data = QuadraticDataModule(n_samples=50, **kwargs)
    x = torch.cat([features for features, _ in data.train_dataloader()]).double().numpy()
    np.testing.assert_allclose(np.linalg.eigvalsh(x.T @ x / len(x)), spectrum, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.eigvalsh(data.hessian), spectrum, atol=1e-12)
    np.testing.assert_array_equal(data.eigenvalues, spectrum)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mu=2.0, L=1.0), "0 <= mu <= L"),
        (dict(mu=-1.0), "0 <= mu <= L"),
        (dict(dim=3, eigenvalues=[1.0, 2.0]), "eigenvalues must hold dim=3 numbers, got 2"),
        (dict(dim=2, eigenvalues=[0.0, 0.0]), "not all zero"),
        (dict(dim=30, n_samples=10), "n_samples must be >= dim=30"),
        (dict(noise=-0.1), "noise must be >= 0"),
    ],
)
def test_quadratic_data_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuadraticDataModule(**kwargs)


def test_least_squares_names_a_dimension_mismatch():
    with pytest.raises(ValueError, match="the data have 5 features but the model's dim is 3"):
        LeastSquares(dim=3).compute_loss((torch.zeros(2, 5), torch.zeros(2)))


@pytest.mark.slow
def test_sequence_transformer_learns_to_reverse(quiet_trainer):
    model = SequenceTransformer(vocab_size=8, seq_len=6, d_model=32, num_heads=2, num_layers=1, dim_feedforward=64)
    data = SequenceDataModule(vocab_size=8, seq_len=6, n_train=2048, n_val=256, n_test=256, batch_size=64)
    *_, result = _fit_and_test(quiet_trainer, model, data, max_epochs=4)
    assert result["test_acc"] >= 0.95


@pytest.mark.parametrize("task", ["reverse", "sort"])
def test_sequence_targets(task):
    data = SequenceDataModule(task=task, vocab_size=5, seq_len=7, n_train=64, n_val=8, n_test=8)
    inputs, targets = data.splits["train"].tensors
    for row, target in zip(inputs.tolist(), targets.tolist()):
        assert target == (row[::-1] if task == "reverse" else sorted(row))
    again = SequenceDataModule(task=task, vocab_size=5, seq_len=7, n_train=64, n_val=8, n_test=8)
    assert torch.equal(again.splits["train"].tensors[0], inputs)
    assert not torch.equal(data.splits["val"].tensors[0], inputs[:8])


def test_sequence_transformer_has_exact_hessian_vector_products():
    # Written-out attention has a double backward; check H v against a central difference of gradients.
    torch.manual_seed(0)
    model = SequenceTransformer(vocab_size=6, seq_len=5, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32)
    model = model.double()
    batch = (torch.randint(6, (8, 5)), torch.randint(6, (8, 5)))
    params = [p for p in model.parameters()]
    vec = [torch.randn_like(p) for p in params]
    grads = torch.autograd.grad(model.compute_loss(batch), params, create_graph=True)
    hv = torch.autograd.grad(grads, params, vec)

    def grad_at(shift):
        with torch.no_grad():
            for p, v in zip(params, vec):
                p.add_(v, alpha=shift)
        g = torch.autograd.grad(model.compute_loss(batch), params)
        with torch.no_grad():
            for p, v in zip(params, vec):
                p.sub_(v, alpha=shift)
        return g

    eps = 1e-5
    fd = [(a - b) / (2 * eps) for a, b in zip(grad_at(eps), grad_at(-eps))]
    for exact, approx in zip(hv, fd):
        torch.testing.assert_close(exact, approx, rtol=1e-5, atol=1e-7)


def test_compute_loss_is_side_effect_free_cross_entropy(monkeypatch):
    torch.manual_seed(0)
    model = MLP(hidden_sizes=(16, 8))
    x, y = torch.randn(10, 64), torch.randint(10, (10,))

    def no_logging(*args, **kwargs):
        raise AssertionError("compute_loss must not log")

    monkeypatch.setattr(model, "log", no_logging)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model.compute_loss((x, y))
    torch.testing.assert_close(loss, F.cross_entropy(model.net(x), y))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize(
    "model",
    [cls(lr=0.7, mu=0.3, gamma=2.0) for cls in (LogisticRegression, DigitsCNN, LeastSquares)],
    ids=["logreg", "cnn", "least_squares"],
)
def test_fallback_optimizer_is_naggs_from_the_modules_own_arguments(model):
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, NAGGS)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["mu"], group["gamma"]) == (0.7, 0.3, 2.0)
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in model.parameters())
    assert model.hparams["lr"] == 0.7


@pytest.mark.parametrize("cls, n, d", [(DigitsDataModule, 1797, 64), (BreastCancerDataModule, 569, 30)])
def test_array_datamodules_split_deterministically_and_standardise(cls, n, d):
    data, same, other = cls(seed=1), cls(seed=1), cls(seed=2)
    for dm in (data, same, other):
        dm.setup("fit")
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sum(sizes.values()) == n
    assert sizes["val"] == pytest.approx(0.15 * n, abs=2) and sizes["test"] == pytest.approx(0.15 * n, abs=2)
    x_train, y_train = data.splits["train"].tensors
    assert x_train.shape[1] == d
    assert torch.equal(x_train, same.splits["train"].tensors[0])
    assert not torch.equal(x_train, other.splits["train"].tensors[0][: len(x_train)])
    varying = x_train.std(0, unbiased=False) > 0
    torch.testing.assert_close(x_train.mean(0), torch.zeros(d), atol=1e-5, rtol=0)
    std = x_train.std(0, unbiased=False)[varying]
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    # stratified: every split holds the classes in (nearly) the proportions of the whole set
    whole = torch.bincount(torch.cat([s.tensors[1] for s in data.splits.values()])).double() / n
    for split in data.splits.values():
        share = torch.bincount(split.tensors[1], minlength=len(whole)).double() / len(split)
        assert torch.max(torch.abs(share - whole)) < 0.02
    batch = next(iter(data.train_dataloader()))
    assert batch[0].shape == (128 if cls is DigitsDataModule else 64, d)


def test_array_datamodule_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction and test_fraction"):
        DigitsDataModule(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DigitsDataModule(batch_size=0)
