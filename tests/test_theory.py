"""The closed forms of naggs_lightning.theory against numeric eigenvalues and direct simulation."""

import math

import numpy as np
import pytest
import torch

from naggs_lightning import theory


def _numeric_rho(alpha, mu, gamma, lam):
    return np.max(np.abs(np.linalg.eigvals(theory.iteration_matrix(alpha, mu, gamma, lam))), axis=-1)


def _naggs_step(x, v, alpha, mu, gamma, lam):
    """One step of THEORY.md section 1 on f = lam x^2 / 2, written from the paper's formula."""
    x_new = (x + alpha * v) / (1 + alpha)
    v_new = (gamma * v + alpha * mu * x_new - alpha * lam * x_new) / (gamma + alpha * mu)
    return x_new, v_new


@pytest.mark.parametrize("alpha,mu,gamma,lam", [(0.3, 1.0, 1.5, 7.0), (2.0, 0.1, 0.4, 0.05), (0.05, 0.0, 1.0, 3.0)])
def test_iteration_matrix_is_the_update(alpha, mu, gamma, lam):
    # Paper's order of the x/v updates: E maps (x_k, v_k) of the *gradient-at-x_{k+1}* form.
    rng = np.random.default_rng(0)
    x, v = rng.normal(size=2)
    x1, v1 = _naggs_step(x, v, alpha, mu, gamma, lam)
    np.testing.assert_allclose(theory.iteration_matrix(alpha, mu, gamma, lam) @ [x, v], [x1, v1], rtol=1e-14)


def test_spectral_radius_closed_form_matches_numeric_eigenvalues():
    rng = np.random.default_rng(1)
    alpha = rng.uniform(0.01, 5, 2000)
    mu = rng.uniform(0, 2, 2000)
    gamma = rng.uniform(0.01, 3, 2000)
    lam = rng.uniform(-1, 50, 2000)
    np.testing.assert_allclose(
        theory.spectral_radius(alpha, mu, gamma, lam), _numeric_rho(alpha, mu, gamma, lam), rtol=1e-9
    )


def test_determinant_is_independent_of_curvature():
    e = theory.iteration_matrix(0.7, 0.3, 1.2, np.array([0.5, 3.0, 100.0]))
    det = np.linalg.det(e)
    np.testing.assert_allclose(det, 1.2 / ((1.7) * (1.2 + 0.7 * 0.3)), rtol=1e-12)


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_alpha_opt_is_argmin_of_worst_numeric_radius(kappa):
    mu, L = 0.5, 0.5 * kappa
    a_star = theory.alpha_opt(mu, L)
    assert a_star == pytest.approx(2 / (math.sqrt(kappa) - 1), rel=1e-12)
    grid = np.linspace(0.2 * a_star, min(1.5 * a_star, 0.9999 * theory.alpha_crit(mu, mu, L)), 40001)
    worst = np.maximum(_numeric_rho(grid, mu, mu, mu), _numeric_rho(grid, mu, mu, L))
    assert grid[np.argmin(worst)] == pytest.approx(a_star, rel=2e-4)
    rho_star = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    assert worst.min() == pytest.approx(rho_star, rel=2e-5)  # grid spacing and the double root limit this
    # at alpha* the top mode is a double root: round-off in the discriminant costs ~sqrt(eps)
    assert theory.worst_spectral_radius(a_star, mu, mu, L) == pytest.approx(rho_star, rel=1e-7)


@pytest.mark.parametrize("mu,gamma,L", [(1.0, 1.0, 10.0), (0.1, 0.5, 0.74), (0.01, 1.0, 100.0), (0.0, 1.0, 5.0)])
def test_alpha_crit_is_the_numeric_rho_equals_one_crossing(mu, gamma, L):
    a_crit = theory.alpha_crit(mu, gamma, L)
    lo, hi = 1e-9, 10 * a_crit
    for _ in range(200):  # bisection on the numeric spectral radius at the worst curvature L
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _numeric_rho(mid, mu, gamma, L) < 1 else (lo, mid)
    assert a_crit == pytest.approx(lo, rel=1e-9)
    assert theory.lambda_stab(a_crit, mu, gamma) == pytest.approx(L, rel=1e-9)


def test_alpha_crit_is_infinite_when_every_step_is_stable():
    assert theory.alpha_crit(1.0, 1.0, 2.0) == math.inf
    assert np.all(_numeric_rho(np.geomspace(0.01, 1e4, 50), 1.0, 1.0, 2.0) < 1)


