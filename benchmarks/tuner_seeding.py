"""Does the theory seed save trials? Best-after-k curves of seeded NAG-GS, unseeded NAG-GS and AdamW studies.

For each task and each sampler seed s, up to four studies with the same trial budget, TPE (seed s), no
pruning, every trial trained from the same initialisation (``seed_everything(0)``) with the same
Lightning trainer settings:

* ``seeded``: ``naggs_lightning.tune.run(..., seed=True)``, naggs-tune's default: the curvature is read
  after a short staged warm-up of a copy of the model (:mod:`naggs_lightning.lr.warmup`), the seeded
  trials around the bracket's best step (:mod:`naggs_lightning.tune.seeding`), then alpha searched as a
  multiple of the theory's step for each trial's mu; mu and gamma over naggs-tune's theory ranges.
* ``seeded@init`` (``--studies``): the same with the curvature read at initialisation over four
  batches (``warmup_steps=0, curvature_batches=4``): the seed before the warm-up existed.
* ``unseeded``: ``run(..., seed=False)``: alpha, mu and gamma sampled directly over the default ranges.
* ``adamw``: ``run(..., seed=False)`` with ``torch.optim.AdamW`` in place of NAG-GS, ``lr`` in
  [1e-4, 0.1] and ``weight_decay`` in [1e-5, 0.1] (log), same model, data and trainer.

Printed per task: the best validation score after k = 1, 3, 5, 10, 20 (and 50) trials (median over
sampler seeds, and [min, max]), the number of seeded trials that diverged or ended no better than
chance, the seed's reasoning for the first sampler seed, NAG-GS's best against AdamW's, the trials'
length, and the time the seed took against a mean trial. Studies run ``--jobs`` at a time (2: one per
core), each in its own process with one torch thread; ``--out`` saves every trial's value as studies
finish, and ``--report`` prints the tables of saved runs again, merged (e.g. sampler seeds run apart).

Tasks (configured as recipes; mu configured as a user would, 0.1 for the networks):

* ``quadratic``: least squares, Hessian spectrum linspace(0.01, 10, 20), full batch, mu at the true 0.01.
* ``quadratic_sgd``: the same spectrum, 2000 rows in minibatches of 200, 10 epochs.
* ``digits_logreg``: logistic regression on scikit-learn digits, the paper's setting (mu 1), batch 64, 3 epochs.
* ``digits_mlp``: a 64-128-10 ReLU MLP on digits, batch 64, 3 epochs.
* ``digits_cnn``: :class:`~naggs_lightning.tasks.DeepDigitsCNN` (4 convolutions), batch 64, 10 epochs.
* ``signal_cnn``: :class:`~naggs_lightning.tasks.SignalCNN` on generated 1-D waveforms, batch 100, 12 epochs;
  ``signal_cnn_issue``: the same with 3,500 training signals and 20 epochs, the issue's own trial.
* ``transformer``: :class:`~naggs_lightning.tasks.SequenceTransformer` sorting 12 tokens of 16 symbols,
  1024 training sequences, batch 64, 10 epochs: held out while the warm-up was designed.

The three networks sharpen: the top eigenvalue of a batch's Hessian grows 10-30x in the first
hundred steps. Full run (the three networks, five sampler seeds, 20 trials: about 28 minutes on the
2-core machine; sampler seeds 0-2 alone took 16.8), then NAG-GS against AdamW over 50 trials, the
tasks where the seed must not get worse, and the seed at other mu::

    python benchmarks/tuner_seeding.py --out seeding.json
    python benchmarks/tuner_seeding.py --budget 50 --studies seeded adamw --seeds 0 1 2
    python benchmarks/tuner_seeding.py --tasks quadratic digits_mlp --studies seeded seeded@init unseeded adamw
    python benchmarks/tuner_seeding.py --studies seeded --seeds 0 --budget 3 --mu 0.01
    python benchmarks/tuner_seeding.py --studies seeded adamw --seeds 0 1 2 --optimizer AdaNAGGS

``--optimizer AdaNAGGS`` configures AdaNAGGS at its own defaults in the NAG-GS studies (NAG-GS in Adam's metric).
Smaller: ``--tasks digits_cnn --seeds 0 1 2 --budget 10``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import lightning
import optuna
import torch
from optuna.trial import TrialState

from naggs_lightning.tune import run

_NAGGS = {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.1, "mu": 0.1, "gamma": 0.1}}
_DIGITS = {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 64}}


def _least_squares(n_samples: int, trainer: dict[str, Any]) -> dict[str, Any]:
    """Least squares with Hessian spectrum linspace(0.01, 10, 20), in batches of 200, NAG-GS at the true mu."""
    return {
        "metric": "val_loss",
        "chance": None,
        "config": {
            "model": {"class_path": "naggs_lightning.tasks.LeastSquares", "init_args": {"dim": 20}},
            "data": {
                "class_path": "naggs_lightning.tasks.QuadraticDataModule",
                "init_args": {
                    "dim": 20,
                    "mu": 0.01,
                    "L": 10.0,
                    "n_samples": n_samples,
                    "batch_size": 200,
                    "noise": 0.1,
                },
            },
            "optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.1, "mu": 0.01, "gamma": 0.01}},
            "trainer": trainer,
        },
    }


def _signal_cnn(n_train: int, epochs: int) -> dict[str, Any]:
    """The 1-D signal CNN in batches of 100 (the issue's own trial: 3,500 signals, 20 epochs)."""
    return {
        "metric": "val_acc",
        "chance": 0.2,
        "config": {
            "model": {"class_path": "naggs_lightning.tasks.SignalCNN"},
            "data": {
                "class_path": "naggs_lightning.tasks.SignalDataModule",
                "init_args": {"n_train": n_train, "batch_size": 100},
            },
            "optimizer": _NAGGS,
            "trainer": {"max_epochs": epochs},
        },
    }


TASKS: dict[str, dict[str, Any]] = {
    "quadratic": _least_squares(200, {"max_epochs": 150, "check_val_every_n_epoch": 25, "num_sanity_val_steps": 0}),
    "quadratic_sgd": _least_squares(2000, {"max_epochs": 10}),
    "digits_logreg": {
        "metric": "val_acc",
        "chance": 0.1,
        "config": {
            "model": {
                "class_path": "naggs_lightning.tasks.LogisticRegression",
                "init_args": {"in_features": 64, "num_classes": 10},
            },
            "data": _DIGITS,
            "optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"lr": 0.5, "mu": 1.0, "gamma": 1.0}},
            "trainer": {"max_epochs": 3},
        },
    },
    "digits_mlp": {
        "metric": "val_acc",
        "chance": 0.1,
        "config": {
            "model": {"class_path": "naggs_lightning.tasks.MLP", "init_args": {"in_features": 64, "num_classes": 10}},
            "data": _DIGITS,
            "optimizer": _NAGGS,
            "trainer": {"max_epochs": 3},
        },
    },
    "digits_cnn": {
        "metric": "val_acc",
        "chance": 0.1,
        "config": {
            "model": {"class_path": "naggs_lightning.tasks.DeepDigitsCNN"},
            "data": _DIGITS,
            "optimizer": _NAGGS,
            "trainer": {"max_epochs": 10},
        },
    },
    "signal_cnn": _signal_cnn(2000, 12),
    "signal_cnn_issue": _signal_cnn(3500, 20),
    "transformer": {
        "metric": "val_acc",
        "chance": 1 / 16,
        "config": {
            "model": {
                "class_path": "naggs_lightning.tasks.SequenceTransformer",
                "init_args": {"vocab_size": 16, "seq_len": 12, "d_model": 32, "num_heads": 2, "dim_feedforward": 64},
            },
            "data": {
                "class_path": "naggs_lightning.tasks.SequenceDataModule",
                "init_args": {
                    "task": "sort",
                    "vocab_size": 16,
                    "seq_len": 12,
                    "n_train": 1024,
                    "n_val": 512,
                    "n_test": 512,
                    "batch_size": 64,
                },
            },
            "optimizer": _NAGGS,
            "trainer": {"max_epochs": 10},
        },
    },
}

STUDIES = ("seeded", "seeded@init", "unseeded", "adamw")
ADAMW_SPACE = {"lr": "1e-4..1e-1:log", "weight_decay": "1e-5..1e-1:log"}
KS = (1, 3, 5, 10, 20, 50)


def _instantiate(spec: dict[str, Any]) -> Any:
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def _settings(metric: str, budget: int, sampler_seed: int) -> dict[str, Any]:
    """What every study shares: the metric, the budget, an in-memory storage, TPE's seed, no pruning, quiet."""
    return {
        "metric": metric,
        "n_trials": budget,
        "storage": None,
        "sampler_seed": sampler_seed,
        "pruner": "none",
        "verbose": False,
    }


def _adamw_study(config: dict[str, Any], metric: str, budget: int, seed: int) -> optuna.Study:
    """AdamW in factory mode: the task's model and data from the config, the trainer's settings as given."""

    def model(params: dict[str, Any]) -> lightning.LightningModule:
        lightning.seed_everything(0, verbose=False)
        net = _instantiate(config["model"])
        net.configure_optimizers = lambda: torch.optim.AdamW(
            net.parameters(), lr=params["lr"], weight_decay=params["weight_decay"]
        )
        return net

    return run(
        model=model,
        datamodule=lambda params: _instantiate(config["data"]),
        trainer_kwargs=config["trainer"],
        space={**ADAMW_SPACE, "mu": 0.0, "gamma": 1.0},  # pinned: factory names the model ignores
        seed=False,
        **_settings(metric, budget, seed),
    )


def _study(kind: str, config: dict[str, Any], metric: str, budget: int, seed: int) -> optuna.Study:
    if kind == "adamw":
        return _adamw_study(config, metric, budget, seed)
    options: dict[str, Any] = {"seed": kind != "unseeded"}
    if kind == "seeded@init":
        options.update(warmup_steps=0, curvature_batches=4)
    return run({**config, "seed_everything": 0}, **_settings(metric, budget, seed), **options)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished()]  # not a seeded trial still queued


