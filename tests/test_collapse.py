"""A fast collapse: the collapse detector on synthetic loss sequences, the lr cap it triggers, the dense probe
schedule, and a real small network at 2x its best step flagged by the monitor at its defaults.

Oracles: the rule as documented in ``naggs_lightning/callbacks/collapse.py`` and ``schedule.py`` (sequences built
so the answer is known by hand), a restored state deciding like the original, and the real run's chance level
(1 / 5 classes) and the step bound of issue 21 (flagged before step 50).
"""

from __future__ import annotations

import math
import random
import warnings

import lightning.pytorch as pl
import pytest
import torch

from naggs_lightning import NAGGS, AdaNAGGS
from naggs_lightning.callbacks import (
    CollapseDetector,
    LrCap,
    Observation,
    ProbeSchedule,
    SpectralStabilityMonitor,
    StabilityWarning,
)
from naggs_lightning.callbacks.groups import group_stability
from naggs_lightning.callbacks.rollback import Snapshot
from naggs_lightning.tasks import SignalCNN, SignalDataModule


def first_flag(detector: CollapseDetector, losses: list[float]) -> int | None:
    """The index of the loss at which the detector flags a collapse (``None``: never)."""
    for i, loss in enumerate(losses):
        if detector.check(loss)[0]:
            return i
    return None


def noisy(values: list[float], scale: float = 0.01, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [v * (1.0 + scale * rng.uniform(-1, 1)) for v in values]


def test_flags_a_fall_then_a_plateau_at_the_initial_loss():
    losses = noisy([1.61] * 10 + [1.61 - 0.01 * k for k in range(15)] + [1.61] * 40)
    detector = CollapseDetector(window=9)
    at = first_flag(detector, losses)
    assert at is not None and 25 < at <= 25 + 9 + 9  # the median back near 1.61 for 9 batches
    assert detector.diverging and detector.lowest <= 0.95 * detector.initial
    assert first_flag(detector, [1.61] * 30) is None  # once per episode
    first_flag(detector, [1.0] * 9)  # recovered: the episode ends
    assert not detector.diverging


def test_flags_a_jump_then_a_plateau_and_says_so_in_words():
    detector = CollapseDetector()
    at = first_flag(detector, noisy([2.30] * 8 + [3.3, 2.8] + [2.30] * 30))
    assert at is not None and at < 8 + 2 + 2 * 9
    detector = CollapseDetector(window=3)
    for loss in [2.3, 2.3, 2.3, 3.0, 2.3, 2.3, 2.3, 2.3]:
        act, reason = detector.check(loss)
        if act:
            break
    assert act and reason.startswith("collapsed: the loss jumped to 3 and came back to 2.3")
    assert "near its initial 2.3; the step threw the network into a flat region" in reason


@pytest.mark.parametrize(
    "losses",
    [
        noisy([2.3 * math.exp(-k / 30) + 0.05 for k in range(300)], scale=0.2),  # a normal run, noisy
        noisy([1.61] * 60 + [1.61 - 0.005 * k for k in range(100)]),  # a slow start, near initial from the start
        noisy([0.6 * math.exp(-k / 50) + 0.02 for k in range(100)] + [0.03, 0.3, 0.05, 0.4] * 50, scale=0.3),  # edge
        [-1.0, -2.0, -3.0, -1.0, -1.0, -1.0, -1.0] * 10,  # a log-likelihood of densities: ratios mean nothing
    ],
    ids=["decreasing", "slow-start", "edge-of-stability", "negative"],
)
def test_stays_quiet_without_a_collapse(losses):
    assert first_flag(CollapseDetector(), losses) is None


def test_hooks_probe_first_decide_at_the_probe_and_round_trip():
    detector = CollapseDetector(window=3)
    decisions = []
    for step, loss in enumerate([2.3, 1.0, 1.0, 1.0, 2.3, 2.3, 2.3, 2.3, 2.3]):
        decisions = detector.on_batch(Observation(step, 500, loss=loss))
        if decisions:
            break
    assert [(d.action, d.after) for d in decisions] == [("probe", 0)]
    restored = CollapseDetector(window=3)
    restored.load_state_dict(detector.state_dict())
    obs = Observation(8, 500, loss=2.3, lambda_max=0.1, edge_ratio=0.01)
    (decision,) = restored.on_probe(obs)
    assert decision.action == "diverging" and decision.reason.startswith("collapsed: the loss fell to 1")
    assert obs.collapsed and restored.diverging and restored.on_probe(obs) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 2}, "window must be an integer >= 3"),
        ({"fall": 1.0}, r"fall must be in \(0, 1\)"),
        ({"jump": 1.0}, "jump must be finite and > 1"),
        ({"near": 0.06}, r"near must be in \(0, 1 - fall\)"),
    ],
)
def test_invalid_settings_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CollapseDetector(**kwargs)


