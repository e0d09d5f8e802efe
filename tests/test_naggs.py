"""NAGGS against independent oracles: torch's heavy-ball SGD, the paper's formulas, closed forms."""

import copy
import io
import math

import numpy as np
import pytest
import torch

from naggs_lightning import NAGGS, theory

torch.set_default_dtype(torch.float32)


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).to(dtype)


def _data(seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g, dtype=dtype), torch.randn(32, 1, generator=g, dtype=dtype)


def _loss(model, x, y):
    return (model(x) - y).pow(2).mean() + 0.1 * model(x).sin().mean()  # non-quadratic on purpose


def _reference_step(xs, vs, grads, lr, mu, gamma, fixed_gamma=False, weight_decay=0.0):
    """THEORY.md section 1 in training-loop order, written from the formulas (no lerp, plain tensors)."""
    if not fixed_gamma:
        gamma = (gamma + lr * mu) / (1 + lr)
    for x, v, g in zip(xs, vs, grads):
        x.mul_(1 - lr * weight_decay)
        v.mul_(1 - lr * weight_decay)
        v.copy_((gamma * v + lr * mu * x - lr * g) / (gamma + lr * mu))
        x.copy_((x + lr * v) / (1 + lr))
    return gamma


def _train(model, opt, steps, data=None, before_step=None):
    x, y = data or _data()
    for k in range(steps):
        opt.zero_grad()
        _loss(model, x, y).backward()
        if before_step:
            before_step(k, opt)
        opt.step()


PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]


@pytest.mark.parametrize("path", PATHS, ids=["single", "foreach", "fused"])
def test_fixed_gamma_equals_heavy_ball_sgd(path):
    alpha, mu, gamma = 0.4, 0.5, 2.0
    h, beta = theory.heavy_ball_equivalent(alpha, mu, gamma)
    a, b = _mlp(), _mlp()
    _train(a, NAGGS(a.parameters(), lr=alpha, mu=mu, gamma=gamma, fixed_gamma=True, **path), 100)
    _train(b, torch.optim.SGD(b.parameters(), lr=h, momentum=beta), 100)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)
    assert not torch.equal(a[0].weight, _mlp()[0].weight)


def test_evolving_gamma_equals_heavy_ball_with_per_step_coefficients():
    # gamma_{k+1} enters step k: lr_k = h_k, momentum_k = beta_k h_{k-1} / h_k (ARCHITECTURE.md).
    alpha, mu, gamma0 = 0.3, 0.2, 3.0
    a, b = _mlp(), _mlp()
    naggs = NAGGS(a.parameters(), lr=alpha, mu=mu, gamma=gamma0)
    sgd = torch.optim.SGD(b.parameters(), lr=1.0, momentum=0.5)
    gammas = [mu + (gamma0 - mu) * (1 + alpha) ** -(k + 1) for k in range(60)]
    hb = [theory.heavy_ball_equivalent(alpha, mu, g) for g in gammas]

    def schedule(k, opt):
        opt.param_groups[0]["lr"] = hb[k][0]
        # any non-zero momentum at k = 0 (SGD's first step ignores it but must create its buffer)
        opt.param_groups[0]["momentum"] = hb[k][1] * hb[k - 1][0] / hb[k][0] if k else 0.5

    _train(a, naggs, 60)
    _train(b, sgd, 60, before_step=schedule)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


def test_gamma_relaxes_geometrically_to_mu():
    alpha, mu, gamma0 = 0.25, 0.3, 4.0
    model = _mlp()
    opt = NAGGS(model.parameters(), lr=alpha, mu=mu, gamma=gamma0)
    _train(model, opt, 37)
    assert opt.param_groups[0]["gamma"] == pytest.approx(mu + (gamma0 - mu) * (1 + alpha) ** -37, rel=1e-13)
    fixed = NAGGS(model.parameters(), lr=alpha, mu=mu, gamma=gamma0, fixed_gamma=True)
    _train(model, fixed, 5)
    assert fixed.param_groups[0]["gamma"] == gamma0


