"""The monitor's detectors on their own: each decision method against hand-computed cases, and each state_dict.

Oracles: the rules as documented in each detector's module (numbers chosen so that the answer is known by
hand), :mod:`naggs_lightning.theory` for the edges, and a detector restored from a state_dict deciding like
the original.
"""

from __future__ import annotations

import math

import pytest
import torch

from naggs_lightning import NAGGS, theory
from naggs_lightning.callbacks import (
    EdgeOfStabilityDetector,
    LrCap,
    NonFiniteLossDetector,
    OscillationDetector,
    SpikeDetector,
)
from naggs_lightning.callbacks.groups import group_stability


def test_non_finite_loss_acts_once_per_episode():
    detector = NonFiniteLossDetector()
    assert detector.check(1.0) == (False, None)
    assert detector.check(math.nan) == (True, "the training loss is nan")
    assert detector.check(math.inf) == (False, None)  # same episode
    restored = NonFiniteLossDetector()
    restored.load_state_dict(detector.state_dict())
    assert restored.active and restored.check(math.nan) == (False, None)
    assert detector.check(0.5) == (False, None) and not detector.active  # a finite loss ends the episode
    assert detector.check(-math.inf) == (True, "the training loss is -inf")


def test_spike_needs_a_ratio_and_a_rise_over_the_loss_scale():
    detector = SpikeDetector(factor=3.0, min_rise=0.1, window=10)
    for _ in range(5):  # the median needs window // 2 losses
        assert detector.check(1.0) == (False, None)
    act, reason = detector.check(4.0)  # 4x the median 1.0, and 3.0 above it > 0.1 x scale 1.0
    assert act and "4.0x the median 1 of the last 5 losses" in reason
    assert detector.check(4.0) == (False, None)  # the same spike (the window's median is still 1)
    restored = SpikeDetector(factor=3.0, min_rise=0.1, window=10)
    restored.load_state_dict(detector.state_dict())
    assert restored.check(0.9) == detector.check(0.9) == (False, None)

    fitted = SpikeDetector(factor=3.0, min_rise=0.1, window=10)
    for loss in [1.0] * 10 + [0.002] * 10:
        fitted.check(loss)
    assert fitted.check(0.02) == (False, None)  # 10x the median, but a rise of 0.018 against a scale of 1

    negative = SpikeDetector(factor=3.0, min_rise=0.1, window=10)
    for _ in range(6):
        negative.check(-2.0)
    assert negative.check(5.0) == (False, None)  # ratios of negative losses mean nothing


def test_oscillation_cosine_of_the_last_two_updates():
    detector = OscillationDetector(threshold=-0.5)
    direction = torch.tensor([1.0, 2.0, -1.0])
    cosines = {}
    for step in range(1, 11):  # x flips sign along one direction every step: updates reverse
        x = [direction * (-1) ** step, torch.tensor([0.5])]
        cosines[step] = detector.observe(step, x, every_n_steps=5)
    assert cosines[5] == pytest.approx(-1.0) and cosines[10] == pytest.approx(-1.0)
    assert all(cosines[k] is None for k in cosines if k % 5)  # measured at probes only
    oscillating, reason = detector.check(cosines[10])
    assert oscillating and "cosine -1.000 < -0.5" in reason
    assert detector.check(-0.4) == (False, None) and detector.check(None) == (False, None)


def test_edge_zones_and_divergence_needs_a_sign():
    detector = EdgeOfStabilityDetector(band=0.1, divergence_ratio=2.0)
    assert [detector.zone(r) for r in (0.5, 0.9, 1.0, 1.99, 2.0, 5.0)] == [
        "below",
        "edge",
        "edge",
        "edge",
        "past",
        "past",
    ]
    assert detector.check_reached(0.8) == (False, None)
    reached, message = detector.check_reached(1.05)
    assert reached and "reached the stability edge of the step (1.05x)" in message and "Not divergence" in message
    assert detector.check_reached(1.1) == (False, None)  # once
    first_past = EdgeOfStabilityDetector(band=0.1, divergence_ratio=2.0)
    reached, message = first_past.check_reached(6.4)
    assert reached and "6.40x the stability edge" in message and "Not divergence" not in message
    assert detector.check(1.5, ["the loss rose"]) == (False, None)  # at the edge a rising loss is normal
    assert detector.check(3.0, []) == (False, None)  # past, but nothing runs away (a catapult)
    diverging, reason = detector.check(3.0, ["the loss rose"])
    assert diverging and reason == "the top Hessian eigenvalue is 3.00x the stability edge and the loss rose"
    assert detector.diverging
    # A model without self-stabilisation (constant Hessian) diverges from just past its edge: a spike tells.
    assert detector.check(1.2, ["the loss rose"], spiking=True)[0]
    assert detector.check(0.95, ["the loss rose"], spiking=True) == (False, None)
    restored = EdgeOfStabilityDetector(band=0.1, divergence_ratio=2.0)
    restored.load_state_dict(detector.state_dict())
    assert restored.reached and not restored.diverging


