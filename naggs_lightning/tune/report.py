"""What a study shows and leaves behind: rich progress, the table of top trials, best.yaml, plots."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from naggs_lightning.lr.seed import TheorySeed
from naggs_lightning.tune.ceiling import capped
from naggs_lightning.tune.config import dump_config
from naggs_lightning.tune.keys import (
    ALPHA_RATIO,
    COLLAPSED,
    PRUNED_REASON,
    SEEDED,
    STUDY_METRIC,
    STUDY_SEED,
)

if TYPE_CHECKING:
    from naggs_lightning.tune.space import SearchSpace

__all__ = [
    "Reporter",
    "results_table",
    "write_best",
    "write_plots",
    "history_figure",
    "alpha_figure",
    "importances_figure",
]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or ``None`` while there is none."""
    return study.best_trial if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else None


class Reporter:
    """Live progress of a study: finished trials k/N over all workers, best so far, the seed.

    Used as a context manager around the workers; :meth:`trial_finished` is an Optuna callback
    (``callbacks=[reporter.trial_finished]``) and prints one line per trial this process ran.
    Thread-safe (``n_jobs`` > 1).
    """

    def __init__(
        self, console: Console, space: SearchSpace, n_trials: int, metric: str, *, enabled: bool = True
    ) -> None:
        self.console = console
        self.space = space
        self.metric = metric
        self.enabled = enabled
        self._lock = threading.Lock()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("trial"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("study", total=n_trials, best="")

    def __enter__(self) -> Reporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def header(self, study: optuna.Study, storage: str, seed: TheorySeed | None, note: str) -> None:
        if not self.enabled:
            return
        self.console.print(f"[bold]study[/] {study.study_name} on {storage}: {note}")
        if seed is not None:
            self.console.print(f"[bold]theory seed[/] {seed.describe()}")
        for name, text in self.space.describe():
            self.console.print(f"  {name}: {text}")

    def _ceiling_note(self, study: optuna.Study) -> str:
        """Where the alpha/seed range now ends, if collapsed trials cut it (:mod:`~naggs_lightning.tune.ceiling`)."""
        dist = self.space.distributions.get(ALPHA_RATIO)
        if not isinstance(dist, FloatDistribution):
            return ""
        top = capped(dist, study).high
        return f"; later trials search alpha/seed up to {top:.3g}" if top < dist.high else ""

    def refresh(self, study: optuna.Study) -> None:
        finished = len(study.get_trials(deepcopy=False, states=_FINISHED))
        best = best_trial(study)
        text = "" if best is None else f"best {self.metric} = {best.value:.5g} (trial {best.number})"
        self._progress.update(self._task, completed=finished, best=text)

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            if self.enabled:
                params = ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in self.space.values(trial).items())
                tag = " [cyan](theory seed)[/]" if trial.user_attrs.get(SEEDED) else ""
                if trial.state == TrialState.COMPLETE:
                    outcome = f"{self.metric} = {trial.value:.5g}"
                elif trial.state == TrialState.PRUNED:
                    outcome = f"[yellow]{trial.user_attrs.get(PRUNED_REASON, 'pruned')}[/]"
                else:
                    outcome = "[red]failed[/]"
                if trial.user_attrs.get(COLLAPSED):
                    outcome += f" [yellow](the loss collapsed{self._ceiling_note(study)})[/]"
                self._progress.console.print(f"trial {trial.number}{tag}: {outcome}  ({params})")
            self.refresh(study)


