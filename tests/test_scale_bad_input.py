"""Bad input, property-based: NAGGS's constructor, the theory closed forms, and the NaN-gradient policy.

The contract: a valid input never gives NaN (closed forms give a finite number, or ``inf`` exactly
where documented); an invalid one raises ``ValueError``/``TypeError`` with the parameter's name in the
message. "Valid" here spans magnitudes from 1e-8 to 1e8 (and exact zeros where allowed), which covers
any step size, curvature or gamma a model can have; beyond ~1e150 the closed forms overflow float64.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from naggs_lightning import NAGGS, theory
from naggs_lightning.callbacks import SpectralStabilityMonitor, StabilityWarning

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from scale_common import SEED, TinyRegression  # noqa: E402

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

positive = st.floats(min_value=1e-8, max_value=1e8)
non_negative = st.one_of(st.just(0.0), positive)
real = st.one_of(st.just(0.0), positive, positive.map(lambda x: -x))
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])
negative = positive.map(lambda x: -x)
not_a_number_type = st.sampled_from(["0.1", None, 1j, [0.1], True])


# ---------------------------------------------------------------------------------------------------
# NAGGS constructor


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


@SETTINGS
@given(
    lr=st.one_of(st.just(0.0), st.floats(min_value=1e-8, max_value=1e4)),
    mu=st.one_of(st.just(0.0), st.floats(min_value=1e-8, max_value=1e4)),
    gamma=st.floats(min_value=1e-6, max_value=1e6),
    weight_decay=st.one_of(st.just(0.0), st.floats(min_value=1e-8, max_value=1.0)),
    fixed_gamma=st.booleans(),
    maximize=st.booleans(),
    path=st.sampled_from([{}, dict(foreach=False), dict(foreach=True), dict(fused=True)]),
    grad_scale=st.floats(min_value=1e-6, max_value=1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_valid_naggs_arguments_never_give_nan(
    lr, mu, gamma, weight_decay, fixed_gamma, maximize, path, grad_scale, seed
):
    model = _model()
    opt = NAGGS(
        model.parameters(),
        lr=lr,
        mu=mu,
        gamma=gamma,
        fixed_gamma=fixed_gamma,
        weight_decay=weight_decay,
        maximize=maximize,
        **path,
    )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        for p in model.parameters():
            p.grad = grad_scale * torch.randn(p.shape, generator=gen)
        opt.step()
    tensors = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert all(torch.isfinite(t).all() for t in tensors)
    # gamma_k is a convex combination of gamma_(k-1) and mu: it stays between gamma_0 and mu.
    gamma_k = opt.param_groups[0]["gamma"]
    if fixed_gamma or lr == 0.0:
        assert gamma_k == gamma
    else:
        assert min(gamma, mu) * (1 - 1e-12) <= gamma_k <= max(gamma, mu) * (1 + 1e-12)


_NAGGS_BAD_VALUES = {
    "lr": st.one_of(not_finite, negative),
    "mu": st.one_of(not_finite, negative),
    "gamma": st.one_of(not_finite, negative, st.sampled_from([0.0, -0.0])),
    "weight_decay": st.one_of(not_finite, negative),
}


@SETTINGS
@given(data=st.data(), name=st.sampled_from(sorted(_NAGGS_BAD_VALUES)))
def test_invalid_naggs_value_names_the_parameter(data, name):
    value = data.draw(_NAGGS_BAD_VALUES[name], label=name)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        NAGGS(_model().parameters(), **{name: value})


@SETTINGS
@given(name=st.sampled_from(["mu", "gamma", "weight_decay"]), value=not_a_number_type)
def test_non_numeric_naggs_hyperparameter_is_a_type_error_naming_it(name, value):
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        NAGGS(_model().parameters(), **{name: value})


@pytest.mark.parametrize("value", ["0.1", "x", None, 1j, [0.1], True])
def test_non_numeric_lr_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError, match=r"\blr\b"):
        NAGGS(_model().parameters(), lr=value)


# ---------------------------------------------------------------------------------------------------
# Theory closed forms: valid input


def _no_nan(*values) -> None:
    for v in values:
        assert isinstance(v, float) and not math.isnan(v), v


@SETTINGS
@given(alpha=non_negative, mu=non_negative, gamma=positive, lam=real)
def test_radius_and_matrix_are_never_nan(alpha, mu, gamma, lam):
    rho = theory.spectral_radius(alpha, mu, gamma, lam)
    _no_nan(rho)
    assert math.isfinite(rho) and rho >= 0
    assert np.isfinite(theory.iteration_matrix(alpha, mu, gamma, lam)).all()
    worst = theory.worst_spectral_radius(alpha, mu, gamma, mu + abs(lam))
    _no_nan(worst)
    assert worst >= rho * (1 - 1e-12) or lam < mu


@SETTINGS
@given(mu=non_negative, gamma=positive, L=real)
def test_alpha_crit_is_positive_and_infinite_exactly_when_every_step_is_stable(mu, gamma, L):
    crit = theory.alpha_crit(mu, gamma, L)
    _no_nan(crit)
    assert crit > 0
    assert math.isinf(crit) == (L <= 2 * mu)


@SETTINGS
@given(mu=positive, gamma=positive, spread=non_negative)
def test_alpha_opt_and_alpha_c_are_infinite_exactly_when_L_equals_mu(mu, gamma, spread):
    L = mu + spread
    opt, c = theory.alpha_opt(mu, L), theory.alpha_c(mu, gamma, L)
    _no_nan(opt, c)
    assert opt > 0 and c > 0
    assert math.isinf(opt) == math.isinf(c) == (L == mu)


@SETTINGS
@given(alpha=non_negative, mu=non_negative, gamma=positive)
def test_lambda_stab_and_heavy_ball_are_never_nan(alpha, mu, gamma):
    lam_stab = theory.lambda_stab(alpha, mu, gamma)
    h, beta = theory.heavy_ball_equivalent(alpha, mu, gamma)
    _no_nan(lam_stab, h, beta)
    assert math.isinf(lam_stab) == (alpha == 0)
    assert math.isfinite(h) and h >= 0
    assert 0 <= beta <= 1


@SETTINGS
@given(alpha=non_negative, mu=positive, lam=positive, sigma=non_negative)
def test_stationary_variance_is_never_nan(alpha, mu, lam, sigma):
    var = theory.stationary_variance(alpha, mu, lam, sigma)
    _no_nan(var)
    assert var >= 0


@SETTINGS
@given(lr=positive, momentum=st.floats(min_value=0.0, max_value=0.999), nesterov=st.booleans())
def test_classic_edge_is_positive_and_finite(lr, momentum, nesterov):
    edge = theory.classic_edge(lr, momentum, nesterov)
    _no_nan(edge)
    assert 0 < edge < math.inf


# ---------------------------------------------------------------------------------------------------
# Theory closed forms: invalid input

_VALID = dict(alpha=0.1, mu=0.5, gamma=1.0, lam=2.0, L=2.0, sigma=1.0, lr=0.1, momentum=0.5)
_FUNCTIONS = {
    "spectral_radius": (theory.spectral_radius, ("alpha", "mu", "gamma", "lam")),
    "worst_spectral_radius": (theory.worst_spectral_radius, ("alpha", "mu", "gamma", "L")),
    "iteration_matrix": (theory.iteration_matrix, ("alpha", "mu", "gamma", "lam")),
    "alpha_opt": (theory.alpha_opt, ("mu", "L")),
    "alpha_c": (theory.alpha_c, ("mu", "gamma", "L")),
    "alpha_crit": (theory.alpha_crit, ("mu", "gamma", "L")),
    "lambda_stab": (theory.lambda_stab, ("alpha", "mu", "gamma")),
    "heavy_ball_equivalent": (theory.heavy_ball_equivalent, ("alpha", "mu", "gamma")),
    "stationary_variance": (theory.stationary_variance, ("alpha", "mu", "lam", "sigma")),
    "classic_edge": (theory.classic_edge, ("lr", "momentum")),
}
# Which values each argument refuses (lam of spectral_radius/iteration_matrix may be any real).
_BAD = {
    "alpha": st.one_of(not_finite, negative),
    "mu": st.one_of(not_finite, negative),
    "gamma": st.one_of(not_finite, negative, st.just(0.0)),
    "L": not_finite,
    "sigma": st.one_of(not_finite, negative),
    "lr": st.one_of(not_finite, negative, st.just(0.0)),
    "momentum": st.one_of(not_finite, negative, st.floats(min_value=1.0, max_value=1e8)),
}
_CASES = [(f, arg) for f, (_, args) in _FUNCTIONS.items() for arg in args if arg in _BAD]
_CASES += [("stationary_variance", "lam"), ("alpha_opt", "mu_zero")]


@SETTINGS
@given(data=st.data(), case=st.sampled_from(_CASES))
def test_invalid_theory_input_is_a_value_error_naming_the_argument(data, case):
    name, arg = case
    fn, args = _FUNCTIONS[name]
    kwargs = {a: _VALID[a] for a in args}
    if arg == "mu_zero":  # alpha_opt needs a finite condition number
        arg, kwargs["mu"] = "mu", 0.0
    elif arg == "lam":  # stationary_variance needs lam > 0
        kwargs["lam"] = data.draw(st.one_of(not_finite, negative, st.just(0.0)), label="lam")
    else:
        kwargs[arg] = data.draw(_BAD[arg], label=arg)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        fn(**kwargs)


@SETTINGS
@given(mu=positive, below=positive)
def test_L_below_mu_is_refused_where_the_interval_matters(mu, below):
    L = mu - below
    assume(L < mu)
    for call in (
        lambda: theory.alpha_opt(mu, L),
        lambda: theory.alpha_c(mu, 1.0, L),
        lambda: theory.worst_spectral_radius(0.1, mu, 1.0, L),
    ):
        with pytest.raises(ValueError, match=r"L >= mu"):
            call()


@pytest.mark.parametrize("fn", [theory.spectral_radius, theory.iteration_matrix])
def test_nan_curvature_is_a_value_error_naming_lam(fn):
    with pytest.raises(ValueError, match=r"\blam\b"):
        fn(0.1, 0.5, 1.0, math.nan)


@SETTINGS
@given(
    batch_size=st.integers(1, 4096),
    new_batch_size=st.integers(1, 4096),
    lr=positive,
    rule=st.sampled_from(["naggs", "sgd", "adam"]),
    beta=st.floats(min_value=0.0, max_value=0.999),
)
def test_scale_for_batch_size_is_exact_or_refuses_with_the_reason(batch_size, new_batch_size, lr, rule, beta):
    k = new_batch_size / batch_size
    hparams = {"lr": lr, "mu": 0.5, "betas": (beta, beta)}
    try:
        out = theory.scale_for_batch_size(hparams, batch_size, new_batch_size, rule=rule)
    except ValueError as exc:
        # Only the square-root rule can fail, when 1 - k (1 - beta) leaves [0, 1).
        assert rule == "adam" and "betas" in str(exc)
        assert not 0 <= 1 - k * (1 - beta) < 1
        return
    expected_lr = lr * (math.sqrt(k) if rule == "adam" else k)
    assert out["lr"] == pytest.approx(expected_lr, rel=1e-12)
    assert out["mu"] == 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0, new_batch_size=8), r"\bbatch_size\b"),
        (dict(batch_size=8, new_batch_size=-1), r"\bnew_batch_size\b"),
        (dict(batch_size=8.0, new_batch_size=8), r"\bbatch_size\b"),
        (dict(batch_size=True, new_batch_size=8), r"\bbatch_size\b"),
        (dict(batch_size=8, new_batch_size=8, rule="lamb"), r"\brule\b"),
    ],
)
def test_scale_for_batch_size_refuses_bad_batch_sizes_and_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        theory.scale_for_batch_size({"lr": 0.1}, **kwargs)


# ---------------------------------------------------------------------------------------------------
# NaN/inf gradients. The documented policy: NAGGS uses gradients as given (a NaN gradient makes NaN
# parameters, as in every torch optimizer). What catches it is upstream (Lightning's detect_anomaly,
# GradScaler, see test_scale_amp.py) or downstream (the SpectralStabilityMonitor's non-finite loss check).


class _NaNGradient(TinyRegression):
    """A finite loss whose gradient is NaN on one step: d/dx sqrt(x) at x = 0 is inf, times 0 is NaN."""

    def __init__(self, nan_at_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_at_step = nan_at_step

    def compute_loss(self, batch):
        loss = super().compute_loss(batch)
        if self.global_step == self.nan_at_step:
            loss = loss + 0.0 * torch.sqrt(self.net[0].bias.sum() * 0.0)
        return loss


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True), dict(fused=True)], ids=str)
def test_naggs_passes_a_nan_gradient_through(path):
    model = _model()
    opt = NAGGS(model.parameters(), lr=0.1, **path)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].weight.grad[0, 0] = math.nan
    opt.step()
    assert torch.isnan(model[0].weight[0, 0])
    assert torch.isfinite(model[2].weight).all()


def _trainer(quiet_trainer, **kwargs) -> L.Trainer:
    return quiet_trainer(accelerator="cpu", devices=1, max_epochs=1, **kwargs)


@pytest.mark.filterwarnings("ignore:Error detected in")
def test_detect_anomaly_stops_a_nan_gradient_before_naggs_steps(quiet_trainer):
    L.seed_everything(SEED, verbose=False)
    module = _NaNGradient(nan_at_step=2)
    before = {}

    class _Remember(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before.update({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    trainer = _trainer(quiet_trainer, detect_anomaly=True, callbacks=[_Remember()])
    with pytest.raises(RuntimeError, match="returned nan values"):
        trainer.fit(module)
    assert trainer.global_step == 2
    for name, p in module.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed on the NaN step"


def test_monitor_stops_training_at_the_first_non_finite_loss(quiet_trainer):
    L.seed_everything(SEED, verbose=False)
    module = _NaNGradient(nan_at_step=2)
    monitor = SpectralStabilityMonitor(every_n_steps=100, on_unstable="stop")
    trainer = _trainer(quiet_trainer, callbacks=[monitor])
    with pytest.warns(StabilityWarning, match="parameters are no longer finite"):
        trainer.fit(module)
    # The third batch (global step 2) steps on a NaN gradient; the fourth batch's loss is NaN, and training
    # stops at the end of that batch.
    assert trainer.global_step == 4
    assert trainer.should_stop
    assert not all(torch.isfinite(p).all() for p in module.parameters())
