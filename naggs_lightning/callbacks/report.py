"""The words and the table the monitor warns with (rank zero only)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from rich import box
from rich.console import Console
from rich.table import Table

from naggs_lightning.callbacks.groups import GroupStability
from naggs_lightning.curvature import BatchProbe

__all__ = ["METRIC_PREFIX", "StabilityWarning", "divergence_table", "info", "log_probe", "warn"]

#: What every key the monitor logs starts with (``stability/lambda_max``, ...).
METRIC_PREFIX = "stability/"

_PREFIX = "SpectralStabilityMonitor: "


class StabilityWarning(UserWarning):
    """Training diverges: the curvature is well past the stability edge together with a divergence sign, or the loss
    is not finite (see :class:`~naggs_lightning.callbacks.SpectralStabilityMonitor`)."""


def warn(message: str) -> None:
    """A :class:`StabilityWarning` on rank zero."""
    rank_zero_warn(_PREFIX + message, category=StabilityWarning)


def info(message: str) -> None:
    """Information (reaching the edge, a lifted cap, a spike) on rank zero, through Lightning's logger."""
    rank_zero_info(_PREFIX + message)


def divergence_table(rows: Sequence[GroupStability], lam: float, caps: dict[str, float], on_unstable: str) -> str:
    """One row per param group: lr, edge, lambda_max, edge ratio, stable lr and what the monitor did."""

    def action(row: GroupStability) -> str:
        if row.metrics.get("edge_ratio", 0.0) < 1.0:
            return "-"
        if row.key in caps:
            return f"lr capped at {caps[row.key]:.4g}"
        return "stop" if on_unstable == "stop" else "none (warn)"

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("group", "optimizer", "lr", "edge (curvature)", "lambda_max", "ratio", "stable lr", "action"):
        table.add_column(column, justify="left" if column in ("group", "optimizer", "action") else "right")
    for row in rows:
        table.add_row(
            row.suffix.lstrip("/") or "all",
            type(row.optimizer).__name__,
            f"{row.metrics['lr']:.4g}",
            _fmt(row.edge),
            f"{lam:.4g}",
            _fmt(row.metrics.get("edge_ratio", math.nan)),
            _fmt(row.limit),
            action(row),
        )
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)
    console.print(table)
    return console.file.getvalue().rstrip()


def log_probe(
    trainer: pl.Trainer, probe: BatchProbe, cosine: float | None, rows: Sequence[GroupStability]
) -> dict[str, float]:
    """Log a probe's finite numbers to every logger and ``trainer.callback_metrics``; return them."""
    metrics = {
        "lambda_max": probe.eigen.eigenvalue,
        "hvps": float(probe.eigen.n_matvecs),
        "batch_sharpness": probe.batch_sharpness,
    }
    if cosine is not None:
        metrics["update_cosine"] = cosine
    for row in rows:
        metrics.update({f"{name}{row.suffix}": value for name, value in row.metrics.items()})
    metrics = {METRIC_PREFIX + k: v for k, v in metrics.items()}
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    device = trainer.strategy.root_device
    trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in metrics.items()})
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
    return metrics


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("inf" if x > 0 else "-")
