"""SpectralStabilityMonitor on real Trainer runs.

Oracles: the closed forms of :mod:`naggs_lightning.theory` evaluated at the logged numbers, gamma's own
recursion, an independent estimate on the batch and parameters the probe saw, parameter traces recorded
by a second callback (update cosine), an unmonitored run (the probe leaves training untouched), an
uninterrupted run (resume), and the unmonitored divergence the monitor is there to prevent.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from naggs_lightning import NAGGS, theory
from naggs_lightning.callbacks import (
    CollapseDetector,
    Decision,
    Detector,
    EdgeOfStabilityDetector,
    NonFiniteLossDetector,
    Observation,
    OscillationDetector,
    SpectralStabilityMonitor,
    SpikeDetector,
    StabilityWarning,
    default_detectors,
)
from naggs_lightning.curvature import estimate_top_eigenvalue
from naggs_lightning.tasks import MLP, DigitsDataModule, LeastSquares, QuadraticDataModule

BATCH = 128
STEPS_PER_EPOCH = 14  # 1792 of the 1797 digits in batches of 128


@pytest.fixture(autouse=True)
def _quiet_lightning(caplog):
    caplog.set_level("ERROR", logger="lightning.pytorch")


def digits_loader(corrupt_batch: int | None = None) -> DataLoader:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[: BATCH * STEPS_PER_EPOCH] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[: BATCH * STEPS_PER_EPOCH])
    if corrupt_batch is not None:
        x[corrupt_batch * BATCH] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


class Digits(pl.LightningModule):
    """``"linear"``: least squares on one-hot targets (constant Hessian; past the edge it overflows);
    ``"mlp"``: a ReLU MLP with cross-entropy; ``"bn"``: an MLP with BatchNorm and dropout."""

    def __init__(self, kind: str, make_optimizer: Callable, scheduler: Callable | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        if kind == "linear":
            self.net = nn.Linear(64, 10)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        else:
            self.net = nn.Sequential(
                nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)
            )
        self.kind = kind
        self.make_optimizer = make_optimizer
        self.scheduler = scheduler

    def compute_loss(self, batch):
        x, y = batch
        out = self.net(x)
        if self.kind == "linear":
            return nn.functional.mse_loss(out, nn.functional.one_hot(y, 10).float())
        return nn.functional.cross_entropy(out, y)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = self.make_optimizer(self)
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt), "interval": "step"}}


class Recorder(pl.Callback):
    """Losses and flat parameters after every optimizer step, and the lr each step was taken with."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.params: dict[int, torch.Tensor] = {}
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.params[trainer.global_step] = torch.cat([p.detach().reshape(-1).clone() for p in pl_module.parameters()])


@pytest.fixture
def fit(quiet_trainer):
    """``fit(model, callbacks, loader, ...)``: trains on a quiet Trainer and returns it."""

    def fit(model, callbacks, loader=None, *, datamodule=None, ckpt_path=None, **trainer_kwargs) -> pl.Trainer:
        trainer = quiet_trainer(callbacks=callbacks, **trainer_kwargs)
        trainer.fit(model, loader if datamodule is None else None, datamodule=datamodule, ckpt_path=ckpt_path)
        return trainer

    return fit


def stability_warnings(record, text: str = "") -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, StabilityWarning) and text in str(w.message)]


def top_curvature(kind: str) -> float:
    model = Digits(kind, lambda m: None)
    return estimate_top_eigenvalue(model, [b for _, b in zip(range(4), digits_loader())])