def _values(trials: list[optuna.trial.FrozenTrial]) -> list[float | None]:
    return [t.value if t.state == TrialState.COMPLETE else None for t in trials]


def _best_after(values: list[float | None], k: int, maximize: bool) -> float:
    """The best value of the first k trials; if none of them finished, the worst possible (-inf when maximising):
    a study with no model yet ranks below every study with one."""
    done = [v for v in values[:k] if v is not None]
    if not done:
        return -math.inf if maximize else math.inf
    return max(done) if maximize else min(done)


def _show(value: float | None) -> str:
    return "failed" if value is None or math.isinf(value) else f"{value:.4g}"


def _seconds(study: optuna.Study) -> list[float]:
    return [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.trials
        if t.datetime_complete is not None and t.datetime_start is not None
    ]


def _task_config(name: str, epochs_scale: float, mu: float | None = None, optimizer: str = "NAGGS") -> dict[str, Any]:
    config = copy.deepcopy(TASKS[name]["config"])
    if optimizer != "NAGGS":  # another NAG-GS class at its own defaults, as a user would name it
        config["optimizer"] = {"class_path": f"naggs_lightning.{optimizer}", "init_args": {}}
    if mu is not None:  # the mu a user configures: the seed is computed, and the seeded trials run, at it
        config["optimizer"]["init_args"].update(mu=mu, gamma=mu)
    config["trainer"].update(accelerator="cpu", devices=1)
    config["trainer"]["max_epochs"] = max(1, round(config["trainer"]["max_epochs"] * epochs_scale))
    return config