@pytest.mark.parametrize("path", PATHS, ids=["single", "foreach", "fused"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_matches_paper_formulas_with_several_groups(path, weight_decay):
    model = _mlp()
    ref = copy.deepcopy(model)
    groups = [
        {"params": model[0].parameters(), "mu": 0.0, "gamma": 1.5},
        {"params": model[2].parameters(), "lr": 0.7, "mu": 2.0, "gamma": 0.5},
    ]
    opt = NAGGS(groups, lr=0.2, weight_decay=weight_decay, **path)
    ref_groups = [list(ref[0].parameters()), list(ref[2].parameters())]
    ref_v = [[p.detach().clone() for p in g] for g in ref_groups]
    hyper = [(0.2, 0.0, 1.5), (0.7, 2.0, 0.5)]
    x, y = _data()
    for _ in range(25):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        ref.zero_grad()
        _loss(ref, x, y).backward()
        with torch.no_grad():
            for i, (params, vs) in enumerate(zip(ref_groups, ref_v)):
                lr, mu, gamma = hyper[i]
                gamma = _reference_step(params, vs, [p.grad for p in params], lr, mu, gamma, weight_decay=weight_decay)
                hyper[i] = (lr, mu, gamma)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13)
    for (_, _, gamma), group in zip(hyper, opt.param_groups):
        assert group["gamma"] == pytest.approx(gamma, rel=1e-14)


@pytest.mark.parametrize(
    "path,dtype",
    [(p, d) for p in PATHS[:2] for d in (torch.float32, torch.bfloat16, torch.float16)] + [(PATHS[2], torch.float32)],
)
def test_every_path_tracks_the_float64_reference_in_low_precision(path, dtype):
    # A fixed gradient sequence (no model feedback) so round-off is not amplified by the dynamics.
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 33, generator=g, dtype=torch.float64)
    grads = [torch.randn(4, 33, generator=g, dtype=torch.float64) for _ in range(20)]
    xs = [torch.nn.Parameter(x0.to(dtype)), torch.nn.Parameter(x0.clone())]
    opts = [NAGGS([x], lr=0.5, mu=0.1, gamma=2.0, weight_decay=0.01, **path) for x in xs]
    for grad in grads:
        for x, opt in zip(xs, opts):
            x.grad = grad.to(x.dtype)
            opt.step()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(xs[0].detach().double(), xs[1].detach(), rtol=16 * eps, atol=16 * eps)


def test_fused_is_the_default_where_supported_and_exclusive_with_foreach():
    model = _mlp()
    opt = NAGGS(model.parameters())
    assert opt.defaults["fused"] is None and opt.defaults["foreach"] is None
    with pytest.raises(ValueError, match="foreach and fused are exclusive"):
        NAGGS(model.parameters(), foreach=True, fused=True)
    for dtype in (torch.int64, torch.bfloat16):  # torch's CPU fused kernel corrupts bf16 buffers
        with pytest.raises(RuntimeError, match="use foreach=True"):
            NAGGS([torch.zeros(3, dtype=dtype)], fused=True)
    later = NAGGS([torch.nn.Parameter(torch.ones(3))], fused=True)
    with pytest.raises(RuntimeError, match="use foreach=True"):  # groups added later are checked too
        later.add_param_group({"params": [torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))]})
    bf16 = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    bf16.grad = torch.ones_like(bf16)
    opt = NAGGS([bf16])
    opt.step()  # the default falls back to foreach: finite, and the step it should be
    # gamma_0 = mu: the first step is heavy ball's first, x - h g (heavy-ball identity), to bf16's precision
    h, _ = theory.heavy_ball_equivalent(*(opt.defaults[k] for k in ("lr", "mu", "gamma")))
    torch.testing.assert_close(bf16.float(), torch.full((64,), 1 - h), rtol=0, atol=2**-7)


