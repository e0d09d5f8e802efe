"""The preconditioned operator P^-1/2 H P^-1/2 against an exact small Hessian and a known P, and P read from
AdaNAGGS's own state.

Oracle: the full float64 Hessian of a tiny MLP's loss (``torch.autograd.functional.hessian`` over the flattened
parameters) and ``torch.linalg.eigvalsh`` of ``P^-1/2 H P^-1/2``, equivalently the eigenvalues of ``P^-1 H``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from naggs_lightning import NAGGS, AdaNAGGS
from naggs_lightning.curvature import (
    HessianOperator,
    PreconditionedOperator,
    extreme_eigenpair,
    optimizer_metric,
    probe_batch,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (self(x) - y).pow(2).mean()


def _setup() -> tuple[Tiny, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = Tiny().double()
    return model, (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64))


def _exact_hessian(model: Tiny, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        chunks = [c.view(s) for c, s in zip(theta.split(sizes), shapes)]
        return (functional_call(model, dict(zip(names, chunks)), (batch[0],)) - batch[1]).pow(2).mean()

    return torch.autograd.functional.hessian(loss, flat)


def test_top_eigenvalue_of_the_preconditioned_operator_is_that_of_p_inverse_h():
    model, batch = _setup()
    hessian = _exact_hessian(model, batch)
    gen = torch.Generator().manual_seed(1)
    n = hessian.shape[0]
    spread = 10 ** torch.linspace(-2, 1, n, dtype=torch.float64)
    p_diag = 1e-3 + torch.rand(n, generator=gen, dtype=torch.float64) * spread
    scale = p_diag.rsqrt()
    exact = torch.linalg.eigvalsh(scale[:, None] * hessian * scale[None, :])
    other = torch.linalg.eigvals(torch.diag(1 / p_diag) @ hessian).real  # the same spectrum
    assert float(exact.max()) == pytest.approx(float(other.max()), rel=1e-8)
    # Far from the plain sharpness: the metric changes the number the theory reads.
    assert abs(float(exact.max()) - float(torch.linalg.eigvalsh(hessian).max())) > 0.5 * float(exact.max())

    op = HessianOperator(model.compute_loss(batch), list(model.parameters()))
    pre = PreconditionedOperator(op, p_diag)
    eigen = extreme_eigenpair(pre, which="largest", max_iter=hessian.shape[0], tol=0.0)
    assert eigen.eigenvalue == pytest.approx(float(exact.max()), rel=1e-8)
    vec = torch.randn(hessian.shape[0], generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pre(vec), scale * (hessian @ (scale * vec)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pre.gradient(), scale * op.gradient())


def test_probe_reads_the_metric_of_adanaggs_own_state():
    model, batch = _setup()
    opt = AdaNAGGS(model.parameters(), lr=0.01, beta2=0.9, eps=1e-6)
    params = list(model.parameters())
    assert all(bool((m == 1).all()) for m in optimizer_metric([opt], params))  # before the first step: P = 1
    for _ in range(3):
        opt.zero_grad()
        model.compute_loss(batch).backward()
        opt.step()
    metric = optimizer_metric([opt], params)
    for m, p in zip(metric, params):
        torch.testing.assert_close(m, opt.metric(p))
    p_diag = torch.cat([m.reshape(-1) for m in metric])
    hessian = _exact_hessian(model, batch)
    scale = p_diag.rsqrt()
    exact = float(torch.linalg.eigvalsh(scale[:, None] * hessian * scale[None, :]).max())
    probe = probe_batch(model, batch, metric=metric, max_iter=hessian.shape[0], tol=0.0)
    assert probe.eigen.eigenvalue == pytest.approx(exact, rel=1e-6)
    # The batch sharpness in the metric: the curvature of P^-1/2 H P^-1/2 along P^-1/2 g.
    grad = torch.autograd.grad(model.compute_loss(batch), params)
    g = scale * torch.cat([t.reshape(-1) for t in grad])
    h_tilde = scale[:, None] * hessian * scale[None, :]
    assert probe.batch_sharpness == pytest.approx(float(g @ h_tilde @ g / (g @ g)), rel=1e-6)
    assert optimizer_metric([NAGGS(model.parameters())], params) is None


def test_the_metric_must_fit_and_be_positive():
    model, batch = _setup()
    op = HessianOperator(model.compute_loss(batch), list(model.parameters()))
    with pytest.raises(ValueError, match="entries"):
        PreconditionedOperator(op, torch.ones(op.numel + 1))
    with pytest.raises(ValueError, match="finite and > 0"):
        PreconditionedOperator(op, torch.zeros(op.numel))
