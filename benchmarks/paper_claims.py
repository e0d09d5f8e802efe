"""Two claims of the NAG-GS paper (Leplat et al., arXiv 2209.14937), re-measured on data that ship with scikit-learn.

(a) Logistic regression at the paper's setting (alpha 0.5, mu 1, gamma 1, batch 128, 10 epochs) against SGD with
    momentum 0.9 at the same lr 0.5. The paper reports on MNIST 91.76 % (NAG-GS) against 88.67 % (SGD); MNIST
    needs a download, so scikit-learn's 8x8 digits (1797 images, 10 classes) stand in for it here: the numbers
    are not comparable with the paper's, only the comparison is.
(b) Learning-rate robustness on the digits CNN: sweep lr over a log grid for NAG-GS (mu 1, gamma 1),
    SGD with Nesterov momentum 0.9 and AdamW; for each optimizer report the width (max lr / min lr) of the
    contiguous grid range around its best lr whose test accuracy is within ``--tolerance`` (relative; 1 % and
    5 % by default) of its best, and the ratio of NAG-GS's width to the others'. A range that reaches the end
    of the grid is a lower bound (printed with ">=").

Every run goes through :func:`naggs_lightning.lightning_cli.build_cli`, as ``naggs-train`` would. The data split is
fixed (seed 0); ``--seeds`` vary the initialisation and the batch order.

    python benchmarks/paper_claims.py                     # both parts: about 2.5 min of CPU time on one core
    python benchmarks/paper_claims.py --part b --cnn-epochs 10 --grid 1e-4 1e2 2 --sweep-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from naggs_lightning.lightning_cli import build_cli

TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}

OPTIMIZERS = {
    "NAG-GS": ("naggs_lightning.NAGGS", {"mu": 1.0, "gamma": 1.0}),
    "SGD-Nesterov": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": True}),
    "AdamW": ("torch.optim.AdamW", {}),
}


def train_and_test(model: dict, optimizer: tuple[str, dict], epochs: int, seed: int, batch_size: int = 128) -> float:
    """Train on the digits with this optimizer and return the test accuracy (NaN losses give chance accuracy)."""
    class_path, init_args = optimizer
    config = {
        "seed_everything": seed,
        "model": model,
        "data": {
            "class_path": "naggs_lightning.tasks.DigitsDataModule",
            "init_args": {"batch_size": batch_size, "seed": 0},
        },
        "optimizer": {"class_path": class_path, "init_args": init_args},
        "trainer": {**TRAINER, "max_epochs": epochs},
    }
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli = build_cli(config, run=False, save_config_callback=None)
        cli.trainer.fit(cli.model, cli.datamodule)
        result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    return float(result["test_acc"])


def part_a(seeds: Sequence[int], epochs: int) -> None:
    print(f"(a) logistic regression on sklearn digits (stand-in for MNIST), batch 128, {epochs} epochs")
    print(f"    test accuracy over seeds {list(seeds)}:")
    model = {"class_path": "naggs_lightning.tasks.LogisticRegression"}
    runs = {
        "NAG-GS (alpha 0.5, mu 1, gamma 1)": ("naggs_lightning.NAGGS", {"lr": 0.5, "mu": 1.0, "gamma": 1.0}),
        "SGD (lr 0.5, momentum 0.9)": ("torch.optim.SGD", {"lr": 0.5, "momentum": 0.9}),
    }
    for name, optimizer in runs.items():
        accs = [100 * train_and_test(model, optimizer, epochs, seed) for seed in seeds]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        mean = statistics.mean(accs)
        print(f"    {name:36s} {mean:6.2f} % +- {spread:.2f}  (min {min(accs):.2f}, max {max(accs):.2f})")
    print("    paper, MNIST: NAG-GS 91.76 %, SGD momentum 0.9 at lr 0.5 88.67 %")


def robust_range(lrs: np.ndarray, accs: np.ndarray, tolerance: float) -> tuple[float, float, bool]:
    """(min lr, max lr, touches the grid edge) of the contiguous run around the best lr within tolerance."""
    best = int(np.argmax(accs))
    ok = accs >= (1.0 - tolerance) * accs[best]
    lo = hi = best
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < len(lrs) - 1 and ok[hi + 1]:
        hi += 1
    return float(lrs[lo]), float(lrs[hi]), lo == 0 or hi == len(lrs) - 1


def part_b(grid: np.ndarray, seeds: Sequence[int], epochs: int, tolerances: Sequence[float]) -> None:
    print(f"(b) lr robustness, digits CNN, {epochs} epochs, batch 128")
    print(f"    test accuracy (%) averaged over seeds {list(seeds)}:")
    model = {"class_path": "naggs_lightning.tasks.DigitsCNN"}
    print("    lr          " + "".join(f"{lr:>8.3g}" for lr in grid))
    accs = {}
    for name, (class_path, extra) in OPTIMIZERS.items():
        accs[name] = np.array(
            [
                statistics.mean(
                    train_and_test(model, (class_path, {"lr": float(lr), **extra}), epochs, s) for s in seeds
                )
                for lr in grid
            ]
        )
        print(f"    {name:12s}" + "".join(f"{100 * a:8.2f}" for a in accs[name]), flush=True)
    for name, acc in accs.items():
        trains = grid[acc >= 0.5]
        reach = f"for lr up to {trains.max():.3g}" if trains.size else "for no lr"
        print(f"    {name:12s} reaches 50 % accuracy {reach} (grid up to {grid[-1]:.3g})")
    for tolerance in tolerances:
        print(f"    within {100 * tolerance:g} % of the best accuracy:")
        widths = {}
        for name, acc in accs.items():
            lo, hi, at_edge = robust_range(grid, acc, tolerance)
            widths[name] = (hi / lo, at_edge)
            best = int(np.argmax(acc))
            print(
                f"        {name:12s} best {100 * acc[best]:.2f} % at lr {grid[best]:.3g}; lr in [{lo:.3g}, {hi:.3g}]: "
                f"width {'>=' if at_edge else ''}{hi / lo:.3g}"
            )
        naggs_width, naggs_edge = widths["NAG-GS"]
        for name, (width, at_edge) in widths.items():
            if name != "NAG-GS":
                # A width cut by the end of the grid is a lower bound, and so bounds the ratio on one side.
                qualifier = {(True, False): ">=", (False, True): "<=", (True, True): "~"}.get((naggs_edge, at_edge), "")
                print(f"        width ratio NAG-GS / {name}: {qualifier}{naggs_width / width:.3g}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of part (a)")
    parser.add_argument("--logreg-epochs", type=int, default=10, help="epochs of part (a) (the paper: 10)")
    parser.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1], help="seeds averaged per lr in part (b)")
    parser.add_argument("--cnn-epochs", type=int, default=5, help="epochs per run of part (b)")
    parser.add_argument(
        "--grid", type=float, nargs=3, default=[1e-3, 1e2, 4], metavar=("MIN", "MAX", "PER_DECADE"), help="(b) lr grid"
    )
    parser.add_argument(
        "--tolerance", type=float, nargs="+", default=[0.01, 0.05], help="relative accuracy losses that still count"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these sizes)")
    opts = parser.parse_args(argv)
    if not all(0.0 < t < 1.0 for t in opts.tolerance):
        parser.error(f"--tolerance values must be in (0, 1), got {opts.tolerance}")
    lo, hi, per_decade = opts.grid
    if not 0.0 < lo < hi or per_decade < 1:
        parser.error(f"--grid needs 0 < MIN < MAX and PER_DECADE >= 1, got {opts.grid}")
    grid = np.logspace(math.log10(lo), math.log10(hi), round(math.log10(hi / lo) * per_decade) + 1)

    torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    print("command: python " + " ".join(sys.argv))
    print(f"torch {torch.__version__}, {opts.threads} thread(s)")
    start = time.perf_counter()
    if opts.part in ("a", "all"):
        part_a(opts.seeds, opts.logreg_epochs)
    if opts.part in ("b", "all"):
        part_b(grid, opts.sweep_seeds, opts.cnn_epochs, opts.tolerance)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