def test_logged_numbers_are_the_theory_at_the_current_hyperparameters(tmp_path, fit):
    mu, gamma0, lr = 0.05, 0.5, 0.3
    model = Digits("mlp", lambda m: NAGGS(m.parameters(), lr=lr, mu=mu, gamma=gamma0))
    monitor = SpectralStabilityMonitor(every_n_steps=5)
    trainer = fit(model, [monitor], digits_loader(), max_steps=10, logger=CSVLogger(tmp_path, name="", version=""))
    with open(tmp_path / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    probes = [r for r in rows if "stability/lambda_max" in r]
    assert [int(r["step"]) for r in probes] == [0, 4, 9]  # logger steps of optimizer steps 1, 5 and 10
    assert [h["step"] for h in monitor.history] == [1, 5, 10]
    for row, record in zip(probes, monitor.history):
        lam, k = row["stability/lambda_max"], record["step"]
        assert lam == pytest.approx(record["lambda_max"], rel=1e-6)
        assert row["stability/gamma"] == pytest.approx(mu + (gamma0 - mu) * (1 + lr) ** -k, rel=1e-6)
        g = row["stability/gamma"]
        assert row["stability/lr"] == lr
        assert row["stability/rho"] == pytest.approx(theory.spectral_radius(lr, mu, g, lam), rel=1e-6)
        assert row["stability/lambda_stab"] == pytest.approx(theory.lambda_stab(lr, mu, g), rel=1e-6)
        assert row["stability/margin"] == pytest.approx(theory.lambda_stab(lr, mu, g) - lam, rel=1e-5)
        assert row["stability/alpha_crit"] == pytest.approx(theory.alpha_crit(mu, g, lam), rel=1e-6)
        assert row["stability/alpha_opt"] == pytest.approx(theory.alpha_opt(mu, lam), rel=1e-6)
        assert 1 <= row["stability/hvps"] <= 20
    assert "stability/update_cosine" not in probes[0]  # no update pair before the first step
    assert -1.0 <= probes[1]["stability/update_cosine"] <= 1.0
    assert float(trainer.callback_metrics["stability/margin"]) == pytest.approx(
        probes[-1]["stability/margin"], rel=1e-6
    )


def test_probe_sees_the_current_batch_and_parameters(fit):
    model = Digits("mlp", lambda m: NAGGS(m.parameters(), lr=0.3, mu=0.05, gamma=0.05))
    monitor = SpectralStabilityMonitor(tol=1e-4)
    fit(model, [monitor], digits_loader(), max_steps=1)
    first_batch = next(iter(digits_loader()))
    expected = estimate_top_eigenvalue(model, [first_batch], tol=1e-6, max_iter=50)
    assert monitor.history[0]["lambda_max"] == pytest.approx(expected, rel=1e-3)
    second_batch = list(digits_loader())[1]
    assert abs(estimate_top_eigenvalue(model, [second_batch], tol=1e-6, max_iter=50) - expected) > 1e-2 * expected


def test_keys_per_param_group(fit):
    def two_groups(m):
        first, last = m.net[0], m.net[2]
        return NAGGS(
            [
                {"params": first.parameters(), "lr": 0.2, "mu": 0.1},
                {"params": last.parameters(), "lr": 0.05, "mu": 0.01, "name": "head"},
            ],
            gamma=1.0,
        )

    monitor = SpectralStabilityMonitor()
    fit(Digits("mlp", two_groups), [monitor], digits_loader(), max_steps=1)
    metrics = monitor.last_metrics
    assert "stability/lambda_max" in metrics
    assert metrics["stability/lr/pg1"] == 0.2 and metrics["stability/lr/head"] == 0.05
    lam = metrics["stability/lambda_max"]
    for suffix, lr, mu in (("/pg1", 0.2, 0.1), ("/head", 0.05, 0.01)):
        gamma = metrics[f"stability/gamma{suffix}"]
        lambda_stab = theory.lambda_stab(lr, mu, gamma)
        assert metrics[f"stability/lambda_stab{suffix}"] == pytest.approx(lambda_stab, rel=1e-6)
        assert metrics[f"stability/margin{suffix}"] == pytest.approx(lambda_stab - lam, rel=1e-6)
        assert metrics[f"stability/alpha_crit{suffix}"] == pytest.approx(theory.alpha_crit(mu, gamma, lam), rel=1e-6)
    assert "stability/margin" not in metrics


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_reports_the_classic_edge(nesterov, fit):
    lr, beta, wd = 0.1, 0.9, 1e-3
    model = Digits(
        "mlp", lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=beta, nesterov=nesterov, weight_decay=wd)
    )
    monitor = SpectralStabilityMonitor()
    fit(model, [monitor], digits_loader(), max_steps=1)
    m = monitor.last_metrics
    lam = m["stability/lambda_max"]
    edge = (2 + 2 * beta) / ((1 + 2 * beta) * lr) if nesterov else 2 * (1 + beta) / lr
    assert m["stability/edge"] == pytest.approx(edge, rel=1e-9)
    assert m["stability/margin"] == pytest.approx(edge - lam - wd, rel=1e-9)
    assert m["stability/lr_crit"] == pytest.approx(lr * edge / (lam + wd), rel=1e-9)
    assert "stability/rho" not in m