def test_alpha_c_equals_alpha_opt_when_gamma_is_mu():
    assert theory.alpha_c(0.2, 0.2, 30.0) == pytest.approx(theory.alpha_opt(0.2, 30.0), rel=1e-12)


def test_worst_radius_is_at_an_end_of_the_spectrum():
    lams = np.linspace(0.3, 12.0, 5001)
    for alpha in (0.05, 0.4, 0.9):
        dense = theory.spectral_radius(alpha, 0.3, 0.8, lams).max()
        assert theory.worst_spectral_radius(alpha, 0.3, 0.8, 12.0) == pytest.approx(dense, rel=1e-12)


def test_heavy_ball_equivalent_limits():
    h, beta = theory.heavy_ball_equivalent(1e6, 0.5, 1.0)
    assert h == pytest.approx(1 / 0.5, rel=1e-5) and beta < 1e-11


def test_stationary_variance_matches_simulated_noisy_quadratic():
    alpha, mu, lam, sigma = 0.4, 1.0, 3.0, 0.5
    rng = np.random.default_rng(2)
    n, burn = 400_000, 1000
    x = v = 0.0
    xs = np.empty(n)
    noise = rng.normal(size=n) * sigma * math.sqrt(alpha)
    for k in range(n):  # the noise enters the v-numerator of the paper's step
        x = (x + alpha * v) / (1 + alpha)
        v = (mu * v + alpha * mu * x - alpha * lam * x + mu * noise[k]) / (mu + alpha * mu)
        xs[k] = x
    assert np.var(xs[burn:]) == pytest.approx(theory.stationary_variance(alpha, mu, lam, sigma), rel=0.03)
    assert theory.stationary_variance(1e-9, mu, lam, sigma) == pytest.approx(mu * sigma**2 / (4 * lam), rel=1e-6)
    assert theory.stationary_variance(theory.alpha_crit(mu, mu, lam), mu, lam, sigma) == math.inf


def test_classic_edges():
    assert theory.classic_edge(0.1) == pytest.approx(20.0)
    assert theory.classic_edge(0.1, 0.9) == pytest.approx(38.0)
    assert theory.classic_edge(0.1, 0.9, nesterov=True) == pytest.approx(3.8 / 2.8 / 0.1)


def test_scale_for_batch_size_rules():
    hp = {"lr": 0.1, "mu": 1.0, "gamma": 1.5, "betas": (0.9, 0.999), "eps": 1e-8}
    naggs = theory.scale_for_batch_size(hp, 128, 512)
    assert naggs["lr"] == pytest.approx(0.4) and naggs["mu"] == 1.0 and naggs["gamma"] == 1.5
    assert theory.scale_for_batch_size(hp, 128, 512, rule="sgd")["lr"] == pytest.approx(0.4)
    adam = theory.scale_for_batch_size(hp, 128, 512, rule="adam")
    assert adam["lr"] == pytest.approx(0.2)
    assert adam["betas"] == pytest.approx((0.6, 0.996))
    assert adam["eps"] == pytest.approx(5e-9)
    with pytest.raises(ValueError, match="betas"):
        theory.scale_for_batch_size(hp, 128, 128 * 20, rule="adam")
    with pytest.raises(ValueError, match="rule"):
        theory.scale_for_batch_size(hp, 1, 2, rule="lamb")
    with pytest.raises(ValueError, match="new_batch_size"):
        theory.scale_for_batch_size(hp, 1, 0)


