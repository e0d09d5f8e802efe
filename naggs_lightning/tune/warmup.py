r"""A short warm-up that measures the curvature a training run will meet, not the one it starts from.

Networks sharpen: the top Hessian eigenvalue of a minibatch's loss grows 10-30x within the first
hundred steps (THEORY.md section 2c), so a step computed from the curvature at initialisation is
computed for a model the run leaves. The warm-up trains a *copy* of the model with NAG-GS at the
trial's mu (gamma = mu) in ``stages`` stages (60 steps in 3 by default) and reads the top eigenvalue
of one batch's Hessian before each stage. Each stage's step is the theory's step (gamma = mu) for a
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

After the warm-up the first batch is read again, with ``final_batches - 1`` more. The curvature the run
will meet, :attr:`WarmupResult.lambda_run`, is the largest of those readings times the growth seen on
the first batch (capped at 2: a network still sharpening keeps doing so for a while), and never below
a reading along the warm-up (trials start from the initialisation). A quadratic does not grow and keeps
its reading exactly.

The copy, its optimizer and the global RNG state are discarded afterwards: the trials are untouched.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from naggs_lightning import theory
from naggs_lightning.curvature import estimate_top_eigenvalue
from naggs_lightning.optim import NAGGS
from naggs_lightning.tune.errors import TuneError

__all__ = ["CURVATURE_BATCHES", "WARMUP_STEPS", "CurvatureReading", "WarmupResult", "warm_up_curvature"]

#: Default warm-up length in optimizer steps: on the design tasks (a deep digits CNN, a 1-D signal CNN)
#: the top eigenvalue rose 10-30x within the first 40-60 steps.
WARMUP_STEPS = 60
#: Default number of batches read after the warm-up (the largest top eigenvalue is kept).
CURVATURE_BATCHES = 2


@dataclass(frozen=True)
class CurvatureReading:
    """The top eigenvalue of one batch's Hessian and that batch's loss at one step of the warm-up, and
    the step the next stage used."""

    step: int
    lambda_max: float
    alpha: float
    loss: float


@dataclass(frozen=True)
class WarmupResult:
    """What the warm-up measured: the readings along it and the curvature after it."""

    mu: float
    readings: tuple[CurvatureReading, ...]
    final: tuple[float, ...]
    """Top eigenvalues of ``final_batches`` batches' Hessians after the warm-up (at initialisation if
    ``steps`` is 0)."""
    steps: int
    seconds: float
    restarts: tuple[str, ...] = ()
    """Why a warm-up was started again with a smaller step (divergence, or a curvature collapse)."""
    cap: float = math.inf
    """Half the smallest step that diverged or collapsed the network in the warm-up (inf if none did)."""

    @property
    def lambda_init(self) -> float:
        return self.readings[0].lambda_max

    @property
    def lambda_max(self) -> float:
        """The largest top eigenvalue read after the warm-up."""
        return max(self.final)

    @property
    def growth(self) -> float:
        """How many times the curvature grew during the warm-up (after over before; 1 without a warm-up)."""
        if not self.steps:
            return 1.0
        return self.lambda_max / self.lambda_init if self.lambda_init > 0 else math.inf

    @property
    def lambda_run(self) -> float:
        """The curvature the run will meet: the reading after the warm-up times ``min(growth, 2)`` (>= 1),
        and never less than any reading along the warm-up (a trial starts from the initialisation; a
        convex loss flattens as it trains).

        A network still sharpening at the end of the warm-up keeps doing so for a while: after the
        60-step warm-up the top eigenvalue rose by another 1.2-3x in the next hundred steps on the
        design tasks (a deep digits CNN and a 1-D signal CNN, mu = 0.01 to 1), and seeds just under the
        edge of the reading itself ended at chance there. A model whose curvature did not grow (a
        quadratic, a convex loss) keeps its reading.
        """
        seen = max(self.lambda_max, *(r.lambda_max for r in self.readings))  # trials start at initialisation
        return max(seen, self.lambda_max * self.headroom)

    @property
    def headroom(self) -> float:
        """The further growth :attr:`lambda_run` allows for: ``min(growth, 2)``, at least 1."""
        return min(max(self.growth, 1.0), _HEADROOM)

    def describe(self) -> str:
        ramp = ", ".join(f"{r.lambda_max:.3g} at step {r.step} (alpha {r.alpha:.3g})" for r in self.readings)
        after = ", ".join(f"{v:.3g}" for v in self.final)
        return (
            f"warm-up of {self.steps} NAG-GS steps at mu = gamma = {self.mu:.4g} on a copy of the model "
            f"({self.seconds:.2f} s); top eigenvalue of one batch's Hessian: {ramp}; "
            f"after it, on {len(self.final)} batches: {after} ({self.growth:.3g}x the reading at "
            f"initialisation; the seed allows for {self.headroom:.3g}x more)"
            + "".join(f"; {r}" for r in self.restarts)
        )

    def to_attrs(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "readings": [[r.step, r.lambda_max, r.alpha, r.loss] for r in self.readings],
            "final": list(self.final),
            "steps": self.steps,
            "seconds": self.seconds,
            "restarts": list(self.restarts),
            "cap": None if math.isinf(self.cap) else self.cap,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> WarmupResult:
        readings = tuple(
            CurvatureReading(int(step), float(lam), float(alpha), float(loss))
            for step, lam, alpha, loss in attrs["readings"]
        )
        return cls(
            float(attrs["mu"]), readings, tuple(attrs["final"]), int(attrs["steps"]), float(attrs["seconds"]),
            tuple(attrs.get("restarts", ())),
            math.inf if attrs.get("cap") is None else float(attrs["cap"]),
        )


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise TuneError("the training dataloader yields no batches: cannot measure curvature")


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
    steps: int = WARMUP_STEPS,
    stages: int = 3,
    growth: float = 20.0,
    margin: float = 4.0,
    safety: float = 0.9,
    final_batches: int = CURVATURE_BATCHES,
    max_iter: int = 20,
    tol: float = 1e-3,
    device: torch.device | str = "cpu",
) -> WarmupResult:
    """Warm a copy of ``module`` up in ``stages`` stages of ``steps / stages`` steps; read curvature along it.

    Args:
        module: a module with ``compute_loss(batch)`` (or a ``training_step`` returning the loss).
        batches: the training batches (a dataloader); cycled when shorter than the warm-up.
        mu: NAG-GS's mu for the warm-up (gamma = mu), the mu the seed is computed for; > 0.
        steps: warm-up steps (0: read curvature at initialisation only).
        stages: curvature readings, and step changes, along the warm-up.
        growth: the first stage's step is stable for ``growth`` times the curvature at initialisation
            (>= 1): networks sharpen 10-30x in their first hundred steps, fastest at the start.
        margin: each later stage's step is stable for ``margin`` times the curvature read so far (>= 1).
        safety: factor in (0, 1] on each stage's theory step.
        final_batches: batches whose top eigenvalue is read after the warm-up (the largest is kept).
        max_iter, tol: Lanczos iterations and relative tolerance of the readings after the warm-up (those
            along it only choose the next stage's step, and stop at 8 iterations or 1 %).
        device: where the copy trains.
    """
    if not (math.isfinite(mu) and mu > 0.0):
        raise TuneError(f"the warm-up needs mu > 0 (the step is the theory's for mu), got mu = {mu}")
    if not isinstance(steps, int) or steps < 0:
        raise TuneError(f"warmup_steps must be an integer >= 0, got {steps!r}")
    if not isinstance(stages, int) or stages < 1:
        raise TuneError(f"warmup_stages must be an integer >= 1, got {stages!r}")
    for name, value in (("growth", growth), ("margin", margin)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0):
            raise TuneError(f"warm-up {name} must be finite and >= 1, got {value!r}")
    if not isinstance(final_batches, int) or final_batches < 1:
        raise TuneError(f"curvature_batches must be an integer >= 1, got {final_batches!r}")
    start = time.perf_counter()
    bounds = [round(steps * j / stages) for j in range(stages + 1)] if steps else [0, 0]
    restarts: list[str] = []
    cap = math.inf
    with torch.random.fork_rng(devices=[]):
        source = _cycle(batches)
        # The first batch is read at initialisation and again after the warm-up: growth compares one
        # batch with itself, so batch-to-batch spread is not mistaken for sharpening.
        first = _to(next(source), device)
        for _ in range(_MAX_RESTARTS + 1):
            model = copy.deepcopy(module).to(device)
            readings, failed = _ramp(
                model, first, source, mu, bounds, growth, margin, safety, cap, (max_iter, tol), device
            )
            ends = [first] + [_to(next(source), device) for _ in range(final_batches - 1)]
            after = [_read(model, batch, max_iter, tol) for batch in ends] if failed is None else []
            final = tuple(lam for lam, _ in after)
            if failed is None and steps and not all(math.isfinite(lam) and math.isfinite(l) for lam, l in after):
                failed = (readings[-1].alpha, "the loss went non-finite after the warm-up")
            elif failed is None and steps and _collapsed(readings, max(final), statistics.fmean(l for _, l in after)):
                failed = (readings[-1].alpha, f"the curvature fell to {max(final):.3g} after the warm-up")
            if failed is None:
                break
            cap = failed[0] / 2.0
            restarts.append(f"{failed[1]}: restarted with alpha <= {cap:.3g}")
        else:
            raise TuneError(
                f"the warm-up at mu = {mu:.4g} failed {_MAX_RESTARTS + 1} times ({'; '.join(restarts)}): "
                "the model does not train with NAG-GS at this mu; pin another mu or run without the seed"
            )
    if not steps:  # no warm-up: the reading at initialisation is the first final one
        _check_finite(*after)
        readings = [CurvatureReading(0, final[0], 0.0, after[0][1])]
    return WarmupResult(
        float(mu), tuple(readings), final, steps, time.perf_counter() - start, tuple(restarts), cap
    )


#: A reading below this share of the largest one so far, with the loss not below ``_STALLED`` times
#: the first reading's, means the step threw the network into a flat, dead region (a catapult that
#: did not recover): measured on a 1-D CNN at mu = 0.1, where the loss stayed at ln 5 and the run ended
#: at chance. A loss that fell (a convex loss flattening as it fits) is progress, not a collapse.
_COLLAPSE = 0.5
_STALLED = 0.9
#: Lanczos iterations and tolerance of the readings along the warm-up.
_STAGE_READ = (8, 1e-2)
#: The most further growth :attr:`WarmupResult.lambda_run` allows for after the warm-up.
_HEADROOM = 2.0
_MAX_RESTARTS = 3


def _ramp(
    model: nn.Module,
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
    growth is measured against it."""
    model.train()
    optimizer = NAGGS([p for p in model.parameters() if p.requires_grad], lr=1.0, mu=mu, gamma=mu)
    readings: list[CurvatureReading] = []
    worst = 0.0
    for j in range(len(bounds) - 1):
        if bounds[j] == bounds[j + 1]:
            continue
        batch = first if j == 0 else _to(next(source), device)
        lam, at = _read(model, batch, *(accurate if j == 0 else _STAGE_READ))
        if not readings:
            _check_finite((lam, at))
        elif not (math.isfinite(lam) and math.isfinite(at)):
            return readings, (readings[-1].alpha, f"the loss went non-finite by step {bounds[j]}")
        if _collapsed(readings, lam, at):
            return readings, (
                readings[-1].alpha,
                f"the curvature fell from {worst:.3g} to {lam:.3g} at step {bounds[j]} while the loss stalled",
            )
        worst = max(worst, lam)
        alpha = min(_stage_alpha(worst, mu, growth if j == 0 else margin, safety), cap)
        for group in optimizer.param_groups:
            group["lr"] = alpha
        for k in range(bounds[j], bounds[j + 1]):
            if k > bounds[j]:
                batch = _to(next(source), device)
            loss_t = _loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            optimizer.step()
            if not math.isfinite(float(loss_t.detach())):
                return readings, (alpha, f"the loss went non-finite at step {k}")
        readings.append(CurvatureReading(bounds[j], lam, alpha, at))
    return readings, None


def _to(batch: Any, device: torch.device | str) -> Any:
    from lightning.pytorch.utilities import move_data_to_device

    return move_data_to_device(batch, device)


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    compute_loss = getattr(model, "compute_loss", None)
    if callable(compute_loss):
        return compute_loss(batch)
    out = model.training_step(batch, 0)
    return out["loss"] if isinstance(out, dict) else out


def _collapsed(readings: list[CurvatureReading], lam: float, loss: float) -> bool:
    """Whether curvature ``lam`` with batch loss ``loss`` is a collapse after ``readings`` (see ``_COLLAPSE``)."""
    if not readings:
        return False
    worst = max(r.lambda_max for r in readings)
    return lam < _COLLAPSE * worst and not loss < _STALLED * readings[0].loss


def _read(model: nn.Module, batch: Any, max_iter: int, tol: float) -> tuple[float, float]:
    """The top eigenvalue of ``batch``'s Hessian and the batch's loss (either may be non-finite)."""
    with torch.no_grad():
        loss = float(_loss(model, batch))
    if not math.isfinite(loss):
        return math.nan, loss
    return float(estimate_top_eigenvalue(model, [batch], max_iter=max_iter, tol=tol)), loss


def _check_finite(*readings: tuple[float, float]) -> None:
    for lam, loss in readings:
        if not (math.isfinite(lam) and math.isfinite(loss)):
            raise TuneError(
                f"at initialisation the loss is {loss} and the top Hessian eigenvalue {lam}: "
                "the model's loss or its gradient is not finite before any step"
            )
