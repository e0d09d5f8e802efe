"""Train every recipe under recipes/ as shipped (fit, then test) and print one table of test metrics and times.

    python benchmarks/recipes.py                       # all recipes
    python benchmarks/recipes.py --filter digits_mlp   # recipes whose name contains the string
    python benchmarks/recipes.py --threads 1           # torch intra-op threads (1 is fastest for these sizes)

Loggers and checkpoints are switched off (``--trainer.logger false``); everything else is the recipe's own.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from naggs_lightning.lightning_cli import build_cli

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def run(recipe: Path) -> tuple[str, dict[str, float], float]:
    args = [
        "--config",
        str(recipe),
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli = build_cli(args, run=False, save_config_callback=None)
        cli.trainer.fit(cli.model, cli.datamodule)
        result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    optimizer = type(cli.trainer.optimizers[0]).__name__
    return optimizer, result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter", default="", help="only recipes whose file name contains this string")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    table = Table(title=f"recipes as shipped (torch {torch.__version__}, {opts.threads} thread(s))")
    for column in ("recipe", "optimizer", "test_acc", "test_loss", "seconds"):
        table.add_column(column, justify="left" if column in ("recipe", "optimizer") else "right")
    for recipe in sorted(RECIPES.glob("*.yaml")):
        if opts.filter not in recipe.stem:
            continue
        optimizer, result, seconds = run(recipe)
        acc = result.get("test_acc")
        table.add_row(
            recipe.stem,
            optimizer,
            "-" if acc is None else f"{100 * acc:.2f} %",
            f"{result['test_loss']:.3g}",
            f"{seconds:.1f}",
        )
        print(f"{recipe.stem}: {optimizer} {result} {seconds:.1f}s", flush=True)
    Console().print(table)


if __name__ == "__main__":
    main()