def test_tensor_and_array_inputs():
    out = theory.spectral_radius(torch.tensor([0.1, 0.5]), 1.0, 1.0, torch.tensor(20.0))
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert isinstance(theory.alpha_opt(torch.tensor(1.0), 100.0), float)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: theory.alpha_opt(1.0, 0.5), "L >= mu"),
        (lambda: theory.alpha_opt(0.0, 5.0), "mu must be finite and > 0"),
        (lambda: theory.spectral_radius(-0.1, 1.0, 1.0, 2.0), "alpha must be finite and >= 0"),
        (lambda: theory.alpha_crit(1.0, 0.0, 5.0), "gamma must be finite and > 0"),
        (lambda: theory.lambda_stab(0.1, -1.0, 1.0), "mu must be finite and >= 0"),
        (lambda: theory.alpha_crit(1.0, 1.0, float("nan")), "L must be finite"),
    ],
)
def test_domain_errors_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_adanaggs_batch_rule_is_adams_square_root_rule_in_the_adam_picture():
    """AdaNAGGS is Adam-like with beta1 = beta and step alpha / (gamma + mu (1 + alpha)); under the rule
    both follow Adam's square-root rule to first order in alpha, and the metric's beta2 and eps follow it
    exactly."""
    hp = {"lr": 1e-4, "mu": 0.5, "gamma": 2.0, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}
    for k in (2, 4, 16):
        out = theory.scale_for_batch_size(hp, 64, 64 * k, rule="adanaggs")
        assert out["lr"] == pytest.approx(k * hp["lr"])
        assert out["mu"] / out["gamma"] == pytest.approx(hp["mu"] / hp["gamma"])
        assert 1 - out["beta2"] == pytest.approx(k * (1 - hp["beta2"]))
        assert out["eps"] == pytest.approx(hp["eps"] / math.sqrt(k))
        assert out["weight_decay"] == hp["weight_decay"]

        def adam_picture(h):
            a, m, g = h["lr"], h["mu"], h["gamma"]
            beta = g / ((1 + a) * (g + a * m))
            return a / (g + m * (1 + a)), 1 - beta

        step, one_minus_beta1 = adam_picture(hp)
        new_step, new_one_minus_beta1 = adam_picture(out)
        assert new_step == pytest.approx(math.sqrt(k) * step, rel=k * hp["lr"] * 2)
        assert new_one_minus_beta1 == pytest.approx(k * one_minus_beta1, rel=k * hp["lr"] * 2)
    with pytest.raises(ValueError, match="beta2"):
        theory.scale_for_batch_size(hp, 1, 2000, rule="adanaggs")


def test_adanaggs_batch_rule_keeps_the_stationary_loss_of_a_noisy_quadratic():
    """Noise-dominated quadratic (started at the minimum; curvatures 0.1 to 10): the stationary loss at
    batch kB with the rule's hyper-parameters matches the one at batch B, over the same number of epochs."""
    import torch

    from naggs_lightning import AdaNAGGS

    n, steps = 4000, 1600
    h = torch.logspace(-1, 1, n, dtype=torch.float64)

    def stationary_loss(hp, batch, num_steps):
        gen = torch.Generator().manual_seed(0)
        x = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
        opt = AdaNAGGS([x], **hp, foreach=True)
        losses = []
        for t in range(num_steps):
            x.grad = h * x.detach() + torch.randn(n, generator=gen, dtype=torch.float64) / math.sqrt(batch)
            opt.step()
            if t >= num_steps // 2:
                losses.append(float(0.5 * (h * x.detach() ** 2).mean()))
        return sum(losses) / len(losses)

    hp = {"lr": 0.02, "mu": 1.0, "gamma": 1.0, "beta2": 0.99, "eps": 1e-8}
    base = stationary_loss(hp, 1, steps)
    for k in (4, 8):
        scaled = theory.scale_for_batch_size(hp, 1, k, rule="adanaggs")
        assert stationary_loss(scaled, k, steps // k) == pytest.approx(base, rel=0.1)


def test_adam_equivalent_and_its_inverse():
    lr, beta1 = theory.adam_equivalent(0.1, 26.0, 26.0)
    h, beta = theory.heavy_ball_equivalent(0.1, 26.0, 26.0)
    # Adam's m is the heavy-ball velocity on the gradient's scale: lr (1 - beta1) is the heavy-ball step.
    assert beta1 == pytest.approx(beta) and lr * (1 - beta1) == pytest.approx(h)
    back = theory.adanaggs_for_adam(1e-3, 0.9)
    assert back["mu"] == back["gamma"] == pytest.approx(26.334, abs=1e-3)
    assert theory.adam_equivalent(back["lr"], back["mu"], back["gamma"]) == pytest.approx((1e-3, 0.9))


@pytest.mark.parametrize("lr, beta1, needle", [(0.0, 0.9, "lr must be"), (1e-3, 1.0, "beta1 must be in")])
def test_adanaggs_for_adam_names_a_bad_argument(lr, beta1, needle):
    with pytest.raises(ValueError, match=needle):
        theory.adanaggs_for_adam(lr, beta1)