@pytest.mark.parametrize("kappa", [100.0, 1000.0])
def test_contraction_rate_at_alpha_opt_matches_rho_star(kappa):
    mu, L = 0.1, 0.1 * kappa
    spectrum = torch.tensor(np.geomspace(mu, L, 12), dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(12, dtype=torch.float64))
    a_star = theory.alpha_opt(mu, L)
    opt = NAGGS([x], lr=a_star, mu=mu, gamma=mu)
    rho_star = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    n = int(math.log(1e-60) / math.log(rho_star))  # far into the asymptote, far from underflow
    norms = []
    for _ in range(n):
        opt.zero_grad()
        (0.5 * spectrum * x * x).sum().backward()
        opt.step()
        v = x.detach() - opt.state[x]["momentum_buffer"]
        norms.append(torch.linalg.vector_norm(torch.cat([x.detach(), v])).item())
    rate = (norms[-1] / norms[n // 2]) ** (1 / (n - 1 - n // 2))
    assert rate == pytest.approx(rho_star, rel=0.01)


@pytest.mark.parametrize("mu,gamma,fixed", [(0.1, 0.1, False), (0.01, 1.0, True)])
def test_stability_edge_separates_divergence_from_convergence(mu, gamma, fixed):
    L = 5.0
    a_crit = theory.alpha_crit(mu, gamma, L)

    def final_norm(alpha):
        x = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
        curv = torch.tensor([mu + 0.5 * (L - mu), L], dtype=torch.float64)
        opt = NAGGS([x], lr=alpha, mu=mu, gamma=gamma, fixed_gamma=fixed)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * curv * x * x).sum().backward()
            opt.step()
        return x.detach().abs().max().item()

    assert final_norm(0.99 * a_crit) < 1e-3
    assert final_norm(1.01 * a_crit) > 1e3


def test_mu_zero_is_legal_and_finite():
    model = _mlp()
    opt = NAGGS(model.parameters(), lr=2.0, mu=0.0, gamma=1.0)
    _train(model, opt, 10)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.param_groups[0]["gamma"] == pytest.approx(3.0**-10)


def test_closure_is_called_and_its_loss_returned():
    model = _mlp()
    opt = NAGGS(model.parameters(), lr=0.1)
    x, y = _data()
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1] and torch.is_tensor(loss)


def test_maximize_equals_minimizing_the_negative():
    a, b = _mlp(), _mlp()
    x, y = _data()
    oa = NAGGS(a.parameters(), lr=0.3, maximize=True)
    ob = NAGGS(b.parameters(), lr=0.3)
    for _ in range(10):
        oa.zero_grad(), ob.zero_grad()
        (-_loss(a, x, y)).backward()
        _loss(b, x, y).backward()
        oa.step(), ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-15)


def test_zero_lr_changes_nothing():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    opt = NAGGS(model.parameters(), lr=0.0, mu=0.5, gamma=2.0, weight_decay=0.1)
    _train(model, opt, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert opt.param_groups[0]["gamma"] == 2.0


def test_parameters_without_grad_are_untouched():
    model = _mlp()
    model[2].weight.requires_grad_(False)
    frozen = model[2].weight.detach().clone()
    opt = NAGGS(model.parameters(), lr=0.5)
    _train(model, opt, 3)
    assert torch.equal(model[2].weight, frozen)
    assert model[2].weight not in opt.state


def test_group_without_any_grad_does_not_advance_gamma():
    p = torch.nn.Parameter(torch.ones(3))
    opt = NAGGS([p], lr=0.5, mu=0.1, gamma=2.0)
    opt.step()
    assert opt.param_groups[0]["gamma"] == 2.0 and not opt.state


def test_complex_parameter_equals_its_real_view():
    z = torch.nn.Parameter(torch.tensor([1.0 + 2.0j, -0.5 + 0.1j], dtype=torch.complex128))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    oz, or_ = NAGGS([z], lr=0.4, mu=0.2), NAGGS([r], lr=0.4, mu=0.2)
    for _ in range(5):
        oz.zero_grad(), or_.zero_grad()
        (z.abs() ** 2).sum().backward()
        (r**2).sum().backward()
        oz.step(), or_.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=0, atol=1e-14)