def results_table(study: optuna.Study, space: SearchSpace, metric: str, *, top: int = 10) -> Table:
    """The ``top`` complete trials, best first, with their parameters and how many were pruned."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    values = {t.number: space.values(t) for t in complete[:top]}
    names = sorted({k for v in values.values() for k in v})
    counts = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    table = Table(
        title=f"study {study.study_name}: top {min(top, len(complete))} of {len(complete)} complete trials",
        caption=f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed, "
        f"{counts[TrialState.RUNNING]} running",
    )
    table.add_column("trial", justify="right")
    table.add_column(metric, justify="right")
    for name in names:
        table.add_column(_short(name), justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("note")
    for t in complete[:top]:
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else math.nan
        )
        note = "theory seed" if t.user_attrs.get(SEEDED) else ""
        table.add_row(
            str(t.number), f"{t.value:.5g}", *(_fmt(values[t.number].get(n, "")) for n in names), f"{seconds:.1f}", note
        )
    return table


BestConfig = Callable[[Mapping[str, Any]], "tuple[dict[str, Any] | None, str]"]


def write_best(
    study: optuna.Study, space: SearchSpace, out_dir: Path, best_config: BestConfig | None = None
) -> tuple[list[Path], list[str]]:
    """Write the best trial as ``best_params.yaml`` and, when ``best_config`` can make one, a runnable ``best.yaml``.

    ``best_config(values)`` (the trial builder's :meth:`~naggs_lightning.tune.objective.TrialBuilder.best_config`)
    returns the LightningCLI config for the best values (the recipe with them set in config mode; the
    factory's classes and hparams in factory mode), or ``None`` and why not:
    ``naggs-train fit --config <out_dir>/best.yaml``, run where the study ran, retrains the winner (its header
    says so). Nothing is written while no trial
    has completed. Returns the files written and notes (why best.yaml was not written).
    """
    best = best_trial(study)
    if best is None:
        return [], []
    values = {**space.values(best), **space.fixed}
    header = (
        f"# naggs-tune study {study.study_name!r}: best of {len(study.get_trials(deepcopy=False, states=_FINISHED))} "
        f"finished trials is trial {best.number}, {study.user_attrs.get(STUDY_METRIC, 'value')} = {best.value:.6g}\n"
    )
    written = [out_dir / "best_params.yaml"]
    dump_config({"value": best.value, "trial": best.number, "params": values}, written[0], header)
    if best_config is None:
        return written, []
    config, note = best_config(values)
    if config is None:
        return written, [f"best.yaml not written: {note}"]
    written.append(out_dir / "best.yaml")
    where = "# train it from the folder the study ran in (class paths and relative paths resolve there):\n"
    dump_config(config, written[1], f"{header}# {note}\n{where}#   naggs-train fit --config {written[1]}\n")
    return written, []


def write_plots(study: optuna.Study, space: SearchSpace, out_dir: Path, metric: str) -> tuple[list[Path], list[str]]:
    """PNG plots: optimisation history, alpha against the metric, parameter importances.

    Returns the files written and notes on plots that were skipped (too few complete trials for importances).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _save(history_figure(study, metric), out_dir / "history.png"),
        _save(alpha_figure(study, space, metric), out_dir / "alpha.png"),
    ]
    importances, note = importances_figure(study, space)
    if importances is None:
        return written, [f"importance plot skipped: {note}"]
    return [*written, _save(importances, out_dir / "importances.png")], []


def _figure(height: float = 4.0) -> tuple[Any, Any]:
    # The object-oriented API: no pyplot state, no backend switch in the caller's process.
    fig = Figure(figsize=(6.4, height))
    return fig, fig.subplots()


def history_figure(study: optuna.Study, metric: str) -> Any:
    """The metric of every complete trial in order, the best so far, the seeded trials and the pruned ones."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    fig, ax = _figure()
    if complete:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax.scatter(xs, ys, s=18, label="complete trial")
        best, running = [], None
        for y in ys:
            running = y if running is None else (max(running, y) if maximize else min(running, y))
            best.append(running)
        ax.step(xs, best, where="post", color="C3", label="best so far")
        seeded = [t for t in complete if t.user_attrs.get(SEEDED)]
        if seeded:
            ax.scatter(
                [t.number for t in seeded],
                [t.value for t in seeded],
                s=60,
                marker="*",
                color="C2",
                label="theory seed",
                zorder=3,
            )
    pruned = [
        (t.number, list(t.intermediate_values.values())[-1])
        for t in trials
        if t.state == TrialState.PRUNED
        and t.intermediate_values
        and math.isfinite(list(t.intermediate_values.values())[-1])
    ]
    if pruned:
        ax.scatter(
            [n for n, _ in pruned],
            [v for _, v in pruned],
            s=14,
            marker="x",
            color="0.5",
            label="pruned (last reported)",
        )
    _log_if_wide(ax, [t.value for t in complete] + [v for _, v in pruned])
    ax.set(xlabel="trial", ylabel=metric, title=f"{study.study_name}: optimisation history")
    ax.legend(fontsize="small")
    return fig


def alpha_figure(study: optuna.Study, space: SearchSpace, metric: str) -> Any:
    """The metric against the alpha each complete trial trained with, with the seed and alpha_crit marked (the edge
    for the curvature the seed was computed from: after the warm-up, or at initialisation with ``warmup_steps=0``)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    seed = TheorySeed.from_attrs(study.user_attrs[STUDY_SEED]) if STUDY_SEED in study.user_attrs else None
    fig, ax = _figure()
    points = [(space.values(t).get(space.alpha), t.value) for t in complete]
    points = [(a, v) for a, v in points if a is not None]
    ax.scatter([a for a, _ in points], [v for _, v in points], s=18, label="complete trial")
    marks = [a for a, _ in points]
    if seed is not None:
        ax.axvline(seed.alpha, color="C2", linestyle="--", label=f"seed {seed.alpha:.3g} (mu = {seed.mu:.3g})")
        marks.append(seed.alpha)
        if math.isfinite(seed.alpha_crit):
            label = f"alpha_crit {seed.alpha_crit:.3g} ({_measured_when(seed)})"
            ax.axvline(seed.alpha_crit, color="C3", linestyle=":", label=label)
            marks.append(seed.alpha_crit)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, marks)
    _log_if_wide(ax, [v for _, v in points])
    ax.set(xlabel=f"alpha ({_short(space.alpha)})", ylabel=metric, title=f"{study.study_name}: alpha against {metric}")
    ax.legend(fontsize="small")
    return fig