def test_adamw_reports_lambda_max_only(fit):
    monitor = SpectralStabilityMonitor()
    fit(Digits("mlp", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)), [monitor], digits_loader(), max_steps=1)
    keys = {"stability/lambda_max", "stability/batch_sharpness", "stability/hvps", "stability/lr"}
    assert set(monitor.last_metrics) == keys


def test_stop_ends_training_at_the_first_probe(fit):
    lam = top_curvature("linear")
    lr = 2 * theory.alpha_crit(0.05, 0.05, lam)
    model = Digits("linear", lambda m: NAGGS(m.parameters(), lr=lr, mu=0.05, gamma=0.05))
    monitor = SpectralStabilityMonitor(on_unstable="stop")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit(model, [monitor], digits_loader(), max_steps=100)
    assert trainer.global_step == 1
    assert monitor.unstable
    assert len(stability_warnings(record, "past the stability edge")) == 1
    lam = monitor.history[0]["lambda_max"]
    assert monitor.stop_reason.startswith(f"lambda_max = {lam:.4g} at step 1: the top Hessian eigenvalue is ")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["least_squares", "digits_mlp"])
def test_twice_alpha_crit_is_flagged_before_divergence_and_cap_lr_converges(task, fit):
    """On shipped tasks: NAG-GS at twice the stability edge of the measured curvature (L > 2 mu)."""

    def make(lr: float = 0.1, mu: float = 1.0):
        pl.seed_everything(0, verbose=False)
        if task == "least_squares":
            return LeastSquares(dim=20, lr=lr, mu=mu, gamma=mu), QuadraticDataModule(
                dim=20, mu=0.1, L=10.0, batch_size=100
            )
        return MLP(lr=lr, mu=mu, gamma=mu), DigitsDataModule(batch_size=128)

    model, data = make()
    data.setup("fit")
    lam = estimate_top_eigenvalue(model, [b for _, b in zip(range(4), data.train_dataloader())])
    mu = 0.05 * lam
    lr = 2 * theory.alpha_crit(mu, mu, lam)

    runs = {}
    for action in ("warn", "cap_lr"):
        model, data = make(lr, mu)
        monitor, recorder = SpectralStabilityMonitor(every_n_steps=10, on_unstable=action), Recorder()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fit(model, [recorder, monitor], datamodule=data, max_epochs=5, limit_val_batches=0)
        runs[action] = (monitor, recorder.losses, record)

    monitor, losses, record = runs["warn"]
    diverged_at = next(i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss))
    flagged_at = next(h["step"] for h in monitor.history if h["unstable"])
    # Step 1 is already far past the edge; the first probe that also sees the loss rise flags it.
    assert monitor.history[0]["zone"] == "past"
    assert flagged_at <= 10 < diverged_at
    assert len(stability_warnings(record, "past the stability edge")) == 1  # one episode, one warning
    assert len(stability_warnings(record, "the training loss is")) == 1
    assert sum(h["unstable"] for h in monitor.history) > 1

    monitor, losses, record = runs["cap_lr"]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < 0.2 * losses[0]
    (warning,) = stability_warnings(record, "past the stability edge")
    assert "lr capped at" in warning  # the cap is stated
    capped = next(h for h in monitor.history if h["unstable"])
    assert capped["step"] <= 10
    assert all(h["edge_ratio"] < 1.0 for h in monitor.history[-3:])  # the run trains below or at its edge


