r"""A short warm-up that measures the curvature a training run will meet, not the one it starts from.

Networks sharpen: the top Hessian eigenvalue of a minibatch's loss grows 10-30x within the first
hundred steps (THEORY.md section 2c), so a step computed from the curvature at initialisation is
computed for a model the run leaves. The warm-up trains a *copy* of the model with the model's own NAG-GS
optimizer class (``optimizer``: NAGGS, or AdaNAGGS with the user's beta2 and eps) at the trial's mu
(gamma = mu) in ``stages`` stages (60 steps in 3 by default) and reads the top eigenvalue of one batch's
Hessian before each stage. Each stage's step is the theory's step (gamma = mu) for a
multiple ``m`` of the largest curvature read so far, :math:`L_j = \max_{i \le j} \lambda_i`,

.. math::

    \alpha_j = s\,\min\bigl(\alpha^*(\mu, \max(m L_j, 2\mu)),\ \alpha_{\rm crit}(\mu, \mu, m L_j)\bigr),

with ``m = growth`` (20) for the first stage, which starts where networks sharpen fastest, and
``m = margin`` (4) after it. The step is stable by construction for curvature up to ``m`` times what
has been measured: a ramp that is cut back as soon as the measured sharpness approaches its edge (an
lr range test that reads curvature instead of the loss). What the seed must avoid is divergence, or a
catapult into a flat, dead region, *before* the network self-stabilises (at the edge of stability
sharpness settles at ``lambda_stab(alpha)``; that is normal). If a stage diverges anyway, or the
curvature collapses (falls below half of the largest reading while the loss stalls), the warm-up
starts again from the initialisation with every step at most half the one that failed, and the seed
inherits that cap.

After the warm-up the first batch is read again, with ``curvature_batches - 1`` more. The curvature the run
will meet, :attr:`WarmupResult.lambda_run`, is the largest of those readings times the growth seen on
the first batch (capped at 2: a network still sharpening keeps doing so for a while), and never below
a reading along the warm-up (trials start from the initialisation). A quadratic does not grow and keeps
its reading exactly.

For AdaNAGGS every reading is the *preconditioned* sharpness, the top eigenvalue of
:math:`P^{-1/2} H P^{-1/2}` with P the metric of the copy's optimizer at that point (before its first step: the
metric that step will take, :meth:`~naggs_lightning.lr.optimizer.OptimizerKind.metric`); the theory's steps
read it unchanged (THEORY.md 2d). The readings after the warm-up use the metric the warm-up ended with.

The copy, its optimizer and the global RNG state are discarded afterwards: the trials are untouched.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from naggs_lightning import theory
from naggs_lightning._checks import all_finite
from naggs_lightning.curvature import estimate_top_eigenvalue, module_loss
from naggs_lightning.lr.defaults import CURVATURE_BATCHES, WARMUP_STEPS
from naggs_lightning.lr.errors import LRError
from naggs_lightning.lr.optimizer import NAGGS_KIND, OptimizerKind
from naggs_lightning.lr.readings import CurvatureReading, WarmupResult

__all__ = ["warm_up_curvature"]


def cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise LRError("the training dataloader yields no batches: cannot measure curvature")


def _stage_alpha(lam: float, mu: float, margin: float, safety: float) -> float:
    """The theory's step (gamma = mu) for curvature ``margin * lam``, never above its edge."""
    big = margin * max(lam, 0.0)
    best = theory.alpha_opt(mu, max(big, 2.0 * mu))
    edge = theory.alpha_crit(mu, mu, big) if big > 2.0 * mu else math.inf
    return safety * min(best, edge)