def _measured_when(seed: TheorySeed) -> str:
    """When the curvature behind ``seed`` was read: after the warm-up's steps, or at initialisation."""
    if seed.warmup is None or seed.warmup.steps == 0:
        return "at init"
    return f"after a {seed.warmup.steps}-step warm-up"


def importances_figure(study: optuna.Study, space: SearchSpace) -> tuple[Any, str]:
    """fANOVA importances of the searched parameters (alpha named as alpha), or ``None`` and why not."""
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return None, str(exc)
    if not importances:
        return None, "no parameter varies across complete trials"
    fig, ax = _figure(1.2 + 0.4 * len(importances))
    names = list(importances)[::-1]
    ax.barh([_label(n, space) for n in names], [importances[n] for n in names])
    ax.set(xlabel="importance (fANOVA)", title=f"{study.study_name}: parameter importances")
    return fig, ""


def _label(name: str, space: SearchSpace) -> str:
    """A parameter's name on a plot: alpha's ratio to the seed is shown as alpha, the way it was searched."""
    if name == ALPHA_RATIO:
        return f"{_short(space.alpha)} (alpha, x theory seed)"
    return _short(name)


def _log_ticks(axis: Any, values: list[float]) -> None:
    """Readable ticks on a log axis over the data.

    Over less than three decades Matplotlib labels the minor ticks of a log axis too, in scientific
    notation, and the labels overwrite each other (alpha between 0.3 and 0.9, or 0.3 and 8). Such an
    axis gets five plain labels spread geometrically over the data instead; a wider one keeps the decades
    and loses the minor labels.
    """
    axis.set_minor_formatter(NullFormatter())
    values = [v for v in values if v > 0 and math.isfinite(v)]
    if not values or max(values) / min(values) >= 1000:
        return
    lo, hi = min(values), max(values)
    if hi / lo < 1.05:
        lo, hi = lo / 1.05, hi * 1.05
    ticks = sorted({float(f"{lo * (hi / lo) ** (k / 4):.2g}") for k in range(5)})
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.2g}"))


def _log_if_wide(ax: Any, values: list[float]) -> None:
    # Losses of diverging trials span many decades: a log axis keeps the good ones apart.
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