@pytest.mark.parametrize("action, stops", [("warn", False), ("stop", True), ("cap_lr", True)])
def test_non_finite_loss_acts_at_once(action, stops, fit):
    # A NaN pixel in batch 3: the loss of step 4 is NaN and the NaN gradient poisons the parameters.
    model = Digits("mlp", lambda m: NAGGS(m.parameters(), lr=0.1, mu=1.0, gamma=1.0))
    monitor = SpectralStabilityMonitor(on_unstable=action, every_n_steps=1000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit(model, [monitor], digits_loader(corrupt_batch=3), max_steps=10)
    assert trainer.global_step == (4 if stops else 10)
    messages = stability_warnings(record, "the training loss is nan")
    assert len(messages) == 1  # once per episode, though every later loss is NaN too
    assert "no longer finite" in messages[0]
    assert monitor.unstable
    expected = "step 4: the training loss is nan; the parameters are no longer finite: stopping training"
    assert monitor.stop_reason == (expected if stops else None)


def test_loss_spike_brings_the_probe_forward_and_the_cap_holds_under_a_scheduler(fit):
    lam = top_curvature("linear")
    safe = 0.5 * theory.alpha_crit(0.05, 0.05, lam)

    def run(monitor):
        # The scheduler multiplies the step by 4 at step 30: twice the edge from then on.
        model = Digits(
            "linear",
            lambda m: NAGGS(m.parameters(), lr=safe, mu=0.05, gamma=0.05),
            scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 4.0 if step >= 30 else 1.0),
        )
        recorder = Recorder()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fit(model, [recorder] + ([monitor] if monitor else []), digits_loader(), max_steps=140)
        return recorder, record

    unmonitored, _ = run(None)
    assert not math.isfinite(unmonitored.losses[-1])  # the control diverges

    # No dense phase: the lr rise at step 30 would restart it (tests/test_schedule.py), the spike is tested here.
    monitor = SpectralStabilityMonitor(every_n_steps=1000, on_unstable="cap_lr", dense_growth=0)
    recorder, record = run(monitor)
    losses = recorder.losses
    probes = [h["step"] for h in monitor.history]
    assert probes[0] == 1 and 31 < probes[1] < 45  # scheduled at step 1 only; the spike triggered the second
    assert monitor.history[1]["unstable"]
    assert len(stability_warnings(record, "diverging")) == 1
    assert all(math.isfinite(loss) for loss in losses)
    cap, capped_at = monitor.lr_caps["0/0"], probes[1]
    assert cap < 4 * safe
    # Step k (1-based) is taken with lrs[k - 1]; the scheduler asks for 4 * safe from step 31 on.
    assert recorder.lrs[:30] == pytest.approx([safe] * 30)
    assert recorder.lrs[30:capped_at] == pytest.approx([4 * safe] * (capped_at - 30))
    assert recorder.lrs[capped_at:] == pytest.approx([cap] * (140 - capped_at))


@pytest.mark.parametrize("scale, oscillates", [(2.2, True), (0.5, False)])
def test_update_cosine_matches_the_parameter_trace(scale, oscillates, fit):
    # Gradient descent at 2.2 / lambda_max: the top mode flips sign every step and grows.
    lr = scale / top_curvature("linear")
    monitor, recorder = SpectralStabilityMonitor(every_n_steps=5), Recorder()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(
            Digits("linear", lambda m: torch.optim.SGD(m.parameters(), lr=lr)),
            [recorder, monitor],
            digits_loader(),
            max_steps=15,
        )
    x = recorder.params
    for h in monitor.history[1:]:
        k = h["step"]
        du, dv = x[k] - x[k - 1], x[k - 1] - x[k - 2]
        assert h["update_cosine"] == pytest.approx(float(du @ dv / (du.norm() * dv.norm())), abs=1e-5)
    assert (monitor.history[-1]["update_cosine"] < -0.9) is oscillates
    # 2.2 / lambda_max is 1.1x the edge: oscillation at the edge is a divergence sign only past 2x the edge.
    assert not stability_warnings(record)
    assert {h["zone"] for h in monitor.history[1:]} == ({"edge"} if oscillates else {"below"})


