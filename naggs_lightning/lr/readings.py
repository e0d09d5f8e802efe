"""What the warm-up (:mod:`~naggs_lightning.lr.warmup`) measured, as plain data: the readings along it, the
curvature after it, and the curvature the run will meet (:attr:`WarmupResult.lambda_run`); and what the
bracket (:mod:`~naggs_lightning.lr.bracket`) found above the theory's step (:class:`Bracket`).

Kept apart from the warm-up itself so that reading a stored seed back (``naggs-tune`` resuming a study)
needs neither torch nor Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Bracket", "BracketRun", "CurvatureReading", "WarmupResult"]

#: The most further growth :attr:`WarmupResult.lambda_run` allows for after the warm-up.
_HEADROOM = 2.0


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
    """Top eigenvalues of ``curvature_batches`` batches' Hessians after the warm-up (at initialisation if
    ``steps`` is 0)."""
    steps: int
    seconds: float
    restarts: tuple[str, ...] = ()
    """Why a warm-up was started again with a smaller step (divergence, or a curvature collapse)."""
    cap: float = math.inf
    """Half the smallest step that diverged or collapsed the network in the warm-up (inf if none did)."""
    metric: str | None = None
    """The optimizer whose metric the readings are in (``"AdaNAGGS"``: the preconditioned sharpness
    :math:`\\lambda_{\\max}(P^{-1/2} H P^{-1/2})`); ``None``: the plain Hessian, with NAGGS."""

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
        if self.metric is not None:
            # In a metric that forms along the warm-up (Adam's second moment starts as one gradient's |g|), an
            # earlier reading is in another metric: only the one after the warm-up, in the metric runs step in.
            return self.lambda_max * self.headroom
        seen = max(self.lambda_max, *(r.lambda_max for r in self.readings))  # trials start at initialisation
        return max(seen, self.lambda_max * self.headroom)

    @property
    def headroom(self) -> float:
        """The further growth :attr:`lambda_run` allows for: ``min(growth, 2)``, at least 1."""
        return min(max(self.growth, 1.0), _HEADROOM)

    def describe(self) -> str:
        ramp = ", ".join(f"{r.lambda_max:.3g} at step {r.step} (alpha {r.alpha:.3g})" for r in self.readings)
        after = ", ".join(f"{v:.3g}" for v in self.final)
        steps, read = (
            ("NAG-GS", "Hessian") if self.metric is None else (self.metric, f"Hessian in {self.metric}'s metric")
        )
        return (
            f"warm-up of {self.steps} {steps} steps at mu = gamma = {self.mu:.4g} on a copy of the model "
            f"({self.seconds:.2f} s); top eigenvalue of one batch's {read}: {ramp}; "
            f"after it, on {len(self.final)} batches: {after} ({self.growth:.3g}x the reading at "
            f"initialisation; the seed allows for {self.headroom:.3g}x more)" + "".join(f"; {r}" for r in self.restarts)
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
            "metric": self.metric,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> WarmupResult:
        readings = tuple(
            CurvatureReading(int(step), float(lam), float(alpha), float(loss))
            for step, lam, alpha, loss in attrs["readings"]
        )
        return cls(
            float(attrs["mu"]),
            readings,
            tuple(attrs["final"]),
            int(attrs["steps"]),
            float(attrs["seconds"]),
            tuple(attrs.get("restarts", ())),
            math.inf if attrs.get("cap") is None else float(attrs["cap"]),
            attrs.get("metric"),
        )


Outcome = Literal["trains", "no better", "slow", "collapsed", "diverged"]

#: A score at or above this share of the initial loss is a run that did not train: a collapse (a catapult into
#: a flat region, a loss back at the entropy of a uniform guess) if the loss fell below ``FELL_SHARE`` of the
#: initial loss on the way, ends above ``ROSE_SHARE`` of it or a smaller step's run trained, else a slow start (a
#: recurrent network at the theory's step: the loss has not moved yet in the run's steps, and a larger step may move
#: it).
STALLED_SHARE = 0.98
#: A larger step is kept only if its score is below this share of the previous run's: a gain within the
#: short runs' noise is not worth the larger step's risk of collapsing later in the run (on the held-out GRU a
#: step scoring 1 % lower in 40 steps collapsed to chance in the full run).
GAIN_SHARE = 0.9
FELL_SHARE = 0.9
ROSE_SHARE = 1.05


@dataclass(frozen=True)
class BracketRun:
    """One short run of the bracket: its factor on the seed, its step, its score and what happened."""

    factor: float
    alpha: float
    score: float
    outcome: Outcome

    @property
    def failed(self) -> bool:
        """Whether the run collapsed or diverged (a step at or past it is not worth a full run)."""
        return self.outcome in ("collapsed", "diverged")


@dataclass(frozen=True)
class Bracket:
    """The bracket's runs, the initial loss they are judged against, and the step it suggests."""

    runs: tuple[BracketRun, ...]
    initial_loss: float
    steps: int
    seconds: float

    @property
    def best(self) -> BracketRun:
        """The run with the lowest score among those that trained (the first run when none did): the last run
        the climb kept, since each kept run scores clearly below the one before it."""
        trained = [r for r in self.runs if r.outcome == "trains"]
        return min(trained, key=lambda r: r.score) if trained else self.runs[0]

    def describe(self) -> str:
        """One line: each run's step, score and outcome, and the choice."""
        runs = ", ".join(f"{r.factor:g}x = {r.alpha:.4g}: {r.score:.4g} ({r.outcome})" for r in self.runs)
        return (
            f"bracket of {self.steps}-step runs from the initialisation (loss {self.initial_loss:.4g}): {runs}; "
            f"best {self.best.factor:g}x the seed ({self.seconds:.2f} s)"
        )

    def to_attrs(self) -> dict[str, Any]:
        """JSON-safe attributes."""
        return {
            "runs": [vars(r) | {"score": r.score if math.isfinite(r.score) else None} for r in self.runs],
            "initial_loss": self.initial_loss,
            "steps": self.steps,
            "seconds": self.seconds,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Bracket:
        runs = tuple(
            BracketRun(r["factor"], r["alpha"], math.inf if r["score"] is None else r["score"], r["outcome"])
            for r in attrs["runs"]
        )
        return cls(runs, attrs["initial_loss"], attrs["steps"], attrs["seconds"])
