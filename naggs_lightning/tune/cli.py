"""``naggs-tune``: tune a LightningCLI recipe with a theory-seeded Optuna study.

Examples::

    # alpha, mu and gamma around the theory's seed; 30 trials in ./naggs-tune.db
    naggs-tune --config recipes/digits_mlp_naggs.yaml --n-trials 30

    # also the batch size and weight decay; pin gamma; a PostgreSQL study shared by many workers
    naggs-tune --config recipes/digits_mlp_naggs.yaml \\
        --param batch_size='[32, 64, 128]' --param weight_decay=1e-5..1e-2:log --param gamma=1.0 \\
        --storage postgresql://user:pw@db-host/optuna --study-name digits-mlp --n-trials 200

Re-running the same command resumes the study. Exit status: 0 done, 2 bad input (config, search
space, storage, options; the message names the problem and no study is changed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.storage import DEFAULT_STORAGE
from naggs_lightning.tune.study import PRUNERS, SAMPLERS, run
from naggs_lightning.tune.warmup import CURVATURE_BATCHES, WARMUP_STEPS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naggs-tune",
        description="Tune NAG-GS (alpha, mu, gamma and whatever else you name) on a LightningCLI recipe with an "
        "Optuna study whose first trial is the theory's step for the model's estimated curvature.",
        epilog="Parameter specs: {low: 1.0e-3, high: 10, log: true} | 1e-3..10:log | 16..256 | [32, 64, 128] | "
        "a scalar (pinned, not searched). Names: dotted config paths (optimizer.init_args.lr, "
        "data.init_args.batch_size, trainer.max_epochs, ...) or the aliases lr/alpha, mu, gamma, weight_decay, "
        "batch_size.",
    )
    add = parser.add_argument
    add(
        "--config",
        action="append",
        required=True,
        metavar="YAML",
        help="LightningCLI config (a recipe); repeat to merge several, later files win",
    )
    add("--space", metavar="YAML", help="search space file: a mapping of parameter name -> spec")
    add(
        "--param",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="one parameter of the search space (repeatable; overrides --space)",
    )
    add("--metric", default="val_acc", help="validation metric to optimise (default: val_acc)")
    add(
        "--direction",
        choices=("maximize", "minimize"),
        help="default: minimize when the metric name contains 'loss' or 'err', else maximize",
    )
    add(
        "--n-trials",
        type=int,
        default=30,
        help="finished trials the study should hold, over all workers and re-runs (default: 30)",
    )
    add("--timeout", type=float, help="seconds after which this process starts no new trial")
    add("--n-jobs", type=int, default=1, help="trials in parallel in this process (threads)")
    add(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"Optuna RDB URL; several processes may share it (default: {DEFAULT_STORAGE})",
    )
    add("--study-name", help="default: the name of the last --config file without its extension")
    add("--sampler", choices=SAMPLERS, default="tpe")
    add("--sampler-seed", type=int, help="seed of the sampler (reproducible single-process studies)")
    add("--pruner", choices=PRUNERS, default="median")
    add("--no-seed", dest="seed", action="store_false", help="do not seed the study from the theory")
    add("--safety", type=float, default=0.9, help="seed alpha = safety x the theory's step (default: 0.9)")
    add(
        "--seed-window",
        type=float,
        default=10.0,
        help="search alpha in [1/W, W] x the theory's step for each trial's mu (gamma relaxes to mu), cut to "
        "alpha's range (default: 10)",
    )
    add(
        "--seed-trials",
        type=int,
        default=3,
        help="seeded trials to enqueue: alpha = seed, seed/2, seed/4, ... (default: 3)",
    )
    add(
        "--warmup-steps",
        type=int,
        default=WARMUP_STEPS,
        help="steps of the seed's warm-up on a copy of the model, after which the curvature is read; 0 reads it "
        f"at initialisation (default: {WARMUP_STEPS})",
    )
    add(
        "--curvature-batches",
        type=int,
        default=CURVATURE_BATCHES,
        help="training batches probed after the warm-up; the seed uses the largest top Hessian eigenvalue "
        f"among them (default: {CURVATURE_BATCHES})",
    )
    add(
        "--heartbeat-interval",
        type=int,
        default=10,
        help="seconds between heartbeats of a running trial; a trial silent twice as long is failed and re-queued",
    )
    add(
        "--output-dir",
        type=Path,
        help="where best.yaml, best_params.yaml and the plots go (default: naggs-tune-out/<study-name>)",
    )
    add("--quiet", action="store_true", help="no progress, seed or table output")
    return parser


def _space(args: argparse.Namespace) -> dict[str, Any]:
    space: dict[str, Any] = {}
    if args.space:
        try:
            data = yaml.safe_load(Path(args.space).read_text())
        except OSError as exc:
            raise TuneError(f"cannot read the search space {args.space!r}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise TuneError(f"search space {args.space!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise TuneError(f"search space {args.space!r} must be a mapping of parameter name -> spec")
        space.update(data)
    for item in args.param:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise TuneError(f"--param expects NAME=SPEC, got {item!r}")
        try:
            space[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TuneError(
                f"--param {name.strip()}: the spec {text!r} is not valid YAML: {str(exc).splitlines()[0]}"
            ) from None
    return space


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``naggs-tune``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    study_name = args.study_name or Path(args.config[-1]).stem
    try:
        run(
            args.config,
            space=_space(args),
            metric=args.metric,
            direction=args.direction,
            n_trials=args.n_trials,
            timeout=args.timeout,
            n_jobs=args.n_jobs,
            storage=args.storage,
            study_name=study_name,
            sampler=args.sampler,
            sampler_seed=args.sampler_seed,
            pruner=args.pruner,
            seed=args.seed,
            safety=args.safety,
            seed_window=args.seed_window,
            seed_trials=args.seed_trials,
            curvature_batches=args.curvature_batches,
            warmup_steps=args.warmup_steps,
            output_dir=args.output_dir or Path("naggs-tune-out") / study_name,
            heartbeat_interval=args.heartbeat_interval,
            console=console,
            verbose=not args.quiet,
        )
    except TuneError as exc:
        print(f"naggs-tune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"naggs-tune: interrupted; finished trials are kept in the storage: re-run the same command to resume "
            f"study {study_name!r}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
