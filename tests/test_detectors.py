"""The monitor's detectors on their own: each decision method against hand-computed cases, each detector's hooks
(:class:`~naggs_lightning.callbacks.Observation` in, :class:`~naggs_lightning.callbacks.Decision` out), and each
state_dict.

Oracles: the rules as documented in each detector's module (numbers chosen so that the answer is known by
hand), :mod:`naggs_lightning.theory` for the edges, the detector's own ``check`` method for its hooks, and a
detector restored from a state_dict deciding like the original.
"""

from __future__ import annotations

import math

import pytest
import torch

from naggs_lightning import NAGGS, theory
from naggs_lightning.callbacks import (
    Decision,
    Detector,
    EdgeOfStabilityDetector,
    LrCap,
    NonFiniteLossDetector,
    Observation,
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
        (lambda: SpikeDetector(1.0, 0.1, 10), "SpikeDetector factor must be finite and > 1"),
        (lambda: SpikeDetector(3.0, -1.0, 10), "SpikeDetector min_rise must be finite and >= 0"),
        (lambda: SpikeDetector(3.0, 0.1, 2), "SpikeDetector window must be an integer >= 3"),
        (lambda: OscillationDetector(1.0), r"OscillationDetector threshold must be in \[-1, 1\)"),
        (lambda: EdgeOfStabilityDetector(1.0, 2.0), r"EdgeOfStabilityDetector band must be in \[0, 1\)"),
        (lambda: EdgeOfStabilityDetector(0.1, 1.0), "EdgeOfStabilityDetector divergence_ratio must be finite and > 1"),
        (lambda: Decision("stop", "why"), "Decision action must be one of"),
        (lambda: LrCap(0.0), r"safety_factor must be in \(0, 1\]"),
    ],
)
def test_invalid_arguments_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_finite_hooks_decide_diverging_once_and_report_a_failed_probe():
    detector = NonFiniteLossDetector()
    assert detector.on_batch(Observation(1, 10, loss=None)) == [] and detector.on_batch(Observation(1, 10, 1.0)) == []
    assert detector.on_batch(Observation(2, 10, loss=math.nan)) == [Decision.diverging("the training loss is nan")]
    assert detector.diverging and detector.on_batch(Observation(3, 10, loss=math.inf)) == []
    assert detector.on_probe(Observation(3, 10, error="no curvature")) == []  # reported already
    detector.on_batch(Observation(4, 10, loss=0.5))
    assert not detector.diverging
    assert detector.on_probe(Observation(5, 10, error="no curvature")) == [
        Decision.diverging("the curvature probe failed: no curvature")
    ]


def test_spike_hooks_ask_for_a_probe_now_and_tell_the_edge():
    detector = SpikeDetector(factor=3.0, min_rise=0.1, window=10)
    for step in range(5):
        assert detector.on_batch(Observation(step, 10, loss=1.0)) == []
    assert detector.on_batch(Observation(5, 10, loss=math.nan)) == []  # not finite: not a spike, not in the window
    (decision,) = detector.on_batch(Observation(6, 10, loss=4.0))
    assert decision.action == "probe" and decision.after == 0 and "4.0x the median 1 of the last 5" in decision.reason
    obs = Observation(6, 10, loss=4.0)
    assert detector.on_probe(obs) == [] and obs.spiking


def test_oscillation_hooks_set_the_cosine_and_add_a_sign_at_a_probe():
    detector = OscillationDetector(threshold=-0.5)
    direction = torch.tensor([1.0, -2.0])
    param = torch.nn.Parameter(torch.zeros(2))
    optimizers = [torch.optim.SGD([param], lr=0.1)]
    obs = None
    for step in range(3, 6):
        param.data = direction * (-1) ** step
        obs = Observation(step, 5, loss=1.0, optimizers=optimizers)
        assert detector.on_step(obs) == []
    assert obs.update_cosine == pytest.approx(-1.0)
    assert detector.on_probe(obs) == [] and obs.signs == []  # the probe failed: no curvature, no sign
    obs.lambda_max = 1.0
    assert detector.on_probe(obs) == [] and obs.signs == [detector.check(obs.update_cosine)[1]]


