"""A fast collapse under SpectralStabilityMonitor at its defaults: when it is flagged, what cap_lr saves, and the cost.

Part 1: three networks of ``naggs_lightning.tasks`` trained with NAG-GS (mu = gamma = 0.1) at their best step and
at 2x and 4x it, ``--steps`` steps each: the step of the first StabilityWarning (``-``: none) under ``warn``, and
the test accuracy without a monitor, with ``warn`` and with ``cap_lr``. Part 2: the overhead at the defaults on a
700-step and a 3000-step run of the digits MLP in its stable range: the time inside the callback's hooks over the
rest of the run (``benchmarks/monitor_overhead.py``'s in-run figure; A/B timings on a shared machine are noise).

    python benchmarks/monitor_collapse.py                 # both parts
    python benchmarks/monitor_collapse.py --part flag --steps 300
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import warnings

import lightning.pytorch as pl
import torch
from _trainer import quiet_trainer
from monitor_overhead import TimedMonitor
from monitor_overhead import run as overhead_run

from naggs_lightning.callbacks import SpectralStabilityMonitor, StabilityWarning
from naggs_lightning.tasks import MLP, DeepDigitsCNN, DigitsDataModule, SignalCNN, SignalDataModule

# name: (model at lr, data, the best step: the best of 0.1, 0.2, 0.4 over 300 steps without a monitor)
NETWORKS = {
    "signal-cnn": (lambda lr: SignalCNN(lr=lr, mu=0.1, gamma=0.1), SignalDataModule, 0.2),
    "deep-digits-cnn": (
        lambda lr: DeepDigitsCNN(lr=lr, mu=0.1, gamma=0.1),
        lambda: DigitsDataModule(batch_size=64),
        0.1,
    ),
    "digits-mlp": (
        lambda lr: MLP(hidden_sizes=(128,), lr=lr, mu=0.1, gamma=0.1),
        lambda: DigitsDataModule(batch_size=64),
        0.4,
    ),
}


def flagged(network: str, lr: float, steps: int, on_unstable: str | None, seed: int = 0) -> tuple[float, int | None]:
    """Test accuracy and the step of the first StabilityWarning (``None``: none) of one run."""
    make, data, _ = NETWORKS[network]
    pl.seed_everything(seed, verbose=False)
    model, datamodule = make(lr), data()
    monitor = [] if on_unstable is None else [SpectralStabilityMonitor(on_unstable=on_unstable)]
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=monitor)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", StabilityWarning)
        trainer.fit(model, datamodule=datamodule)
    accuracy = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"]
    steps_warned = [
        int(m.group(1))
        for w in record
        if issubclass(w.category, StabilityWarning) and (m := re.search(r"step (\d+):", str(w.message)))
    ]
    return accuracy, min(steps_warned, default=None)


def flag_table(steps: int, seed: int) -> None:
    print(f"{'network':<16} {'lr':>5} {'x best':>6} {'flag step':>9} {'acc off':>8} {'acc warn':>9} {'acc cap_lr':>10}")
    for network, (_, _, best) in NETWORKS.items():
        for scale in (1, 2, 4):
            lr = best * scale
            off, _ = flagged(network, lr, steps, None, seed)
            warn, step = flagged(network, lr, steps, "warn", seed)
            cap, _ = flagged(network, lr, steps, "cap_lr", seed)
            print(
                f"{network:<16} {lr:>5.2g} {scale:>6d} {'-' if step is None else step:>9} {off:>8.3f} {warn:>9.3f} "
                f"{cap:>10.3f}",
                flush=True,
            )


def overhead_table(repeats: int) -> None:
    print(f"\n{'steps':>6} {'in-run overhead':>16} {'probes':>7} {'warnings':>9}")
    for steps in (700, 3000):
        ratios, probes, warned = [], 0, 0
        for _ in range(repeats):
            monitor = TimedMonitor()
            wall, _, warned = overhead_run("mlp", steps, monitor)
            ratios.append(monitor.seconds / (wall - monitor.seconds))
            probes = len(monitor.history)
        print(
            f"{steps:>6} {100 * statistics.median(ratios):>15.2f}% {probes:>7d} {warned:>9d}  (median; per run: "
            f"{', '.join(f'{100 * r:.2f}%' for r in ratios)})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["flag", "overhead", "both"], default="both")
    parser.add_argument("--steps", type=int, default=300, help="steps of each run of part 1")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every run of part 1 (the best steps: seed 0)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each length in part 2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    if args.part in ("flag", "both"):
        flag_table(args.steps, args.seed)
    if args.part in ("overhead", "both"):
        overhead_table(args.repeats)


if __name__ == "__main__":
    main()
