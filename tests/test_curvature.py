"""Curvature estimates against exact Hessians, and the probe's promise to leave a training run untouched.

Oracle: the full Hessian of the same loss in float64 (logistic regression: its closed form; an MLP:
``torch.autograd.functional.hessian`` over the flattened parameters), and its spectrum from
``torch.linalg.eigvalsh``. Under torch.distributed the estimate is checked on real DDP ranks against
the exact Hessian of the global batch in ``tests/test_scale_ddp.py``.
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from naggs_lightning.curvature import (
    HessianOperator,
    NonFiniteCurvatureError,
    bottom_eigenvalue,
    estimate_batch_sharpness,
    estimate_bottom_eigenvalue,
    estimate_top_eigenvalue,
    extreme_eigenpair,
    hutchinson_trace,
    hvp,
    probe_batch,
    rayleigh_quotient,
    top_eigenvalue,
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:128] / 16.0, dtype=torch.float32), torch.tensor(y[:128])


class Classifier(nn.Module):
    """Logistic regression (``hidden=0``) or a one-hidden-layer tanh MLP, with ``compute_loss``."""

    def __init__(self, hidden: int = 0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        if hidden:
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
        else:
            self.net = nn.Sequential(nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def exact_hessian(module: nn.Module, batch) -> torch.Tensor:
    """Float64 Hessian of the cross-entropy of ``module(x)`` w.r.t. all parameters, flattened in order."""
    m64 = copy.deepcopy(module).double()
    names = [n for n, _ in m64.named_parameters()]
    shapes = [p.shape for p in m64.parameters()]
    sizes = [p.numel() for p in m64.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m64.parameters()])
    x, y = batch[0].double(), batch[1]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        ps = {n: c.view(s) for n, c, s in zip(names, theta.split(sizes), shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(m64, ps, (x,)), y)

    # Forward-over-reverse: 7x faster than reverse-over-reverse here with BatchNorm in the graph.
    return torch.autograd.functional.hessian(loss, flat, vectorize=True, outer_jacobian_strategy="forward-mode")


def softmax_regression_hessian(module: Classifier, batch) -> torch.Tensor:
    """Closed form for logistic regression: the mean over samples of (diag p - p p^T) kron (x x^T), x with a 1
    appended for the bias, reordered to the parameter order (weight row-major, then bias)."""
    linear = module.net[0]
    x = torch.cat([batch[0].double(), torch.ones(len(batch[0]), 1, dtype=torch.float64)], dim=1)
    theta = torch.cat([linear.weight.detach().double(), linear.bias.detach().double()[:, None]], dim=1)
    p = torch.softmax(x @ theta.T, dim=1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    hess = torch.einsum("ncd,nj,nk->cjdk", a, x, x) / len(x)
    k, d = theta.shape
    hess = hess.reshape(k * d, k * d)
    order = [c * d + j for c in range(k) for j in range(d - 1)] + [c * d + d - 1 for c in range(k)]
    return hess[order][:, order]


@pytest.fixture(scope="module", params=["logistic", "mlp"])
def problem(request, digits):
    if request.param == "logistic":
        module = Classifier(hidden=0)
        hess = softmax_regression_hessian(module, digits)
    else:
        module = Classifier(hidden=8)
        hess = exact_hessian(module, digits)
    return request.param, module, hess, torch.linalg.eigvalsh(hess)


def test_closed_form_hessian_oracle_agrees_with_autograd(digits):
    module = Classifier(hidden=0)
    torch.testing.assert_close(softmax_regression_hessian(module, digits), exact_hessian(module, digits))


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_top_eigenvalue_within_one_percent_of_exact(problem, digits, method, algorithm):
    _, module, _, spectrum = problem
    lam, vec = top_eigenvalue(
        lambda: module.compute_loss(digits), module.parameters(), method=method, algorithm=algorithm, max_iter=50
    )
    assert lam == pytest.approx(spectrum[-1].item(), rel=1e-2)
    assert [v.shape for v in vec] == [p.shape for p in module.parameters()]
    assert math.fsum(float(v.pow(2).sum()) for v in vec) == pytest.approx(1.0, rel=1e-5)


def test_module_estimate_matches_exact(problem, digits):
    _, module, _, spectrum = problem
    assert estimate_top_eigenvalue(module, [digits]) == pytest.approx(spectrum[-1].item(), rel=1e-2)


def test_eigenvector_satisfies_the_eigen_equation(problem, digits):
    _, module, hess, spectrum = problem
    _, vec = top_eigenvalue(module.compute_loss(digits), module.parameters(), tol=1e-6, max_iter=100)
    v = torch.cat([t.reshape(-1) for t in vec]).double()
    residual = (hess @ v - spectrum[-1] * v).norm() / spectrum[-1]
    assert residual < 1e-2


def test_hvp_equals_hessian_times_vector(problem, digits):
    _, module, hess, _ = problem
    gen = torch.Generator().manual_seed(1)
    vec = [torch.randn(p.shape, generator=gen) for p in module.parameters()]
    out = hvp(module.compute_loss(digits), list(module.parameters()), vec)
    flat = torch.cat([t.reshape(-1) for t in out]).double()
    expected = hess @ torch.cat([t.reshape(-1) for t in vec]).double()
    torch.testing.assert_close(flat, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_bottom_eigenvalue_of_mlp(digits, algorithm):
    # The MLP's Hessian has negative curvature (about -0.79) well separated from the next (-0.52).
    module = Classifier(hidden=8)
    spectrum = torch.linalg.eigvalsh(exact_hessian(module, digits))
    assert spectrum[0] < -0.1
    lam, _ = bottom_eigenvalue(
        lambda: module.compute_loss(digits), module.parameters(), algorithm=algorithm, max_iter=200, tol=1e-5
    )
    assert lam == pytest.approx(spectrum[0].item(), rel=1e-2)
    assert estimate_bottom_eigenvalue(module, [digits], max_iter=200, tol=1e-5) == pytest.approx(
        spectrum[0].item(), rel=1e-2
    )


def _quadratic(eigenvalues: list[float], seed: int = 0):
    """f(x) = x^T A x / 2 with a random orthogonal basis: the Hessian's spectrum is ``eigenvalues``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    a = (q * torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), generator=gen, dtype=torch.float64, requires_grad=True)
    return (lambda: 0.5 * x @ a @ x), x


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_largest_algebraic_not_largest_magnitude(algorithm):
    # A dominant negative eigenvalue must not be reported as lambda_max: the edge concerns the top.
    eigenvalues = [-9.0, -1.0, 0.5, 1.0, 2.0, 3.0]
    loss, x = _quadratic(eigenvalues)
    top, _ = top_eigenvalue(loss, [x], algorithm=algorithm, tol=1e-6, max_iter=300)
    bottom, _ = bottom_eigenvalue(loss, [x], algorithm=algorithm, tol=1e-6, max_iter=300)
    assert top == pytest.approx(3.0, rel=1e-3)
    assert bottom == pytest.approx(-9.0, rel=1e-3)


