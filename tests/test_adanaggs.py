"""AdaNAGGS against independent oracles: NAGGS on the rescaled problem when the metric is frozen, NAGGS
itself when the metric is the identity, and a hand-written loop of the documented formulas when the
metric, gamma and lr all move. torch.optim's contract is in test_conformance.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from naggs_lightning import NAGGS, AdaNAGGS
from naggs_lightning.optim import is_naggs

PATHS = [dict(foreach=False), dict(foreach=True), dict(fused=True)]
PATH_IDS = ["single", "foreach", "fused"]


def _abs_problem(n: int = 12, seed: int = 0):
    """f(x) = sum_i a_i |x_i - c_i|: |g_i| = a_i at every step, so the bias-corrected EMA of g^2 is a^2
    (for any beta2) and the metric is frozen at P = a + eps from the first step on."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=gen, dtype=torch.float64) * 4 + 0.25
    c = torch.randn(n, generator=gen, dtype=torch.float64)
    x0 = torch.randn(n, generator=gen, dtype=torch.float64) * 3
    return a, c, x0


@pytest.mark.parametrize("impl", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize(
    "config",
    [
        dict(lr=0.2, mu=1.0, gamma=1.0),
        dict(lr=0.3, mu=0.1, gamma=2.0, weight_decay=0.05, eps=0.1),
        dict(lr=0.1, mu=0.5, gamma=3.0, fixed_gamma=True, beta2=0.9),
        dict(lr=0.2, mu=0.0, gamma=1.0, maximize=True, eps=0.3),
    ],
    ids=["mu_gamma_1", "evolving_gamma_wd_eps", "fixed_gamma", "mu0_maximize"],
)
def test_with_the_metric_frozen_it_is_naggs_on_the_rescaled_problem(config, impl):
    a, c, x0 = _abs_problem()
    sign = -1.0 if config.get("maximize") else 1.0
    eps = config.get("eps", 1e-8)
    p_half = (a + eps).sqrt()  # P^(1/2)

    def f(x):
        return sign * (a * (x - c).abs()).sum()

    x = nn.Parameter(x0.clone())
    ada = AdaNAGGS([x], **config, **impl)
    naggs_config = {k: v for k, v in config.items() if k not in ("beta2", "eps")}
    y = nn.Parameter(p_half * x0)  # y = P^(1/2) x, h(y) = f(P^(-1/2) y)
    ref = NAGGS([y], **naggs_config, foreach=False)
    for _ in range(25):
        for opt, loss in ((ada, lambda: f(x)), (ref, lambda: f(y / p_half))):
            opt.zero_grad()
            loss().backward()
            opt.step()
        torch.testing.assert_close(x.detach(), y.detach() / p_half, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ada.metric(x), a + eps, rtol=1e-12, atol=0)
    # the velocity: w = P (x - v) = P^(1/2) (y - v_y), the NAGGS buffer in y read back in x
    w = ada.state[x]["exp_avg"] / ada.param_groups[0]["velocity_scale"]
    torch.testing.assert_close(w, p_half * ref.state[y]["momentum_buffer"], rtol=1e-9, atol=1e-12)
    assert float(ada.param_groups[0]["gamma"]) == pytest.approx(float(ref.param_groups[0]["gamma"]), rel=1e-14)


@pytest.mark.parametrize("impl", PATHS, ids=PATH_IDS)
def test_with_the_identity_metric_it_is_naggs(impl):
    """f(x) = sum |x_i - c_i| with eps = 0: P = 1 exactly, and AdaNAGGS is NAGGS on the same problem."""
    _, c, x0 = _abs_problem(seed=1)
    x, z = nn.Parameter(x0.clone()), nn.Parameter(x0.clone())
    ada = AdaNAGGS([x], lr=0.4, mu=0.3, gamma=2.0, eps=0.0, weight_decay=0.02, **impl)
    ref = NAGGS([z], lr=0.4, mu=0.3, gamma=2.0, weight_decay=0.02, foreach=False)
    for _ in range(20):
        for opt, p in ((ada, x), (ref, z)):
            opt.zero_grad()
            (p - c).abs().sum().backward()
            opt.step()
    torch.testing.assert_close(x.detach(), z.detach(), rtol=1e-12, atol=1e-12)


def _oracle_step(s, x, g, *, lr, mu, wd, beta2, eps, fixed_gamma, maximize):
    """The documented step, written out with the velocity w itself (no scale), in float64."""
    if not fixed_gamma:
        s["gamma"] = (s["gamma"] + lr * mu) / (1 + lr)
    gamma = s["gamma"]
    d = (1 + lr) * (gamma + lr * mu)
    beta, c, rho = gamma / d, lr / d, 1 - lr * wd
    g = -g if maximize else g
    s["t"] += 1
    s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
    p = (s["v"] / (1 - beta2 ** s["t"])).sqrt() + eps
    s["w"] = rho * beta * s["w"] + c * g
    return rho * x - lr * s["w"] / p


@pytest.mark.parametrize("impl", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("maximize", [False, True])
def test_a_moving_metric_gamma_and_lr_follow_the_documented_formulas(impl, maximize):
    """A quadratic (the metric moves every step), gamma evolving, weight decay, and an lr changed at every
    step (the velocity scale S is then never at its fixed point); two parameters, the second of which has
    no gradient on some steps (its own step count, value and velocity stay)."""
    gen = torch.Generator().manual_seed(3)
    hs = [torch.rand(n, generator=gen, dtype=torch.float64) * 5 + 0.1 for n in (7, 4)]
    xs0 = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (7, 4)]
    params = [nn.Parameter(x.clone()) for x in xs0]
    hp = dict(mu=0.2, beta2=0.95, eps=1e-3)
    opt = AdaNAGGS(params, lr=0.1, gamma=2.0, weight_decay=0.03, maximize=maximize, **hp, **impl)
    oracle = [dict(gamma=2.0, t=0, v=torch.zeros_like(x), w=torch.zeros_like(x)) for x in xs0]
    xs = [x.clone() for x in xs0]
    sign = -1.0 if maximize else 1.0
    for k in range(12):
        lr = 0.1 * (1 + 0.5 * math.sin(k))
        opt.param_groups[0]["lr"] = lr
        skip = k in (3, 4, 8)
        opt.zero_grad()
        loss = sum(0.5 * (h * p * p).sum() for h, p in zip(hs, params[: 1 if skip else 2]))
        (sign * loss).backward()
        opt.step()
        # the oracle: gamma is the group's (advanced once per step); the skipped parameter keeps everything
        shared_gamma = oracle[0]["gamma"]
        for i, (h, x) in enumerate(zip(hs, xs)):
            if skip and i == 1:
                continue
            oracle[i]["gamma"] = shared_gamma
            xs[i] = _oracle_step(oracle[i], x, sign * h * x, lr=lr, wd=0.03, fixed_gamma=False, maximize=maximize, **hp)
        oracle[1]["gamma"] = oracle[0]["gamma"]
        for p, x in zip(params, xs):
            torch.testing.assert_close(p.detach(), x, rtol=1e-10, atol=1e-12)
    scale = opt.param_groups[0]["velocity_scale"]
    for p, s in zip(params, oracle):
        state = opt.state[p]
        assert float(state["step"]) == s["t"]
        torch.testing.assert_close(state["exp_avg"] / scale, s["w"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(opt.metric(p), (s["v"] / (1 - hp["beta2"] ** s["t"])).sqrt() + hp["eps"])
    assert [float(opt.state[p]["step"]) for p in params] == [12.0, 9.0]


def test_metric_is_none_before_the_first_step_then_sqrt_vhat_plus_eps():
    p = nn.Parameter(torch.ones(3, 2))
    opt = AdaNAGGS([p], eps=0.5, beta2=0.9)
    assert opt.metric(p) is None
    p.grad = torch.full((3, 2), 2.0)
    opt.step()
    torch.testing.assert_close(opt.metric(p), torch.full((3, 2), 2.5))
    z = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    opt = AdaNAGGS([z], eps=0.0)
    z.grad = torch.full((3,), 1 - 2j)
    opt.step()
    torch.testing.assert_close(opt.metric(z), torch.tensor([[1.0, 2.0]] * 3))


def test_it_is_naggs_for_the_theorys_readers():
    opt = AdaNAGGS([nn.Parameter(torch.ones(2))])
    assert is_naggs(opt) and is_naggs(opt.param_groups[0])


@pytest.mark.parametrize("impl", PATHS, ids=PATH_IDS)
def test_lr_zero_leaves_parameters_velocity_and_gamma(impl):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5))
    opt = AdaNAGGS([p], lr=0.2, gamma=3.0, **impl)
    for lr in (0.2, 0.0, 0.0):
        opt.param_groups[0]["lr"] = lr
        before = (
            p.detach().clone(),
            copy.deepcopy(opt.state[p].get("exp_avg")),
            opt.param_groups[0]["gamma"],
            opt.param_groups[0]["velocity_scale"],
        )
        p.grad = torch.randn(5)
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
    assert opt.param_groups[0]["gamma"] == before[2] and opt.param_groups[0]["velocity_scale"] == before[3]
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("impl", PATHS, ids=PATH_IDS)
def test_a_step_gradscaler_skips_changes_nothing(impl):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = AdaNAGGS(model.parameters(), lr=0.1, **impl)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(8, 4)

    def step(poison: bool) -> None:
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if poison:
            model.bias.grad[0] = float("inf")
        scaler.step(opt)
        scaler.update()

    step(False)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    step(True)
    for a, b in zip(params, model.parameters()):
        assert torch.equal(a, b)
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for i, s in state["state"].items():
        for key, value in s.items():
            assert torch.equal(value, after["state"][i][key])


def test_a_fused_group_loaded_from_a_state_dict_keeps_step_on_the_cpu_in_float32():
    model = nn.Linear(3, 1)
    opt = AdaNAGGS(model.parameters(), fused=True)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    for s in saved["state"].values():
        s["step"] = s["step"].double()
    other = AdaNAGGS(model.parameters(), fused=True)
    other.load_state_dict(saved)
    assert all(s["step"].dtype == torch.float32 and s["step"].device.type == "cpu" for s in other.state.values())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"beta2": 1.0}, r"beta2 must be in \[0, 1\), got 1.0"),
        ({"beta2": -0.5}, r"beta2 must be in \[0, 1\)"),
        ({"eps": -1.0}, r"eps must be finite and >= 0"),
        ({"eps": float("inf")}, r"eps must be finite and >= 0"),
        ({"gamma": 0.0}, r"gamma must be finite and > 0"),
        ({"mu": float("nan")}, r"mu must be finite and >= 0"),
        ({"lr": -0.1}, r"lr must be finite and >= 0"),
    ],
)
def test_bad_hyper_parameters_are_named_with_their_range_before_params_is_read(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        AdaNAGGS(None, **kwargs)


def test_foreach_and_fused_together_are_refused():
    with pytest.raises(ValueError, match="foreach and fused are exclusive"):
        AdaNAGGS([nn.Parameter(torch.ones(1))], foreach=True, fused=True)


def test_fused_refuses_a_dtype_its_kernel_does_not_take_naming_foreach():
    with pytest.raises(RuntimeError, match="foreach=True"):
        AdaNAGGS([nn.Parameter(torch.ones(2, dtype=torch.bfloat16))], fused=True)


def test_at_its_defaults_it_takes_a_small_network_down_at_least_as_far_as_adamw_at_its_own():
    """Not a benchmark: a drop-in swap of AdamW() for AdaNAGGS() on a small regression does not train worse."""
    losses = {}
    for name, make in (("ada", AdaNAGGS), ("adamw", torch.optim.AdamW)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        x = torch.randn(256, 8)
        y = x[:, :1] * x[:, 1:2] + x[:, 2:3]
        opt = make(model.parameters())
        losses[f"{name} at start"] = (model(x) - y).pow(2).mean().item()
        for _ in range(300):
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
        losses[name] = loss.item()
    assert losses["ada"] < 0.25 * losses["ada at start"] and losses["ada"] <= losses["adamw"], losses


@pytest.mark.parametrize("lr, beta1", [(1e-3, 0.9), (3e-3, 0.8)])
def test_adanaggs_for_adam_runs_adams_recurrence_without_its_first_moment_bias_correction(lr, beta1):
    """Oracle: Adam's published recurrence (Kingma & Ba), with m left uncorrected, written out here."""
    from naggs_lightning.theory import adanaggs_for_adam

    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    target = torch.randn(6, dtype=torch.float64)
    x = nn.Parameter(torch.randn(6, dtype=torch.float64))
    x_ref = x.detach().clone()
    m, v, beta2, eps = torch.zeros_like(x_ref), torch.zeros_like(x_ref), 0.99, 1e-8
    opt = AdaNAGGS([x], **adanaggs_for_adam(lr, beta1), beta2=beta2, eps=eps, foreach=False)
    loss = lambda p: (a @ p - target).pow(2).sum()  # noqa: E731
    for t in range(1, 41):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
        g = torch.autograd.functional.jacobian(loss, x_ref)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        x_ref = x_ref - lr * m / ((v / (1 - beta2**t)).sqrt() + eps)
    torch.testing.assert_close(x.detach(), x_ref, rtol=1e-9, atol=1e-12)