def test_resume_continues_history_and_warm_start(tmp_path, fit):
    def make():
        return Digits("mlp", lambda m: NAGGS(m.parameters(), lr=0.3, mu=1.0, gamma=2.0))

    def history(monitor):
        return [
            (h["step"], h["hvps"], round(h["lambda_max"], 6), round(h.get("update_cosine", 0.0), 6))
            for h in monitor.history
        ]

    # every_n_steps=6: no update snapshot is pending at the end of epoch 1 (step 14).
    full = SpectralStabilityMonitor(every_n_steps=6)
    fit(make(), [full], digits_loader(), max_epochs=2)

    first = SpectralStabilityMonitor(every_n_steps=6)
    trainer = fit(make(), [first], digits_loader(), max_epochs=1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = SpectralStabilityMonitor(every_n_steps=6)
    fit(make(), [resumed], digits_loader(), max_epochs=2, ckpt_path=tmp_path / "epoch1.ckpt")
    assert [h[0] for h in history(full)] == [1, 6, 12, 18, 24]
    assert history(resumed) == history(full)
    assert torch.equal(resumed.state_dict()["vector"], full.state_dict()["vector"])  # the warm start too


def test_gradient_accumulation_probes_once_per_optimizer_step(fit):
    monitor = SpectralStabilityMonitor(every_n_steps=3)
    model = Digits("mlp", lambda m: NAGGS(m.parameters(), lr=0.1))
    fit(model, [monitor], digits_loader(), max_steps=6, accumulate_grad_batches=2)
    assert [h["step"] for h in monitor.history] == [1, 3, 6]


def test_monitor_leaves_training_untouched(fit):
    """BatchNorm, dropout and the RNG stream: a monitored run ends bitwise where an unmonitored one does."""

    def run(callbacks):
        pl.seed_everything(0, verbose=False)
        model = Digits("bn", lambda m: NAGGS(m.parameters(), lr=0.2, mu=1.0, gamma=1.0))
        fit(model, callbacks, digits_loader(), max_steps=12)
        return model.state_dict()

    monitor = SpectralStabilityMonitor(every_n_steps=2)
    plain, monitored = run([]), run([monitor])
    assert [h["step"] for h in monitor.history] == [1, 2, 4, 6, 8, 10, 12]
    assert plain.keys() == monitored.keys()
    for name in plain:
        assert torch.equal(plain[name], monitored[name]), name


def test_cap_keeps_a_tensor_lr_a_tensor(fit):
    lam = top_curvature("linear")
    lr = 2 * theory.alpha_crit(0.05, 0.05, lam)
    model = Digits("linear", lambda m: NAGGS(m.parameters(), lr=torch.tensor(lr), mu=0.05, gamma=0.05))
    monitor = SpectralStabilityMonitor(on_unstable="cap_lr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        trainer = fit(model, [monitor], digits_loader(), max_steps=3)
    group_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert isinstance(group_lr, torch.Tensor)
    assert float(group_lr) == pytest.approx(monitor.lr_caps["0/0"], rel=1e-6)


class ManualDigits(Digits):
    def __init__(self) -> None:
        super().__init__("mlp", lambda m: NAGGS(m.parameters(), lr=0.1))
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.compute_loss(batch))
        opt.step()


class ManualDigitsNoLoss(ManualDigits):
    compute_loss = None

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(nn.functional.cross_entropy(self.net(batch[0]), batch[1]))
        opt.step()


def test_manual_optimization_needs_compute_loss(fit):
    with pytest.raises(MisconfigurationException, match="compute_loss"):
        fit(ManualDigitsNoLoss(), [SpectralStabilityMonitor()], digits_loader(), max_steps=1)
    monitor = SpectralStabilityMonitor(every_n_steps=2)
    fit(ManualDigits(), [monitor], digits_loader(), max_steps=4)
    assert [h["step"] for h in monitor.history] == [1, 2, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every_n_steps=0), "every_n_steps must be an integer >= 1"),
        (dict(on_unstable="raise"), "on_unstable must be one of"),
        (dict(safety_factor=1.5), r"safety_factor must be in \(0, 1\]"),
        (dict(max_iter=0), "max_iter must be an integer >= 1"),
        (dict(tol=1.0), r"tol must be in \[0, 1\)"),
        (dict(method="fd"), "method must be"),
        (dict(algorithm="arnoldi"), "algorithm must be"),
        (dict(detectors=[SpikeDetector(), "edge"]), "detectors must be a list of Detector instances"),
        (dict(detectors=SpikeDetector()), "detectors must be a list of Detector instances"),
        (dict(detectors=[SpikeDetector(), SpikeDetector(factor=5.0)]), r"names must be unique .* \['spike'\]"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        SpectralStabilityMonitor(**kwargs)


class FallingCurvature(Digits):
    """Least squares whose loss (hence Hessian) is scaled by 0.1 from step 20 on: the curvature falls 10x."""

    def compute_loss(self, batch):
        return (1.0 if self.global_step < 20 else 0.1) * super().compute_loss(batch)


def test_cap_lr_lifts_the_cap_once_the_asked_for_step_is_below_its_edge(fit):
    lam = top_curvature("linear")
    mu = 0.05 * lam
    asked = 2 * theory.alpha_crit(mu, mu, lam)  # 2.4x past the edge of the initial curvature
    model = FallingCurvature("linear", lambda m: NAGGS(m.parameters(), lr=asked, mu=mu, gamma=mu))
    monitor, recorder = SpectralStabilityMonitor(every_n_steps=10, on_unstable="cap_lr"), Recorder()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, [recorder, monitor], digits_loader(), max_steps=60)
    first, *later = monitor.history
    assert first["step"] == 1 and first["unstable"]  # the loss rose at once: capped after step 1
    cap = 0.9 * theory.alpha_crit(mu, mu, first["lambda_max"])
    assert len(stability_warnings(record, "lr capped at")) == 1
    lifted_at = next(h["step"] for h in later if h["lambda_max"] < theory.lambda_stab(asked, mu, mu))
    assert lifted_at == 20  # the first probe after the curvature fell
    # Step k (1-based) is taken with lrs[k - 1]: capped from step 2 to step 20, the asked-for lr from step 21.
    assert recorder.lrs[0] == asked
    assert recorder.lrs[1:lifted_at] == pytest.approx([cap] * (lifted_at - 1), rel=1e-3)
    assert recorder.lrs[lifted_at:] == pytest.approx([asked] * (60 - lifted_at))
    assert monitor.lr_caps == {}
    assert all(math.isfinite(loss) for loss in recorder.losses)