def test_warm_start_from_eigenvector_converges_at_once(digits):
    module = Classifier(hidden=8)
    params = list(module.parameters())
    op = HessianOperator(lambda: module.compute_loss(digits), params, sync=False)
    cold = extreme_eigenpair(op, tol=1e-4, max_iter=100)
    warm = extreme_eigenpair(op, tol=1e-4, max_iter=100, init=cold.vector)
    assert cold.converged and warm.converged
    assert warm.n_matvecs <= 2 < cold.n_matvecs
    assert warm.eigenvalue == pytest.approx(cold.eigenvalue, rel=1e-4)


def test_hutchinson_trace_against_exact(problem, digits):
    _, module, hess, _ = problem
    estimate, stderr = hutchinson_trace(module.compute_loss(digits), list(module.parameters()), n_samples=64)
    exact = torch.trace(hess).item()
    assert 0 < stderr < 0.2 * exact
    assert abs(estimate - exact) < 4 * stderr


class ProbedNet(pl.LightningModule):
    """Dropout, BatchNorm and a submodule left in eval mode: everything a probe could disturb.

    No ``compute_loss``: the probe falls back to ``training_step``, which logs (and ``self.log``
    raises without a Trainer unless the probe silences it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        # tanh, not ReLU: finite differences across ReLU kinks measure a different (smoothed) curvature.
        self.body = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5))
        self.frozen_bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.frozen_bn(self.body(x)))

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return {"loss": loss}


class ProbedNetWithLoss(ProbedNet):
    def compute_loss(self, batch):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])


def _snapshot(module: nn.Module):
    return {
        "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
        "buffers": {n: b.clone() for n, b in module.named_buffers()},
        "modes": {n: m.training for n, m in module.named_modules()},
        "rng": torch.get_rng_state(),
        "params": [p.detach().clone() for p in module.parameters()],
    }


def _assert_same(a, b):
    assert [g is None for g in a["grads"]] == [g is None for g in b["grads"]]
    for x, y in zip(a["grads"], b["grads"]):
        if x is not None:
            assert torch.equal(x, y)
    assert a["buffers"].keys() == b["buffers"].keys()
    for name in a["buffers"]:
        assert torch.equal(a["buffers"][name], b["buffers"][name]), name
    assert a["modes"] == b["modes"]
    assert torch.equal(a["rng"], b["rng"])
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
@pytest.mark.parametrize("cls", [ProbedNetWithLoss, ProbedNet])
def test_probe_leaves_module_untouched(digits, method, cls):
    net = cls()
    net.train()
    net.frozen_bn.eval()
    nn.functional.cross_entropy(net(digits[0]), digits[1]).backward()  # a pending .grad of the training run
    net.head.bias.grad = None  # and a parameter with no grad at all
    before = _snapshot(net)
    lam = estimate_top_eigenvalue(net, [digits], method=method)
    _assert_same(before, _snapshot(net))
    # Dropout was off, so the estimate is deterministic and equals the Hessian of the dropout-free net
    # (BatchNorm in training mode: batch statistics, as the optimizer sees them).
    assert estimate_top_eigenvalue(net, [digits], method=method) == pytest.approx(
        lam, rel=1e-6 if method == "exact" else 1e-3
    )
    oracle = copy.deepcopy(net)
    oracle.body[3] = nn.Identity()
    oracle.body[1].track_running_stats = False  # batch statistics without in-place updates (vmap)
    spectrum = torch.linalg.eigvalsh(exact_hessian(oracle, digits))
    assert lam == pytest.approx(spectrum[-1].item(), rel=1e-2)


class FunctionalDropoutNet(nn.Module):
    """Dropout the probe cannot switch off (``F.dropout`` on the module's own flag) draws from the RNG."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.head = nn.Linear(64, 8), nn.Linear(8, 10)

    def compute_loss(self, batch):
        h = nn.functional.dropout(torch.tanh(self.hidden(batch[0])), 0.5, training=self.training)
        return nn.functional.cross_entropy(self.head(h), batch[1])


def test_probe_restores_the_rng_it_consumes(digits):
    net = FunctionalDropoutNet().train()
    state = torch.get_rng_state()
    first = estimate_top_eigenvalue(net, [digits])
    assert torch.equal(torch.get_rng_state(), state)
    # Same RNG state, same dropout mask: the probe is repeatable, and the mask really is random.
    assert estimate_top_eigenvalue(net, [digits]) == first
    torch.manual_seed(1)
    assert estimate_top_eigenvalue(net, [digits]) != first


def test_probe_ignores_autocast(digits):
    module = Classifier(hidden=8)
    fp32 = estimate_top_eigenvalue(module, [digits])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = estimate_top_eigenvalue(module, [digits])
        assert module(digits[0]).dtype == torch.bfloat16  # autocast is really on out here
    assert under_autocast == pytest.approx(fp32, rel=1e-6)


def test_averages_over_batches(digits):
    # Equal halves: the mean of the two half-batch losses is the full-batch loss, same Hessian.
    module = Classifier(hidden=8)
    x, y = digits
    halves = [(x[:64], y[:64]), (x[64:], y[64:])]
    full = estimate_top_eigenvalue(module, [digits], tol=1e-6, max_iter=100)
    assert estimate_top_eigenvalue(module, halves, tol=1e-6, max_iter=100) == pytest.approx(full, rel=1e-4)


def test_invalid_arguments(digits):
    module = Classifier()
    loss = module.compute_loss(digits)
    params = list(module.parameters())
    with pytest.raises(ValueError, match="method must be one of"):
        HessianOperator(loss, params, method="fd")
    with pytest.raises(ValueError, match="pass callables"):
        HessianOperator(loss, params, method="finite_difference")
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        top_eigenvalue(loss, params, max_iter=0)
    with pytest.raises(ValueError, match="tol must be finite and >= 0"):
        top_eigenvalue(loss, params, tol=-1.0)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        top_eigenvalue(loss, params, algorithm="arnoldi")
    with pytest.raises(ValueError, match="does not match parameter"):
        top_eigenvalue(loss, params, init=[torch.ones(3), torch.ones(2)])
    with pytest.raises(ValueError, match="finite, non-zero"):
        top_eigenvalue(loss, params, init=[torch.zeros_like(p) for p in params])
    with pytest.raises(ValueError, match="batches is empty"):
        estimate_top_eigenvalue(module, [])
    with pytest.raises(TypeError, match="neither compute_loss"):
        estimate_top_eigenvalue(nn.Linear(64, 10), [digits])
    with torch.no_grad():
        detached = module.compute_loss(digits)
    with pytest.raises(ValueError, match="no graph"):
        top_eigenvalue(detached, params)


class MatrixOperator:
    """A plain symmetric matrix behind the solvers' operator interface (no autograd, no parameters)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix
        self.numel = matrix.shape[0]
        self.device = matrix.device
        self.dtype = matrix.dtype

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        return self.matrix @ vec


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_solvers_need_only_the_operator_interface(algorithm):
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    spectrum = torch.cat(
        [torch.tensor([5.0, 3.0, -4.5], dtype=torch.float64), torch.linspace(-1, 1, 37, dtype=torch.float64)]
    )
    op = MatrixOperator(q @ torch.diag(spectrum) @ q.T)
    top = extreme_eigenpair(op, algorithm=algorithm, tol=1e-8, max_iter=200)
    bottom = extreme_eigenpair(op, which="smallest", algorithm=algorithm, tol=1e-8, max_iter=200)
    assert top.eigenvalue == pytest.approx(5.0, rel=1e-4)
    assert bottom.eigenvalue == pytest.approx(-4.5, rel=1e-4)
    direction = torch.randn(40, generator=gen, dtype=torch.float64)
    assert rayleigh_quotient(op, direction) == pytest.approx(
        float(direction @ op.matrix @ direction / (direction @ direction))
    )


def test_batch_sharpness_is_the_curvature_along_the_batch_gradient(problem, digits):
    _, module, hess, spectrum = problem
    loss = module.compute_loss(digits)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(module.parameters()))]).double()
    expected = float((g @ hess @ g / (g @ g)).detach())
    sharpness = estimate_batch_sharpness(module, digits)
    assert sharpness == pytest.approx(expected, rel=1e-4)
    assert sharpness <= spectrum[-1].item() * (1 + 1e-6)  # a Rayleigh quotient never exceeds lambda_max


def test_non_finite_parameters_or_loss_raise_a_clear_error(digits):
    module = Classifier(hidden=8)
    x, y = digits
    bad_x = x.clone()
    bad_x[0, 0] = float("nan")
    with pytest.raises(NonFiniteCurvatureError, match="the loss is nan"):
        top_eigenvalue(module.compute_loss((bad_x, y)), module.parameters())
    with pytest.raises(NonFiniteCurvatureError, match="the loss is nan"):
        estimate_top_eigenvalue(module, [(bad_x, y)])
    with pytest.raises(NonFiniteCurvatureError, match="the loss is nan"):
        estimate_batch_sharpness(module, (bad_x, y))
    with torch.no_grad():
        module.net[2].weight[0, 0] = float("inf")
    with pytest.raises(
        NonFiniteCurvatureError, match=r"1 of 4 parameter tensors hold NaN or inf \(first: #2 \(10, 8\)\)"
    ):
        top_eigenvalue(lambda: module.compute_loss(digits), module.parameters())
    with pytest.raises(NonFiniteCurvatureError, match="parameter tensors hold NaN or inf"):
        estimate_top_eigenvalue(module, [digits])
    assert issubclass(NonFiniteCurvatureError, ValueError)


def test_a_non_finite_product_raises_instead_of_failing_in_eigh():
    op = MatrixOperator(torch.tensor([[1.0, 0.0], [0.0, float("nan")]], dtype=torch.float64))
    for algorithm in ("lanczos", "power"):
        with pytest.raises(NonFiniteCurvatureError, match="non-finite product"):
            extreme_eigenpair(op, algorithm=algorithm)


def test_probe_batch_reads_the_top_eigenvalue_sharpness_and_loss_from_one_graph(problem, digits):
    _, module, _, spectrum = problem
    probe = probe_batch(module, digits, tol=1e-6, max_iter=50)
    assert probe.eigen.eigenvalue == pytest.approx(spectrum[-1].item(), rel=1e-4)
    assert probe.batch_sharpness == pytest.approx(estimate_batch_sharpness(module, digits), rel=1e-6)
    assert probe.loss == pytest.approx(float(module.compute_loss(digits)), rel=1e-6)
    warm = probe_batch(module, digits, tol=1e-3, init=probe.eigen.vector)
    assert warm.eigen.n_matvecs <= 2  # warm-started from the eigenvector


def test_exact_products_through_torch_attention_match_the_full_hessian():
    """nn.TransformerEncoderLayer runs torch's fused attention, which has no double backward; the probe runs it
    on the math kernel, so the exact top eigenvalue equals that of the Hessian built entry by entry."""
    torch.manual_seed(0)

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, inputs):
            return self.head(self.layer(inputs).mean(1))

        def compute_loss(self, batch):
            inputs, labels = batch
            return nn.functional.cross_entropy(self(inputs), labels)

    module = Module()
    batch = (torch.randn(4, 5, 4), torch.randint(0, 3, (4,)))
    lam = estimate_top_eigenvalue(module, [batch], max_iter=100, tol=1e-9)

    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])

    def loss_of(vector):
        tensors = dict(zip(names, (t.view(s) for t, s in zip(vector.split([s.numel() for s in shapes]), shapes))))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            logits = torch.func.functional_call(module, tensors, (batch[0],))
        return nn.functional.cross_entropy(logits, batch[1])

    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat)).max().item()
    assert lam == pytest.approx(exact, rel=1e-3)
