"""Where the bracket climbs above the theory's step, does its best step train the better model?

The bracket (:mod:`naggs_lightning.lr.bracket`) scores 40-step runs at 1, 2 and 4 times the theory's step and keeps
the largest that scores clearly lower; the seed is then a fraction of it
(:data:`naggs_lightning.lr.measure.SEED_FRACTION`; for NAGGS never below the theory's step). This benchmark asks the
full run. For each network and each probe seed ``p`` it builds the model as naggs-tune does (its LightningCLI config,
``seed_everything: p``), runs :func:`naggs_lightning.suggest_lr` at the model's NAGGS, and where the bracket's best
is above the theory's step trains the full run at the bracket's best, at the seed and at the theory's step, each
from training seeds ``p``, ``p + 10`` and ``p + 20`` (``seed_everything``), and prints the final val_acc.

Networks: the panel of user models (``benchmarks/panel.py``, NAGGS at its defaults) and the three sharpening
networks of ``benchmarks/tuner_seeding.py`` (mu = gamma = 0.1). About 5 minutes on the 2-core machine::

    python benchmarks/seed_fraction.py
    python benchmarks/seed_fraction.py --networks cnn digits_cnn --probe-seeds 0 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import panel
import tuner_seeding

SHARPENING = ("digits_cnn", "signal_cnn", "transformer")
NETWORKS = (*panel.PANEL, *panel.HELD_OUT, *(f"sharpening:{name}" for name in SHARPENING))
#: Training seeds of the full runs, as offsets from the probe seed.
OFFSETS = (0, 10, 20)


def _config(network: str, seed: int) -> dict[str, Any]:
    """The network's LightningCLI config, as naggs-tune trains it, from ``seed``."""
    if network.startswith("sharpening:"):
        config = tuner_seeding._task_config(network.split(":", 1)[1], 1.0)
    else:
        config = panel._config({**panel.PANEL, **panel.HELD_OUT}[network], "NAGGS")
    config["seed_everything"] = seed
    config["trainer"].update(
        enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False
    )
    return config


def _cli(config: dict[str, Any]) -> Any:
    from naggs_lightning.lightning_cli import build_cli

    return build_cli(config, run=False, save_config_callback=None)


def probe(network: str, seed: int) -> tuple[str, int, dict[str, float], str]:
    """The bracket at ``seed``'s initialisation: the steps it leads to (theory's, best, seed) and its line."""
    from naggs_lightning import suggest_lr

    panel._quiet_process()
    cli = _cli(_config(network, seed))
    found = suggest_lr(cli.model, cli.datamodule)
    best = found.bracket.best
    steps = {"theory": found.bracket.runs[0].alpha, "best": best.alpha, "seed": found.alpha}
    return network, seed, steps, f"{best.factor:g}x: " + found.bracket.describe()


def fit(network: str, lr: float, seed: int) -> float:
    """The final val_acc of a full run at ``lr`` from ``seed``."""
    panel._quiet_process()
    config = _config(network, seed)
    config["optimizer"].setdefault("init_args", {})["lr"] = lr
    cli = _cli(config)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return float(cli.trainer.callback_metrics["val_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--probe-seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    panel._quiet_process()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        probes = list(pool.map(probe, *zip(*[(n, s) for n in args.networks for s in args.probe_seeds])))
        climbed = [(n, s, steps) for n, s, steps, _ in probes if steps["best"] > steps["theory"] * (1 + 1e-9)]
        kinds = ("best", "seed", "theory")
        # the seed is the theory's step itself where the bracket's best is 2x: one run serves both
        runs = sorted({(n, steps[k], s + o) for n, s, steps in climbed for k in kinds for o in OFFSETS})
        scores = dict(zip(runs, pool.map(fit, *zip(*runs)))) if runs else {}
    print("== the bracket at each probe seed's initialisation")
    for network, seed, _, line in probes:
        print(f"  {network:<24} {seed}  {line}")
    print(f"== where it climbed: final val_acc from training seeds p + {OFFSETS} (median), at the bracket's best step,")
    print("   at the seed (SEED_FRACTION of it, for NAGGS never below the theory's step) and at the theory's step")
    medians = {k: [] for k in kinds}
    for network, seed, steps in climbed:
        cells = []
        for kind in kinds:
            values = [scores[(network, steps[kind], seed + o)] for o in OFFSETS]
            medians[kind].append(statistics.median(values))
            shown = " ".join(f"{v:.3f}" for v in values)
            cells.append(f"{kind} {steps[kind]:.4g}: {shown} ({medians[kind][-1]:.3f})")
        print(f"  {network:<24} {seed}  " + " | ".join(cells), flush=True)
    if climbed:
        means = ", ".join(f"{k} {statistics.fmean(medians[k]):.3f}" for k in kinds)
        wins = sum(s > b for s, b in zip(medians["seed"], medians["best"]))
        print(f"  mean of the medians: {means}; the seed above the bracket's best in {wins} of {len(climbed)}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    main()