def warm_up_curvature(
    module: nn.Module,
    batches: Iterable[Any],
    mu: float,
    *,
    warmup_steps: int = WARMUP_STEPS,
    stages: int = 3,
    growth: float = 20.0,
    margin: float = 4.0,
    safety: float = 0.9,
    curvature_batches: int = CURVATURE_BATCHES,
    max_iter: int = 20,
    tol: float = 1e-3,
    device: torch.device | str = "cpu",
    optimizer: OptimizerKind = NAGGS_KIND,
) -> WarmupResult:
    """Warm a copy of ``module`` up in ``stages`` stages of ``warmup_steps / stages`` steps; read curvature along it.

    Args:
        module: a module with ``compute_loss(batch)`` (or a ``training_step`` returning the loss).
        batches: the training batches (a dataloader); cycled when shorter than the warm-up.
        mu: NAG-GS's mu for the warm-up (gamma = mu), the mu the seed is computed for; > 0.
        warmup_steps: warm-up steps (0: read curvature at initialisation only).
        stages: curvature readings, and step changes, along the warm-up.
        growth: the first stage's step is stable for ``growth`` times the curvature at initialisation
            (>= 1): networks sharpen 10-30x in their first hundred steps, fastest at the start.
        margin: each later stage's step is stable for ``margin`` times the curvature read so far (>= 1).
        safety: factor in (0, 1] on each stage's theory step.
        curvature_batches: batches whose top eigenvalue is read after the warm-up (the largest is kept).
        max_iter, tol: Lanczos iterations and relative tolerance of the readings after the warm-up (those
            along it only choose the next stage's step, and stop at 8 iterations or 1 %).
        device: where the copy trains.
        optimizer: the NAG-GS optimizer class (and its metric's hyper-parameters) the copy trains with; for
            one with a metric (AdaNAGGS) every reading is the preconditioned sharpness in its metric.
    """
    if not (math.isfinite(mu) and mu > 0.0):
        raise LRError(f"the warm-up needs mu > 0 (the step is the theory's for mu), got mu = {mu}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise LRError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not isinstance(stages, int) or stages < 1:
        raise LRError(f"stages must be an integer >= 1, got {stages!r}")
    for name, value in (("growth", growth), ("margin", margin)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0):
            raise LRError(f"warm-up {name} must be finite and >= 1, got {value!r}")
    if not isinstance(curvature_batches, int) or curvature_batches < 1:
        raise LRError(f"curvature_batches must be an integer >= 1, got {curvature_batches!r}")
    start = time.perf_counter()
    bounds = [round(warmup_steps * j / stages) for j in range(stages + 1)] if warmup_steps else [0, 0]
    restarts: list[str] = []
    cap = math.inf
    with torch.random.fork_rng(devices=[]):
        source = cycle(batches)
        # The first batch is read at initialisation and again after the warm-up: growth compares one
        # batch with itself, so batch-to-batch spread is not mistaken for sharpening.
        first = batch_to(next(source), device)
        for _ in range(_MAX_RESTARTS + 1):
            model = copy.deepcopy(module).to(device)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            steps = optimizer.build(params, lr=1.0, mu=mu, gamma=mu)
            readings, failed = _ramp(
                model, steps, optimizer, first, source, mu, bounds, growth, margin, safety, cap, (max_iter, tol), device
            )
            ends = [first] + [batch_to(next(source), device) for _ in range(curvature_batches - 1)]
            metric = functools.cache(
                functools.partial(optimizer.metric, model, steps, first)
            )  # where the warm-up ended
            after = [_read(model, batch, max_iter, tol, metric) for batch in ends] if failed is None else []
            final = tuple(lam for lam, _ in after)
            finite = all(math.isfinite(lam) and math.isfinite(loss) for lam, loss in after)
            mean_loss = statistics.fmean(loss for _, loss in after) if after else math.nan
            if failed is None and warmup_steps and not finite:
                failed = (readings[-1].alpha, "the loss went non-finite after the warm-up")
            elif (
                failed is None
                and warmup_steps
                and not optimizer.preconditioned
                and _collapsed(readings, max(final), mean_loss)
            ):
                failed = (readings[-1].alpha, f"the curvature fell to {max(final):.3g} after the warm-up")
            if failed is None:
                break
            cap = failed[0] / 2.0
            restarts.append(f"{failed[1]}: restarted with alpha <= {cap:.3g}")
        else:
            raise LRError(
                f"the warm-up at mu = {mu:.4g} failed {_MAX_RESTARTS + 1} times ({'; '.join(restarts)}): "
                "the model does not train with NAG-GS at this mu; pin another mu or run without the seed"
            )
    if not warmup_steps:  # no warm-up: the reading at initialisation is the first final one
        _check_finite(*after)
        readings = [CurvatureReading(0, final[0], 0.0, after[0][1])]
    return WarmupResult(
        float(mu),
        tuple(readings),
        final,
        warmup_steps,
        time.perf_counter() - start,
        tuple(restarts),
        cap,
        optimizer.name if optimizer.preconditioned else None,
    )


#: A reading below this share of the largest one so far, with the loss not below ``_STALLED`` times
#: the first reading's, means the step threw the network into a flat, dead region (a catapult that
#: did not recover): measured on a 1-D CNN at mu = 0.1, where the loss stayed at ln 5 and the run ended
#: at chance. A loss that fell (a convex loss flattening as it fits) is progress, not a collapse.
_COLLAPSE = 0.5
_STALLED = 0.9
#: Lanczos iterations and tolerance of the readings along the warm-up.
_STAGE_READ = (8, 1e-2)
_MAX_RESTARTS = 3


def _ramp(
    model: nn.Module,
    optimizer: Optimizer,
    kind: OptimizerKind,
    first: Any,
    source: Iterator[Any],
    mu: float,
    bounds: list[int],
    growth: float,
    margin: float,
    safety: float,
    cap: float,
    accurate: tuple[int, float],
    device: torch.device | str,
) -> tuple[list[CurvatureReading], tuple[float, str] | None]:
    """Train ``model`` through the stages from batch ``first`` on; the readings, and (alpha, why) if a stage
    diverged or collapsed. The reading at initialisation is ``accurate`` (Lanczos iterations, tolerance):
    growth is measured against it. ``optimizer`` (of ``kind``) trains ``model``; in its metric if it has one."""
    readings: list[CurvatureReading] = []
    worst = 0.0
    for j in range(len(bounds) - 1):
        if bounds[j] == bounds[j + 1]:
            continue
        batch = first if j == 0 else batch_to(next(source), device)
        metric = functools.cache(functools.partial(kind.metric, model, optimizer, batch))
        lam, at = _read(model, batch, *(accurate if j == 0 else _STAGE_READ), metric)
        if not readings:
            _check_finite((lam, at))
        elif not (math.isfinite(lam) and math.isfinite(at)):
            return readings, (readings[-1].alpha, f"the loss went non-finite by step {bounds[j]}")
        if not kind.preconditioned and _collapsed(readings, lam, at):
            return readings, (
                readings[-1].alpha,
                f"the curvature fell from {worst:.3g} to {lam:.3g} at step {bounds[j]} while the loss stalled",
            )
        # A metric that is still forming makes the sharpness read in it fall as it forms (one gradient's |g| at
        # first, then an average): each stage is stable for the latest reading, and a fall is not a collapse.
        worst = lam if kind.preconditioned else max(worst, lam)
        alpha = min(_stage_alpha(worst, mu, growth if j == 0 else margin, safety), cap)
        for group in optimizer.param_groups:
            group["lr"] = alpha
        for k in range(bounds[j], bounds[j + 1]):
            if k > bounds[j]:
                batch = batch_to(next(source), device)
            loss_t = module_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            optimizer.step()
            if not all_finite(loss_t):
                return readings, (alpha, f"the loss went non-finite at step {k}")
        readings.append(CurvatureReading(bounds[j], lam, alpha, at))
    return readings, None


def batch_to(batch: Any, device: torch.device | str) -> Any:
    from lightning.pytorch.utilities import move_data_to_device

    return move_data_to_device(batch, device)


def _collapsed(readings: list[CurvatureReading], lam: float, loss: float) -> bool:
    """Whether curvature ``lam`` with batch loss ``loss`` is a collapse after ``readings`` (see ``_COLLAPSE``)."""
    if not readings:
        return False
    worst = max(r.lambda_max for r in readings)
    return lam < _COLLAPSE * worst and not loss < _STALLED * readings[0].loss


#: The metric of a reading, read when called (only once the loss is known to be finite); None: plain Hessian.
Metric = Callable[[], "list[Tensor] | None"]


def _read(model: nn.Module, batch: Any, max_iter: int, tol: float, metric: Metric) -> tuple[float, float]:
    """The top eigenvalue of ``batch``'s Hessian in the optimizer's metric (``metric()``: None for the plain
    Hessian) and the batch's loss (either may be non-finite)."""
    with torch.no_grad():
        loss = float(module_loss(model, batch))
    if not math.isfinite(loss):
        return math.nan, loss
    return float(estimate_top_eigenvalue(model, [batch], max_iter=max_iter, tol=tol, metric=metric())), loss


def _check_finite(*readings: tuple[float, float]) -> None:
    for lam, loss in readings:
        if not (math.isfinite(lam) and math.isfinite(loss)):
            raise LRError(
                f"at initialisation the loss is {loss} and the top Hessian eigenvalue {lam}: "
                "the model's loss or its gradient is not finite before any step"
            )