def test_a_collapse_caps_at_half_the_lr_below_the_edge_and_the_curvature_does_not_lift_it():
    opt = NAGGS([torch.nn.Parameter(torch.zeros(3))], lr=0.4, mu=0.1, gamma=0.1)
    group = opt.param_groups[0]
    flat = 0.01  # a flat region: far below the edge
    rows = [group_stability("0/0", "", opt, group, flat)]
    cap = LrCap(0.9)
    cap.update(rows, flat, diverging=True, collapsed=True)
    assert cap.caps == {"0/0": pytest.approx(0.2)} and group["lr"] == pytest.approx(0.2)
    cap.update([group_stability("0/0", "", opt, group, flat)], flat, diverging=False)
    assert cap.caps == {"0/0": pytest.approx(0.2)}  # not lifted: a flat region says nothing about the step
    restored = LrCap(0.9)
    restored.load_state_dict(cap.state_dict())
    restored.update([group_stability("0/0", "", opt, group, flat)], flat, diverging=True, collapsed=True)
    assert restored.caps == {"0/0": pytest.approx(0.1)}  # a further collapse halves it again
    restored.update([group_stability("0/0", "", opt, group, flat)], flat, True, collapsed=True, rolled_back=True)
    assert restored.caps == {"0/0": pytest.approx(0.025)}  # rolled back: a quarter of the lr that collapsed


def test_a_cap_is_lifted_only_where_allowed_and_kept_after_the_step_diverged_twice():
    opt = NAGGS([torch.nn.Parameter(torch.zeros(3))], lr=0.4, mu=0.1, gamma=0.1)
    group = opt.param_groups[0]
    cap, flat, sharp = LrCap(0.9), 0.01, 100.0

    def probe(lam, diverging=False, may_lift=True):
        return cap.update([group_stability("0/0", "", opt, group, lam)], lam, diverging, may_lift=may_lift)

    probe(sharp, diverging=True)
    capped = cap.caps["0/0"]
    assert capped < 0.4 and not probe(flat, may_lift=False)  # a reading the monitor does not let lift
    assert probe(flat) and cap.caps == {} and group["lr"] == pytest.approx(0.4)
    probe(sharp, diverging=True)  # the asked-for step diverged again: capped, and now kept
    assert not probe(flat) and cap.caps == {"0/0": pytest.approx(capped)}
    restored = LrCap(0.9)
    restored.load_state_dict(cap.state_dict())
    assert restored.kept == {"0/0"} and restored.lifted == {"0/0"}


def test_schedule_is_dense_early_and_restarts_when_the_lr_rises():
    schedule = ProbeSchedule(500)
    assert [s for s in range(1, 1201) if schedule.due(s)] == [1, 8, 64, 500, 1000]
    assert not schedule.observe(0, {"0/0": 0.1})
    assert not schedule.observe(100, {"0/0": 0.05})  # a falling lr restarts nothing
    assert schedule.observe(200, {"0/0": 0.1})  # 2x its lowest since the start
    assert [s for s in range(1, 600) if schedule.due(s)] == [201, 208, 264, 500]
    restored = ProbeSchedule(500)
    restored.load_state_dict(schedule.state_dict())
    assert restored.dense_steps() == schedule.dense_steps() and restored.lrs == schedule.lrs
    assert [s for s in range(1, 200) if ProbeSchedule(20, growth=2).due(s)][:5] == [1, 2, 4, 20, 40]
    assert [s for s in range(1, 50) if ProbeSchedule(20, growth=0).due(s)] == [20, 40]
    for kwargs, match in [({"growth": 1}, "growth"), ({"lr_rise": 0.0}, "lr_rise"), ({"every_n_steps": 0}, "every")]:
        with pytest.raises(ValueError, match=match):
            ProbeSchedule(**{"every_n_steps": 500, **kwargs})