def _run_one(
    name: str,
    kind: str,
    seed: int,
    budget: int,
    epochs_scale: float,
    threads: int,
    mu: float | None,
    optimizer: str = "NAGGS",
) -> dict[str, Any]:
    """One study, summarised as JSON-safe data (it may run in a worker process)."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start = time.perf_counter()
    study = _study(kind, _task_config(name, epochs_scale, mu, optimizer), TASKS[name]["metric"], budget, seed)
    trials = _finished(study)
    out: dict[str, Any] = {
        "task": name,
        "kind": kind,
        "seed": seed,
        "values": _values(trials),
        "trial_seconds": _seconds(study),
        "seconds": time.perf_counter() - start,
    }
    if kind.startswith("seeded"):
        out["seeded"] = [value for t, value in zip(trials, out["values"]) if t.user_attrs.get("naggs.seeded")]
        out["seed_info"] = study.user_attrs["naggs.seed"]
    return out


def _run_all(jobs: list[tuple[str, str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every (task, study, sampler seed), ``args.jobs`` at a time; results saved to ``args.out`` as they come."""
    results: list[dict[str, Any]] = []

    def done(result: dict[str, Any]) -> None:
        results.append(result)
        curve = " ".join(_show(v) for v in result["values"][:5])
        print(
            f"   done: {result['task']} {result['kind']} seed {result['seed']} in {result['seconds']:.0f} s "
            f"(first trials {curve})",
            flush=True,
        )
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=1)

    extra = (args.budget, args.epochs_scale, args.threads, args.mu, args.optimizer)
    if args.jobs == 1:
        for job in jobs:
            done(_run_one(*job, *extra))
        return results
    # spawn: a forked worker would inherit the parent's torch thread pools and OpenMP state.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(_run_one, *job, *extra) for job in jobs]):
            done(future.result())
    return results


