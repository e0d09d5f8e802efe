"""The options of a study: one dataclass, validated once, from which ``naggs-tune``'s flags are generated.

:class:`TuneOptions` holds every option's default and help text. :func:`naggs_lightning.tune.run`
takes them as keyword arguments (or a ``TuneOptions``), and :mod:`naggs_lightning.tune.cli` builds
its command line from :func:`dataclasses.fields` (flag ``--n-trials`` for field ``n_trials``, type and
choices from the annotation, default and help from the field), so a default is written here only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from naggs_lightning.lr.defaults import BRACKET_STEPS, CURVATURE_BATCHES, WARMUP_STEPS
from naggs_lightning.tune.errors import TuneError

__all__ = [
    "TuneOptions",
    "PRUNERS",
    "SAMPLERS",
    "DIRECTIONS",
    "DEFAULT_STORAGE",
    "default_study_name",
    "default_output_dir",
]

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
#: An SQLite file in the working directory: nothing to start, survives crashes, resumable.
DEFAULT_STORAGE = "sqlite:///naggs-tune.db"


def default_study_name(config: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping] | None) -> str:
    """The study name when none is given: the last config file's name without extension, else ``naggs``."""
    sources = [config] if isinstance(config, (str, os.PathLike, Mapping)) else list(config or [])
    files = [Path(s) for s in sources if isinstance(s, (str, os.PathLike))]
    return files[-1].stem if files else "naggs"


def default_output_dir(study_name: str) -> Path:
    """Where a study writes when ``output_dir`` is not given: ``naggs-tune-out/<study-name>``."""
    return Path("naggs-tune-out") / study_name


def _option(default: Any, help: str, *, flag: str | None = None, cli_type: Any = None) -> Any:
    """A field with its command-line help (``flag`` replaces the generated ``--name``; a flag starting with
    ``--no-`` or naming a boolean off-switch stores ``not default``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli_type": cli_type})


@dataclass(frozen=True)
class TuneOptions:
    """How a study runs: what it optimises, how many trials, where it is stored, how it is seeded.

    Every value is checked when the object is made (:class:`TuneError` naming the option and its
    allowed range); nothing later re-checks them.
    """

    metric: str = _option("val_acc", "validation metric to optimise, as the model logs it")
    direction: Optional[str] = _option(
        None,
        "maximize or minimize; default: minimize when the metric name contains 'loss' or 'err', else maximize",
        cli_type=Optional[Literal["maximize", "minimize"]],
    )
    n_trials: int = _option(30, "finished trials the study should hold, over all workers and re-runs")
    timeout: Optional[float] = _option(None, "seconds after which this process starts no new trial")
    n_jobs: int = _option(1, "trials in parallel in this process (threads)")
    storage: Optional[str] = _option(
        DEFAULT_STORAGE, "Optuna RDB URL; several processes may share it (None: in memory, Python API only)"
    )
    study_name: Optional[str] = _option(
        None, "re-running with the same name resumes the study; default: the last --config file's name"
    )
    sampler: Union[str, BaseSampler] = _option("tpe", "the Optuna sampler", cli_type=Literal["tpe", "random"])
    sampler_seed: Optional[int] = _option(None, "seed of the sampler (reproducible single-process studies)")
    pruner: Union[str, BasePruner] = _option(
        "median",
        "prunes on the metric reported after every validation",
        cli_type=Literal["median", "hyperband", "none"],
    )
    seed: bool = _option(True, "do not seed the study from the theory", flag="--no-seed")
    safety: float = _option(0.9, "seed alpha = safety x the theory's step, in (0, 1]")
    seed_window: float = _option(
        4.0,
        "search alpha in [1/W, W] x the theory's step for each trial's mu (gamma relaxes to mu), cut to alpha's range",
    )
    seed_trials: int = _option(
        4,
        "seeded trials to enqueue around the best step the bracket found (b), at the configured mu: b/2, b, b/4, 2b, "
        "...; NAGGS never below the theory's step: b, b/2, 2b, b/4, ... where the bracket kept that step",
    )
    warmup_steps: int = _option(
        WARMUP_STEPS,
        "steps of the seed's warm-up on a copy of the model, after which the curvature is read; 0 reads it at "
        "initialisation",
    )
    curvature_batches: int = _option(
        CURVATURE_BATCHES,
        "training batches probed after the warm-up; the seed uses the largest top Hessian eigenvalue among them",
    )
    bracket_steps: int = _option(
        BRACKET_STEPS,
        "steps of each short run that brackets the theory's step (1, 2, 4x it) to find where the model trains "
        "best; 0 seeds at the theory's step itself",
    )
    heartbeat_interval: int = _option(
        10, "seconds between heartbeats of a running trial; a trial silent twice as long is failed and re-queued"
    )
    output_dir: Optional[Path] = _option(
        None,
        "where best.yaml, best_params.yaml, the plots and the trials' logs and checkpoints (trials/) go; default: "
        "naggs-tune-out/<study-name> (Python API: no files but the trials' logs and checkpoints there)",
    )
    verbose: bool = _option(True, "no progress, seed or table output", flag="--quiet")

    def __post_init__(self) -> None:
        counts = ("n_trials", "n_jobs", "seed_trials", "curvature_batches", "heartbeat_interval")
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TuneError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "bracket_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TuneError(f"{name} must be an integer >= 0, got {value!r}")
        if 0 < self.bracket_steps < 4:
            raise TuneError(f"bracket_steps must be 0 (no bracket) or >= 4, got {self.bracket_steps!r}")
        if not isinstance(self.metric, str) or not self.metric:
            raise TuneError(f"metric must be a non-empty string, got {self.metric!r}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise TuneError(f"direction must be 'maximize' or 'minimize' (or None), got {self.direction!r}")
        if self.timeout is not None and not (
            isinstance(self.timeout, (int, float)) and not isinstance(self.timeout, bool) and self.timeout > 0
        ):
            raise TuneError(f"timeout must be > 0 seconds (or None), got {self.timeout!r}")
        if self.study_name is not None and (not isinstance(self.study_name, str) or not self.study_name.strip()):
            raise TuneError(f"study_name must be a non-empty string, got {self.study_name!r}")
        if not isinstance(self.sampler, BaseSampler) and self.sampler not in SAMPLERS:
            raise TuneError(f"sampler must be one of {SAMPLERS} (or an optuna sampler), got {self.sampler!r}")
        if not isinstance(self.pruner, BasePruner) and self.pruner not in PRUNERS:
            raise TuneError(f"pruner must be one of {PRUNERS} (or an optuna pruner), got {self.pruner!r}")
        if not (isinstance(self.safety, (int, float)) and 0.0 < self.safety <= 1.0):
            raise TuneError(f"safety must be in (0, 1], got {self.safety!r}")
        if not (isinstance(self.seed_window, (int, float)) and 1.0 < self.seed_window < math.inf):
            raise TuneError(f"seed_window must be finite and > 1, got {self.seed_window!r}")

    @property
    def resolved_direction(self) -> str:
        """:attr:`direction`, or the one the metric's name implies."""
        if self.direction is not None:
            return self.direction
        return "minimize" if ("loss" in self.metric or "err" in self.metric) else "maximize"