class Scheduled(SignalCNN):
    """The signal CNN with the lr doubled at step 30 (a warm-up's jump)."""

    def configure_optimizers(self):
        opt = super().configure_optimizers()
        return [opt], [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 2.0 if s >= 30 else 1.0), "interval": "step"}
        ]


def signal_fit(quiet_trainer, model, monitor, steps: int, *after: pl.Callback) -> tuple[pl.Trainer, list[str]]:
    """Train ``model`` on the signal data under ``monitor`` (then the callbacks ``after``); the StabilityWarnings."""
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=[monitor, *after])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", StabilityWarning)
        trainer.fit(model, datamodule=SignalDataModule())
    return trainer, [str(w.message) for w in record if issubclass(w.category, StabilityWarning)]


def test_real_run_probes_on_the_dense_schedule_and_restarts_after_an_lr_rise(quiet_trainer):
    monitor = SpectralStabilityMonitor()
    pl.seed_everything(0, verbose=False)
    signal_fit(quiet_trainer, Scheduled(lr=0.05, mu=0.1, gamma=0.1), monitor, 80)
    assert [h["step"] for h in monitor.history] == [1, 8, 31, 38]
    assert monitor.state_dict()["schedule"]["start"] == 30


@pytest.mark.parametrize("on_unstable", ["warn", "cap_lr"])
def test_a_collapse_at_twice_the_best_step_is_flagged_before_step_50_and_cap_lr_rescues_it(on_unstable, quiet_trainer):
    # SignalCNN, NAG-GS mu = gamma = 0.1: the best step is about 0.2; at 0.4 the run collapses to chance.
    monitor = SpectralStabilityMonitor(on_unstable=on_unstable)
    pl.seed_everything(0, verbose=False)
    model = SignalCNN(lr=0.4, mu=0.1, gamma=0.1)
    trainer, warned = signal_fit(quiet_trainer, model, monitor, 300)
    collapses = [w for w in warned if "collapsed: the loss" in w]
    assert collapses  # under warn the run recovers a little and collapses again: a second episode
    assert int(collapses[0].split("step ")[1].split(":")[0]) < 50
    accuracy = trainer.test(model, datamodule=SignalDataModule(), verbose=False)[0]["test_acc"]
    if on_unstable == "cap_lr":
        # rolled back to the start and restarted at a quarter of the lr that collapsed
        assert [h["rolled_back_to"] for h in monitor.history if "rolled_back_to" in h] == [0]
        assert monitor.lr_caps == {"0/0": pytest.approx(0.1)}
        assert accuracy > 0.5  # chance is 0.2
    else:
        assert accuracy < 0.3  # the control: collapsed to chance


def test_no_cap_is_lifted_inside_the_dense_phase():
    # Early in training a network is flat whatever the step: a cap lifted there gives the diverging step back.
    opt = NAGGS([torch.nn.Parameter(torch.zeros(3))], lr=0.4, mu=0.1, gamma=0.1)
    group = opt.param_groups[0]
    cap = LrCap(0.9)
    cap.lower("0/0", 0.1)
    flat = 0.01  # below the edge of the asked-for 0.4: the curvature rule would lift
    cap.update([group_stability("0/0", "", opt, group, flat)], flat, diverging=False, may_lift=False)
    assert cap.caps == {"0/0": pytest.approx(0.09)} and group["lr"] == pytest.approx(0.09)
    lifted = cap.update([group_stability("0/0", "", opt, group, flat)], flat, diverging=False)
    assert len(lifted) == 1 and cap.caps == {} and group["lr"] == pytest.approx(0.4)
    schedule = ProbeSchedule(500)
    assert schedule.dense(0) and schedule.dense(124) and not schedule.dense(125)
    schedule.observe(0, {"0/0": 0.1})
    schedule.observe(300, {"0/0": 0.2})  # a rise restarts the phase
    assert not schedule.dense(299) and schedule.dense(300) and schedule.dense(424) and not schedule.dense(425)
    assert not ProbeSchedule(500, growth=0).dense(1)