def _report(name: str, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    task = TASKS[name]
    metric, chance = task["metric"], task["chance"]
    maximize = metric != "val_loss"
    ks = [k for k in KS if k <= args.budget]
    by_kind = {
        kind: sorted((r for r in results if r["kind"] == kind), key=lambda r: r["seed"]) for kind in args.studies
    }
    config = _task_config(name, args.epochs_scale, args.mu, args.optimizer)
    epochs, mu = config["trainer"]["max_epochs"], config["optimizer"]["init_args"].get("mu", "its default")
    print(
        f"\n== {name}: best {metric} after k trials ({'max' if maximize else 'min'}imised), "
        f"{epochs} epochs, {args.optimizer} configured at mu = {mu}, budget {args.budget}, sampler seeds {args.seeds}"
    )
    for kind, runs in by_kind.items():
        if kind.startswith("seeded") and runs:
            info = runs[0]["seed_info"]
            print(f"   {kind} seed (sampler seed {runs[0]['seed']}): alpha {info['alpha']:.4g}; {info['regime']}")
            if info.get("warmup"):
                w = info["warmup"]
                ramp = ", ".join(f"{r[1]:.3g}@{r[0]} (alpha {r[2]:.3g})" for r in w["readings"])
                print(f"      warm-up readings {ramp}; after: {', '.join(f'{v:.3g}' for v in w['final'])}")
                for why in w.get("restarts", []):
                    print(f"      {why}")
        for r in runs:
            curve = " ".join(_show(_best_after(r["values"], k, maximize)) for k in ks)
            seeded = ""
            if "seeded" in r:
                seeded = "; seeded trials " + ", ".join(_show(v) for v in r["seeded"])
            print(f"   seed {r['seed']} {kind:<12} {curve}  ({r['seconds']:.0f} s{seeded})")
    print(f"\n{name}: median [min, max] over {len(args.seeds)} sampler seeds of the best {metric} after k trials")
    print("| study | " + " | ".join(f"k = {k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    medians: dict[str, float] = {}
    for kind, runs in by_kind.items():
        cells = []
        for k in ks:
            column = [_best_after(r["values"], k, maximize) for r in runs]
            cells.append(f"{_show(statistics.median(column))} [{_show(min(column))}, {_show(max(column))}]")
            medians[kind] = statistics.median(column)  # ends at k = budget
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for kind, runs in by_kind.items():
        if kind.startswith("seeded"):
            seeded = [v for r in runs for v in r["seeded"]]
            bad = sum(v is None or (chance is not None and v <= chance + 0.02) for v in seeded)
            print(
                f"{kind}: {bad} of {len(seeded)} seeded trials diverged or ended within 0.02 of chance"
                if chance is not None
                else f"{kind}: {bad} seeded trials failed"
            )
    naggs = [medians[kind] for kind in ("seeded", "unseeded") if kind in medians]
    if naggs and "adamw" in medians:
        best = max(naggs) if maximize else min(naggs)
        print(f"NAG-GS best over {args.budget} trials (median): {_show(best)}; AdamW: {_show(medians['adamw'])}")
    seeded_runs = by_kind.get("seeded", [])
    trial_s = [s for r in seeded_runs for s in r["trial_seconds"]]
    seed_s = [(r["seed_info"].get("warmup") or {}).get("seconds", float("nan")) for r in seeded_runs]
    all_s = [s for r in results for s in r["trial_seconds"]]
    if all_s:
        print(f"trials: mean {statistics.fmean(all_s):.2f} s, longest {max(all_s):.2f} s")
    if trial_s and seed_s:
        mean_trial, seed_median = statistics.fmean(trial_s), statistics.median(seed_s)
        print(
            f"seed measurement {seed_median:.2f} s (median) against a mean trial of {mean_trial:.2f} s: "
            f"{seed_median / mean_trial:.1%} of a trial, "
            f"{seed_median / (mean_trial * args.budget):.1%} of the study",
            flush=True,
        )


def _report_saved(paths: list[str], parser: argparse.ArgumentParser) -> None:
    """Print the tables of saved runs (e.g. sampler seeds 0-2 and 3-4 run apart), which must share their settings."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    shared = ("budget", "epochs_scale", "mu", "optimizer")
    settings = [{"optimizer": "NAGGS", **saved["args"]} for saved in runs]  # runs before --optimizer were NAGGS's
    first = settings[0]
    for path, setting in zip(paths, settings):
        differs = [key for key in shared if setting.get(key) != first.get(key)]
        if differs:
            parser.error(f"--report: {path} was run with other {', '.join(differs)} than {paths[0]}")
    results = [r for saved in runs for r in saved["results"]]
    args = argparse.Namespace(
        **{key: first.get(key) for key in shared},
        studies=[kind for kind in STUDIES if any(r["kind"] == kind for r in results)],
        seeds=sorted({r["seed"] for r in results}),
    )
    for name in dict.fromkeys(r["task"] for r in results):
        _report(name, [r for r in results if r["task"] == name], args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", choices=sorted(TASKS), default=["digits_cnn", "signal_cnn", "transformer"]
    )
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=["seeded", "unseeded", "adamw"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="sampler seeds (default: 0-4)")
    parser.add_argument("--budget", type=int, default=20, help="trials of each study (default: 20)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every task's max_epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per study (default: 1)")
    parser.add_argument(
        "--mu",
        type=float,
        help="configure NAG-GS at this mu (and gamma) instead of each task's own (0.1 on the networks)",
    )
    parser.add_argument(
        "--optimizer",
        choices=["NAGGS", "AdaNAGGS"],
        default="NAGGS",
        help="the NAG-GS class the seeded and unseeded studies configure (AdaNAGGS: at its own defaults)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once, one process each (default: 2)")
    parser.add_argument("--out", help="write every study's trial values here (JSON), updated as studies finish")
    parser.add_argument(
        "--report", nargs="+", metavar="JSON", help="train nothing: print the tables of runs saved with --out, merged"
    )
    args = parser.parse_args()
    if args.report:
        _report_saved(args.report, parser)
        return
    for flag in ("budget", "jobs", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.mu is not None and not args.mu > 0:
        parser.error(f"--mu must be > 0, got {args.mu}")
    start = time.perf_counter()
    jobs = [(name, kind, seed) for name in args.tasks for seed in args.seeds for kind in args.studies]
    print(f"{len(jobs)} studies of {args.budget} trials, {args.jobs} at a time", flush=True)
    results = _run_all(jobs, args)
    for name in args.tasks:
        _report(name, [r for r in results if r["task"] == name], args)
    print(f"\nwhole run: {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