def test_state_dict_resume_is_bitwise_identical():
    def run(steps, opt_state=None, model_state=None):
        model = _mlp(dtype=torch.float32)
        opt = NAGGS(model.parameters(), lr=0.3, mu=0.2, gamma=3.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        if opt_state is not None:
            model.load_state_dict(model_state)
            opt.load_state_dict(opt_state["opt"])
            sched.load_state_dict(opt_state["sched"])
        data = _data(dtype=torch.float32)
        for _ in range(steps):
            _train(model, opt, 1, data)
            sched.step()
        return model, opt, sched

    full, _, _ = run(30)
    half, opt, sched = run(13)
    buf = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed, opt2, _ = run(17, opt_state=saved, model_state=saved["model"])
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert isinstance(opt2.param_groups[0]["gamma"], float)


def test_gamma_survives_a_bfloat16_round_trip_in_full_precision():
    model = _mlp(dtype=torch.bfloat16)
    opt = NAGGS(model.parameters(), lr=0.1, mu=0.0, gamma=1.0)
    _train(model, opt, 3, _data(dtype=torch.bfloat16))
    fresh = NAGGS(model.parameters(), lr=0.1, mu=0.0, gamma=1.0)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["gamma"] == pytest.approx(1.1**-3, rel=1e-15)
    assert fresh.state[model[0].weight]["momentum_buffer"].dtype == torch.bfloat16


def test_grad_scaler_skip_leaves_state_untouched():
    model = _mlp(dtype=torch.float32)
    opt = NAGGS(model.parameters(), lr=0.3, mu=0.2, gamma=3.0)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _data(dtype=torch.float32)
    _train(model, opt, 2, (x, y))
    params = [p.detach().clone() for p in model.parameters()]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    gamma = opt.param_groups[0]["gamma"]
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = _loss(model, x, y) * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.param_groups[0]["gamma"] == gamma
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(model.parameters(), bufs))


def _schedulers():
    S = torch.optim.lr_scheduler
    return {
        "StepLR": lambda o: S.StepLR(o, 3, 0.5),
        "MultiStepLR": lambda o: S.MultiStepLR(o, [2, 5]),
        "ExponentialLR": lambda o: S.ExponentialLR(o, 0.9),
        "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, 8),
        "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, 3),
        "LinearLR": lambda o: S.LinearLR(o, 0.1, 1.0, 5),
        "ConstantLR": lambda o: S.ConstantLR(o, 0.5, 4),
        "PolynomialLR": lambda o: S.PolynomialLR(o, 8, 2.0),
        "LambdaLR": lambda o: S.LambdaLR(o, lambda k: 1 / (1 + k)),
        "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda k: 0.95),
        "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.8, total_steps=12, cycle_momentum=False),
        "CyclicLR": lambda o: S.CyclicLR(o, 0.05, 0.8, step_size_up=3, cycle_momentum=False),
        "SequentialLR": lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.2, 1.0, 3), S.ExponentialLR(o, 0.9)], [3]),
        "ChainedScheduler": lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.9), S.ConstantLR(o, 0.5, 3)]),
        # a falling loss is no gain,
        "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, mode="max", patience=0, factor=0.5),
    }