def test_the_default_list_is_what_no_detectors_builds():
    def settings(detectors):
        return [(type(d), repr(d), d.name) for d in detectors]

    expected = [
        NonFiniteLossDetector(),
        SpikeDetector(),
        OscillationDetector(),
        EdgeOfStabilityDetector(),
        CollapseDetector(),
    ]
    assert settings(SpectralStabilityMonitor().detectors) == settings(default_detectors()) == settings(expected)
    assert SpectralStabilityMonitor().detectors[0] is not SpectralStabilityMonitor().detectors[0]  # not shared


class LossAbove(Detector):
    """A user's rule: a training loss above ``limit`` is divergence (once per episode)."""

    name = "loss_above"

    def __init__(self, limit: float = 1.0) -> None:
        self.limit = limit
        self.diverging = False
        self.seen: list[tuple[str, int]] = []

    def on_batch(self, obs):
        self.seen.append(("batch", obs.step))
        start = obs.loss is not None and obs.loss > self.limit and not self.diverging
        self.diverging = obs.loss is not None and obs.loss > self.limit
        return [Decision.diverging(f"the loss {obs.loss:.3g} is above {self.limit:g}")] if start else []

    def on_probe(self, obs):
        self.seen.append(("probe", obs.step))
        return [Decision.inform(f"probed at {obs.lambda_max:.3g}")]

    def state_dict(self):
        return {"diverging": self.diverging}

    def load_state_dict(self, state):
        self.diverging = state["diverging"]


def test_a_custom_detector_in_the_list_acts_and_its_reason_reaches_the_warning(caplog, fit):
    caplog.set_level("INFO", logger="lightning.pytorch")
    model = Digits("mlp", lambda m: NAGGS(m.parameters(), lr=0.1, mu=1.0, gamma=1.0))
    custom = LossAbove(limit=0.5)  # the digits MLP starts at a loss of about 2.3
    monitor = SpectralStabilityMonitor(every_n_steps=3, on_unstable="stop", detectors=[custom])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit(model, [monitor], digits_loader(), max_steps=10)
    assert trainer.global_step == 1  # stopped at the first step's loss
    (warning,) = stability_warnings(record)
    assert warning.startswith("SpectralStabilityMonitor: step 1: the loss 2.3") and "is above 0.5" in warning
    assert monitor.unstable and monitor.stop_reason.startswith("step 1: the loss 2.3")
    assert custom.seen == [("batch", 1), ("probe", 1)]  # the first step is probed (finite loss) before the stop
    assert any("step 1: probed at" in r.getMessage() for r in caplog.records)
    # Without the default detectors there is no zone in the record, and nothing else changes.
    assert "zone" not in monitor.history[0] and monitor.history[0]["unstable"]