class Huge(pl.LightningModule):
    """loss = 1e20 * sum(w): a finite loss and gradient whose squared norm overflows float32."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def compute_loss(self, batch):
        return 1e20 * (self.w * batch).sum() + (self.w**2).sum()


def test_a_probe_along_a_gradient_that_overflows_gives_no_batch_sharpness():
    # A diverging run (the digits MLP at 2x its best step) reached such a gradient: the probe raised before.
    from naggs_lightning.curvature import probe_batch

    module = Huge()
    probe = probe_batch(module, torch.ones(4), params=list(module.parameters()))
    assert math.isnan(probe.batch_sharpness) and probe.eigen.eigenvalue == pytest.approx(2.0, rel=1e-2)


class Recorder(pl.Callback):
    """The parameters at the start of training and at the end of the batch where the monitor rolled back (it
    runs after the monitor in the callback list)."""

    def __init__(self, monitor: SpectralStabilityMonitor):
        self.monitor, self.initial, self.after_rollback, self.state = monitor, None, None, None

    def on_train_start(self, trainer, pl_module):
        self.initial = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = self.monitor.history[-1] if self.monitor.history else {}
        if last.get("step") == trainer.global_step and "rolled_back_to" in last and self.after_rollback is None:
            self.after_rollback = [p.detach().clone() for p in pl_module.parameters()]
            self.state = len(trainer.optimizers[0].state)


def test_a_collapse_in_the_dense_phase_rolls_the_weights_back_to_the_start(quiet_trainer):
    monitor = SpectralStabilityMonitor(on_unstable="cap_lr")
    recorder = Recorder(monitor)
    pl.seed_everything(0, verbose=False)
    model = SignalCNN(lr=0.8, mu=0.1, gamma=0.1)  # 4x the best step: collapses within 20 steps
    signal_fit(quiet_trainer, model, monitor, 40, recorder)
    assert recorder.after_rollback is not None
    for now, then in zip(recorder.after_rollback, recorder.initial):
        torch.testing.assert_close(now, then, rtol=0, atol=0)
    assert recorder.state == 0  # the optimizer had not stepped at the snapshot: its state is gone too
    assert monitor.lr_caps == {"0/0": pytest.approx(0.2)}
    rolled = next(h for h in monitor.history if "rolled_back_to" in h)
    assert monitor.state_dict()["schedule"]["start"] == rolled["step"]  # the dense phase starts over there


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: NAGGS(ps, lr=0.1, mu=0.1, gamma=0.5),  # gamma evolves in the param group
        lambda ps: NAGGS(ps, lr=torch.tensor(0.1), mu=0.1, gamma=0.5, foreach=False),
        lambda ps: AdaNAGGS(ps, lr=0.03, mu=0.1, gamma=0.5),
        lambda ps: AdaNAGGS(ps, lr=0.03, mu=0.1, gamma=0.5, fused=True),
    ],
    ids=["naggs", "naggs-tensor-lr", "adanaggs", "adanaggs-fused"],
)
def test_a_restored_snapshot_replays_the_same_trajectory(make):
    # Oracle: determinism. Restoring the state of step 3 and feeding steps 4-7 the same batches again must land on
    # exactly the parameters the first pass reached; the lr set since the snapshot is kept.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = make(list(model.parameters()))
    batches = [(torch.randn(16, 5), torch.randn(16, 1)) for _ in range(7)]

    def train(steps):
        for x, y in steps:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    train(batches[:3])
    snapshot = Snapshot(model, [opt], step=3)
    train(batches[3:])
    first_pass = [p.detach().clone() for p in model.parameters()]
    lr = opt.param_groups[0]["lr"]
    snapshot.restore(model, [opt])
    assert opt.param_groups[0]["lr"] is lr
    train(batches[3:])
    for now, then in zip(model.parameters(), first_pass):
        torch.testing.assert_close(now.detach(), then, rtol=0, atol=0)
    snapshot.restore(model, [opt])  # restorable again: nothing of the snapshot was trained in place
    train(batches[3:])
    for now, then in zip(model.parameters(), first_pass):
        torch.testing.assert_close(now.detach(), then, rtol=0, atol=0)


def test_no_rollback_when_turned_off_or_past_the_dense_phase(quiet_trainer):
    monitor = SpectralStabilityMonitor(on_unstable="cap_lr", rollback=False)
    pl.seed_everything(0, verbose=False)
    signal_fit(quiet_trainer, SignalCNN(lr=0.8, mu=0.1, gamma=0.1), monitor, 40)
    assert not any("rolled_back_to" in h for h in monitor.history)
    assert monitor.lr_caps == {"0/0": pytest.approx(0.4)}  # capped only, at half the lr
    assert not SpectralStabilityMonitor(on_unstable="warn").rollback  # only cap_lr acts