@pytest.mark.parametrize("name", list(_schedulers()))
def test_every_torch_scheduler_drives_alpha(name):
    model, ref = _mlp(), _mlp()
    opt = NAGGS(model.parameters(), lr=0.3, mu=0.2, gamma=2.0)
    sched = _schedulers()[name](opt)
    ref_params = list(ref.parameters())
    ref_v = [p.detach().clone() for p in ref_params]
    gamma, lrs = 2.0, []
    x, y = _data()
    for _ in range(10):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        sched.step(loss.item()) if name == "ReduceLROnPlateau" else sched.step()
        ref.zero_grad()
        _loss(ref, x, y).backward()
        with torch.no_grad():
            gamma = _reference_step(ref_params, ref_v, [p.grad for p in ref_params], lr, 0.2, gamma)
    assert len(set(lrs)) > 1, f"{name} never changed lr: {lrs}"
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"lr": -0.1}, ValueError, r"lr must be finite and >= 0, got -0.1"),
        ({"lr": float("nan")}, ValueError, r"lr must be finite and >= 0"),
        ({"lr": float("inf")}, ValueError, r"lr must be finite and >= 0"),
        ({"mu": -1.0}, ValueError, r"mu must be finite and >= 0, got -1.0"),
        ({"gamma": 0.0}, ValueError, r"gamma must be finite and > 0, got 0.0"),
        ({"gamma": float("inf")}, ValueError, r"gamma must be finite and > 0"),
        ({"weight_decay": -1e-4}, ValueError, r"weight_decay must be finite and >= 0"),
        ({"mu": "1"}, TypeError, r"mu must be a real number"),
    ],
)
def test_invalid_hyperparameters_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        NAGGS(_mlp().parameters(), **kwargs)
    opt = NAGGS(_mlp()[0].parameters())
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": _mlp()[2].parameters(), **kwargs})


def test_scheduler_that_sets_a_negative_lr_is_caught_at_step():
    model = _mlp()
    opt = NAGGS(model.parameters())
    opt.param_groups[0]["lr"] = -1.0
    x, y = _data()
    _loss(model, x, y).backward()
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        opt.step()


def test_sparse_gradient_is_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = NAGGS(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_tensor_lr_gives_the_float_lr_numbers(foreach):
    a, b = _mlp(), _mlp()
    oa = NAGGS(a.parameters(), lr=torch.tensor(0.3, dtype=torch.float64), mu=0.5, gamma=2.0, foreach=foreach)
    ob = NAGGS(b.parameters(), lr=0.3, mu=0.5, gamma=2.0, foreach=foreach)
    sa, sb = (torch.optim.lr_scheduler.ExponentialLR(o, 0.9) for o in (oa, ob))
    for _ in range(8):
        _train(a, oa, 1)
        _train(b, ob, 1)
        sa.step(), sb.step()
    assert torch.is_tensor(oa.param_groups[0]["gamma"])
    assert oa.param_groups[0]["gamma"].item() == pytest.approx(ob.param_groups[0]["gamma"], rel=1e-14)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-13)


def test_compiled_step_with_tensor_lr_does_not_recompile_as_the_scheduler_moves():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = _mlp()
    opt = NAGGS(model.parameters(), lr=torch.tensor(0.3, dtype=torch.float64), mu=0.5, gamma=2.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter)
    frames = []
    for _ in range(6):
        opt.zero_grad()
        _loss(model, *_data()).backward()
        step()
        sched.step()
        frames.append(counter.frame_count)
    assert frames[1] == frames[-1], f"recompiled as lr and gamma changed: {frames}"


@pytest.mark.slow
def test_inductor_compiled_training_step_matches_eager():
    torch._dynamo.reset()
    eager, compiled = _mlp(dtype=torch.float32), _mlp(dtype=torch.float32)
    x, y = _data(dtype=torch.float32)
    oe = NAGGS(eager.parameters(), lr=0.3, mu=0.5, gamma=2.0)
    oc = NAGGS(compiled.parameters(), lr=torch.tensor(0.3), mu=0.5, gamma=2.0)

    @torch.compile
    def train_step():
        oc.zero_grad()
        _loss(compiled, x, y).backward()
        oc.step()

    for _ in range(5):
        train_step()
        _train(eager, oe, 1, (x, y))
    for pe, pc in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(pe, pc, rtol=1e-5, atol=1e-6)