def test_state_dict_round_trips_each_detector_under_its_name():
    detectors = [NonFiniteLossDetector(), SpikeDetector(window=4), EdgeOfStabilityDetector(), LossAbove()]
    monitor = SpectralStabilityMonitor(detectors=detectors)
    for loss in (1.0, 1.0, 1.0, math.nan, 9.0):
        for detector in detectors:
            detector.on_batch(Observation(1, 500, loss=loss))
    detectors[2].on_probe(Observation(1, 500, loss=1.0, lambda_max=3.0, edge_ratio=3.0, loss_after=1.0))
    state = monitor.state_dict()
    assert set(state["detectors"]) == {"non_finite", "spike", "edge", "loss_above"}
    assert state["detectors"]["spike"] == {"losses": [1.0, 1.0, 1.0, 9.0], "scale": 1.0, "active": True}
    assert state["detectors"]["edge"] == {"reached": True, "diverging": False, "recheck": 2, "past": [3.0]}
    assert state["detectors"]["loss_above"] == {"diverging": True}
    restored = SpectralStabilityMonitor(
        detectors=[NonFiniteLossDetector(), SpikeDetector(window=4), EdgeOfStabilityDetector(), LossAbove()]
    )
    restored.load_state_dict(state)
    assert restored.state_dict()["detectors"] == state["detectors"] and restored.unstable
    # A detector the checkpoint does not know starts fresh; one it knows but the list lacks is ignored.
    partial = SpectralStabilityMonitor(detectors=[OscillationDetector(), LossAbove()])
    partial.load_state_dict(state)
    assert partial.state_dict()["detectors"] == {
        "oscillation": {"snapshot": None, "update": None},
        "loss_above": {"diverging": True},
    }


def test_jsonargparse_builds_a_monitor_with_a_detectors_list_from_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SpectralStabilityMonitor, "monitor")
    config = parser.parse_string(
        """
monitor:
  every_n_steps: 20
  on_unstable: cap_lr
  detectors:
    - class_path: naggs_lightning.callbacks.NonFiniteLossDetector
    - class_path: naggs_lightning.callbacks.SpikeDetector
      init_args: {factor: 4.0, window: 20}
    - class_path: naggs_lightning.callbacks.EdgeOfStabilityDetector
      init_args: {divergence_ratio: 3.0}
"""
    )
    monitor = parser.instantiate_classes(config).monitor
    assert monitor.every_n_steps == 20 and monitor.on_unstable == "cap_lr"
    assert [repr(d) for d in monitor.detectors] == [
        "NonFiniteLossDetector()",
        "SpikeDetector(factor=4.0, min_rise=0.1, window=20)",
        "EdgeOfStabilityDetector(band=0.1, divergence_ratio=3.0)",
    ]
    default = parser.instantiate_classes(parser.parse_string("monitor: {every_n_steps: 5}")).monitor
    assert [repr(d) for d in default.detectors] == [repr(d) for d in default_detectors()]


def test_naggs_train_cli_builds_the_monitor_with_its_detectors_from_a_config(monkeypatch):
    from naggs_lightning.cli import build_cli

    monkeypatch.setattr("sys.argv", ["naggs-train"])

    monitor_config = {
        "class_path": "naggs_lightning.callbacks.SpectralStabilityMonitor",
        "init_args": {
            "every_n_steps": 20,
            "detectors": [
                {"class_path": "naggs_lightning.callbacks.NonFiniteLossDetector"},
                {"class_path": "naggs_lightning.callbacks.SpikeDetector", "init_args": {"factor": 3.5}},
            ],
        },
    }
    config = {
        "model": {"class_path": "naggs_lightning.tasks.MLP"},
        "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule"},
        "trainer": {"callbacks": [monitor_config], "logger": False, "enable_checkpointing": False},
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No seed found")
        cli = build_cli(config, run=False)
    (monitor,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, SpectralStabilityMonitor)]
    assert monitor.every_n_steps == 20
    assert [repr(d) for d in monitor.detectors] == [
        "NonFiniteLossDetector()",
        "SpikeDetector(factor=3.5, min_rise=0.1, window=50)",
    ]