def naggs_group(lr: float) -> tuple[NAGGS, dict]:
    opt = NAGGS([torch.nn.Parameter(torch.zeros(3))], lr=lr, mu=0.05, gamma=0.05)
    return opt, opt.param_groups[0]


def test_lr_cap_caps_on_divergence_and_lifts_when_the_asked_for_step_is_safe():
    lam, mu = 1.0, 0.05
    asked = 2 * theory.alpha_crit(mu, mu, lam)
    opt, group = naggs_group(asked)
    cap = LrCap(safety_factor=0.9)

    row = group_stability("0/0", "", opt, group, lam)
    assert row.metrics["edge_ratio"] == pytest.approx(lam / theory.lambda_stab(asked, mu, mu))
    assert cap.update([row], lam, diverging=False) == [] and cap.caps == {}  # at or past the edge: no cap
    cap.update([row], lam, diverging=True)
    assert cap.caps["0/0"] == pytest.approx(0.9 * theory.alpha_crit(mu, mu, lam))
    assert group["lr"] == pytest.approx(cap.caps["0/0"]) and cap.requested["0/0"] == asked

    # The curvature stays: the asked-for step is still past its edge, the cap holds (and never ratchets).
    row = group_stability("0/0", "", opt, group, lam)
    assert cap.update([row], lam, diverging=False) == [] and group["lr"] == pytest.approx(
        0.9 * theory.alpha_crit(mu, mu, lam)
    )
    # A scheduler moves the lr: it becomes the asked-for lr, the cap still applies on top.
    group["lr"] = 0.5 * asked
    cap.apply("0/0", group)
    assert cap.requested["0/0"] == 0.5 * asked and group["lr"] == min(0.5 * asked, cap.caps["0/0"])

    # The curvature falls below the edge of the asked-for step: lifted, the asked-for lr given back.
    low = 0.9 * theory.lambda_stab(0.5 * asked, mu, mu)
    row = group_stability("0/0", "", opt, group, low)
    (message,) = cap.update([row], low, diverging=False)
    assert "lifted" in message and cap.caps == {} and group["lr"] == 0.5 * asked


def test_lr_cap_keeps_a_tensor_lr_a_tensor_and_round_trips():
    _, group = naggs_group(1.0)
    group["lr"] = torch.tensor(1.0)
    cap = LrCap(safety_factor=0.5)
    cap.lower("0/0", 1.0)
    cap.apply("0/0", group)
    assert isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == 0.5
    restored = LrCap(safety_factor=0.5)
    restored.load_state_dict(cap.state_dict())
    assert restored.caps == cap.caps and restored.asked_for("0/0", group) == 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SpikeDetector(1.0, 0.1, 10), "spike_factor must be finite and > 1"),
        (lambda: SpikeDetector(3.0, -1.0, 10), "spike_min_rise must be finite and >= 0"),
        (lambda: SpikeDetector(3.0, 0.1, 2), "spike_window must be an integer >= 3"),
        (lambda: OscillationDetector(1.0), r"oscillation_threshold must be in \[-1, 1\)"),
        (lambda: EdgeOfStabilityDetector(1.0, 2.0), r"edge_band must be in \[0, 1\)"),
        (lambda: EdgeOfStabilityDetector(0.1, 1.0), "divergence_ratio must be finite and > 1"),
        (lambda: LrCap(0.0), r"safety_factor must be in \(0, 1\]"),
    ],
)
def test_invalid_arguments_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()