def test_edge_hooks_inform_once_decide_with_the_signs_and_recheck_past_the_edge():
    def probe(step, ratio, loss=1.0, loss_after=1.0, signs=(), spiking=False):
        obs = Observation(step, 16, loss=loss, lambda_max=ratio, edge_ratio=ratio, loss_after=loss_after)
        obs.signs.extend(signs)
        obs.spiking = spiking
        return obs, list(detector.on_probe(obs))

    detector = EdgeOfStabilityDetector()
    obs, decisions = probe(1, 0.5)
    assert decisions == [] and obs.notes == {"zone": "below"}
    obs, (decision,) = probe(2, 1.05, loss=1.0, loss_after=2.0)  # at the edge a rising loss is normal
    assert decision.action == "inform" and "reached the stability edge" in decision.reason
    assert obs.notes == {"zone": "edge"} and not detector.diverging
    # Past the edge without a sign: probes after 1, 2, 4, 8, 8 steps (every_n_steps 16).
    assert [probe(k, 3.0)[1] for k in range(3, 8)] == [[Decision.probe(after=n)] for n in (1, 2, 4, 8, 8)]
    _, (decision,) = probe(8, 3.0, loss=1.0, loss_after=1.5, signs=["the updates oscillate"])
    assert decision == Decision.diverging(
        "the top Hessian eigenvalue is 3.00x the stability edge and the probed batch's loss rose over the step "
        "(1 -> 1.5); the updates oscillate. The step is past the stability edge"
    )
    assert detector.diverging and probe(9, 3.0, signs=["the updates oscillate"])[1] == []  # one episode
    assert probe(10, 1.0)[1] == [] and not detector.diverging and detector.recheck == 1
    _, (decision,) = probe(11, 1.2, loss_after=2.0, spiking=True)  # a spike: diverging from the edge on
    assert decision.action == "diverging" and "after a loss spike" in decision.reason
    assert probe(12, None)[1] == []  # a failed probe: nothing to read
    restored = EdgeOfStabilityDetector()
    restored.load_state_dict(detector.state_dict())
    assert (
        restored.state_dict()
        == detector.state_dict()
        == {
            "reached": True,
            "diverging": True,
            "recheck": 1,
            "past": [],
        }
    )


def test_a_curvature_growing_at_successive_probes_past_the_edge_is_a_divergence_sign():
    detector = EdgeOfStabilityDetector()

    def probe(step, ratio):
        return list(detector.on_probe(Observation(step, 500, loss=1.0, lambda_max=ratio, edge_ratio=ratio)))

    # The numbers of the deep digits CNN at 2x its best step (seed 1), steps 232-239: the third growing reading.
    assert [d.action for d in probe(232, 2.30)] == ["inform", "probe"]
    assert [d.action for d in probe(233, 2.86)] == ["probe"]
    (decision,) = probe(235, 3.59)
    assert decision.action == "diverging" and "(2.30x -> 2.86x -> 3.59x)" in decision.reason
    # Past the edge but not growing, or interrupted by a reading below it: no sign.
    calm = EdgeOfStabilityDetector()
    readings = [3.0, 2.5, 3.0, 0.5, 2.2, 2.4]
    assert all(
        d.action != "diverging"
        for k, r in enumerate(readings)
        for d in calm.on_probe(Observation(k, 500, loss=1.0, lambda_max=r, edge_ratio=r))
    )
    assert calm.past == [2.2, 2.4]


def test_detector_base_has_no_op_hooks_a_name_and_a_repr():
    class Quiet(Detector):
        def __init__(self, level: float = 1.0) -> None:
            self.level = level

    quiet, obs = Quiet(2.0), Observation(1, 10, loss=1.0)
    assert quiet.on_batch(obs) == quiet.on_step(obs) == quiet.on_probe(obs) == []
    assert quiet.name == "Quiet" and not quiet.diverging and quiet.state_dict() == {}
    assert repr(quiet) == "Quiet(level=2.0)"
    assert [d.name for d in (NonFiniteLossDetector(), SpikeDetector(), OscillationDetector())] == [
        "non_finite",
        "spike",
        "oscillation",
    ]
    assert EdgeOfStabilityDetector.name == "edge"
