"""Does a Lightning user end with a better model? NAG-GS against what they would use instead, on a panel of user models.

The panel (:mod:`panel_models`): an MLP, a plain CNN, a CNN with BatchNorm and residual blocks, a Transformer
encoder, and a GRU (held out: it was not run while the defaults and ``suggest_lr`` were designed, and is
reported apart). Every run trains from the same initialisation per seed, on one CPU thread, and the score is
the final validation accuracy (median over ``--seeds``; a run whose loss went non-finite scores 0).

Parts (``--parts``):

* ``defaults``: ``NAGGS(model.parameters())`` at its defaults; torch SGD-Nesterov (0.1, 0.9); AdamW (1e-3).
* ``ada_defaults``: AdaNAGGS at the (lr, mu = gamma) pairs its defaults were chosen among (``ADANAGGS_PAIRS``).
* ``lr_find``: Lightning's ``Tuner.lr_find`` (its defaults, 100 steps) for SGD-Nesterov, AdamW and NAGGS, each then
  trained at the suggestion; NAGGS also at ``naggs_lightning.suggest_lr``'s lr; the seconds each tool took.
* ``seeded``: naggs-tune's seeded trials (sampler seed 0), each retrained from every one of ``--seeds``: which
  seeded configuration trains the better model in expectation, not on one seed.
* ``tune``: best validation accuracy after k trials (median over sampler seeds) of ``naggs-tune``
  (``naggs_lightning.tune.run``, its default space and seeding) against an Optuna TPE study over AdamW's lr and
  weight decay, written as a user would (``trial.suggest_float``), and the fraction of naggs-tune's trials after
  the seeded ones that end within 0.02 of chance. With ``--refit-seeds N``, also the model a user keeps: each
  study's best completed trial after 1, 8 and 20 trials, retrained from N fresh seeds (the studies train from
  seed 0), median over them. A study's best after k is the maximum of k single-seed draws, and rewards the study
  with more completed draws; the kept model does not.

Runs: ``python benchmarks/panel.py --parts defaults lr_find`` (about 10 minutes on the 2-core machine),
``python benchmarks/panel.py --parts tune --budget 20`` (longer: ``--jobs 2``). ``--models`` picks models;
``--held-out`` adds the GRU. ``--optimizer-args`` sets NAGGS's keyword arguments for the ``defaults`` part
(to compare candidate defaults: ``--optimizer-args '{"lr": 0.2, "mu": 0.1, "gamma": 0.1}'``).
``--tune-optimizer AdaNAGGS`` tunes AdaNAGGS instead of NAGGS; ``--no-baseline`` skips the AdamW+TPE studies
(they are deterministic per sampler seed, so one run of them serves both).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _trainer import quiet_trainer  # noqa: E402
from panel_models import DigitsData, MajorityData, WaveData  # noqa: E402


@dataclass(frozen=True)
class Model:
    name: str
    module: str  # class name in panel_models
    data: str  # data module class name in panel_models
    epochs: int
    chance: float


PANEL = {
    "mlp": Model("mlp", "PanelMLP", "DigitsData", 8, 0.1),
    "cnn": Model("cnn", "PanelCNN", "DigitsData", 8, 0.1),
    "resnet": Model("resnet", "PanelResNet", "DigitsData", 6, 0.1),
    "transformer": Model("transformer", "PanelTransformer", "MajorityData", 8, 0.125),
}
HELD_OUT = {"gru": Model("gru", "PanelGRU", "WaveData", 6, 0.2)}
DATA = {"DigitsData": DigitsData, "MajorityData": MajorityData, "WaveData": WaveData}

Factory = Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]


def _naggs(**kwargs: Any) -> Factory:
    from naggs_lightning import NAGGS

    return lambda params, lr: NAGGS(params, lr=lr, **kwargs)


def _sgd(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)


def _adamw(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr)


def _module(model: Model, factory: Factory, lr: float) -> pl.LightningModule:
    import panel_models

    module = getattr(panel_models, model.module)(lr=lr)
    module.optimizer_factory = factory
    return module


def train(model: Model, factory: Factory, lr: float, seed: int) -> float:
    """Final validation accuracy of ``model`` trained with ``factory`` at ``lr`` from seed ``seed``.

    0 if it diverged.
    """
    pl.seed_everything(seed, verbose=False)
    module = _module(model, factory, lr)
    trainer = quiet_trainer(max_epochs=model.epochs, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=DATA[model.data]())
    return _score(trainer)


def _score(trainer: pl.Trainer) -> float:
    """The final val_acc of a fit, 0 where the loss went non-finite."""
    acc = float(trainer.callback_metrics.get("val_acc", math.nan))
    loss = float(trainer.callback_metrics.get("val_loss", math.nan))
    return acc if math.isfinite(loss) and math.isfinite(acc) else 0.0


def lightning_lr_find(model: Model, factory: Factory, start_lr: float) -> tuple[float, float]:
    """Lightning's ``lr_find`` suggestion at its defaults, and the seconds it took."""
    from lightning.pytorch.tuner import Tuner

    pl.seed_everything(0, verbose=False)
    module = _module(model, factory, start_lr)
    start = time.perf_counter()
    finder = Tuner(quiet_trainer(max_epochs=100, accelerator="cpu", devices=1)).lr_find(
        module, datamodule=DATA[model.data](), update_attr=False
    )
    suggestion = finder.suggestion() if finder is not None else None
    return float(suggestion if suggestion is not None else start_lr), time.perf_counter() - start


def naggs_suggest_lr(model: Model) -> tuple[float, float, str]:
    """``naggs_lightning.suggest_lr`` at NAGGS's defaults, the seconds it took, and its explanation."""
    from naggs_lightning import suggest_lr

    pl.seed_everything(0, verbose=False)
    module = _module(model, _naggs(), 0.1)
    start = time.perf_counter()
    seed = suggest_lr(module, DATA[model.data]())
    return seed.alpha, time.perf_counter() - start, seed.describe()


def _quiet_process() -> None:
    """One CPU thread and no Lightning chatter: the settings every run of the panel trains under, in the main
    process and in each worker."""
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _row(label: str, scores: list[float], extra: str = "") -> str:
    cells = " ".join(f"{s:.3f}" for s in scores)
    return f"  {label:<34} {_median(scores):>6.3f}   [{cells}] {extra}"


def part_defaults(models: list[Model], seeds: list[int], naggs_args: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    label = "NAGGS(" + ", ".join(f"{k}={v}" for k, v in naggs_args.items()) + ")"
    runs = {
        label: (_naggs(**{k: v for k, v in naggs_args.items() if k != "lr"}), naggs_args.get("lr")),
        "SGD-Nesterov(0.1, 0.9)": (_sgd, 0.1),
        "AdamW(1e-3)": (_adamw, 1e-3),
    }
    for model in models:
        print(f"{model.name} (chance {model.chance})", flush=True)
        out[model.name] = {}
        for name, (factory, lr) in runs.items():
            if lr is None:  # NAGGS at its own default lr
                from naggs_lightning import NAGGS

                lr = NAGGS([torch.zeros(1, requires_grad=True)]).defaults["lr"]
            scores = [train(model, factory, lr, s) for s in seeds]
            out[model.name][name] = _median(scores)
            print(_row(name, scores), flush=True)
    return out


#: The (lr, mu = gamma) pairs AdaNAGGS's defaults were chosen among: lr 0.03 at mu = gamma = 1 and lr 0.1 at
#: mu = gamma = 10 were earlier defaults; lr 0.054 at mu = gamma = 26 is torch AdamW's default by the heavy-ball
#: identity (momentum 0.9, step 1e-3).
ADANAGGS_PAIRS = (
    (0.03, 1.0),
    (0.1, 10.0),
    (0.05, 10.0),
    (0.1, 3.0),
    (0.03, 3.0),
    (0.054, 26.0),
    (0.1, 16.0),
    (0.1, 26.0),
    (0.14, 26.0),
)


def part_ada_defaults(models: list[Model], seeds: list[int]) -> dict[str, dict[str, float]]:
    from naggs_lightning import AdaNAGGS

    out: dict[str, dict[str, float]] = {}
    for model in models:
        print(f"{model.name} (chance {model.chance})", flush=True)
        out[model.name] = {}
        scores = [train(model, _adamw, 1e-3, s) for s in seeds]
        out[model.name]["AdamW(1e-3)"] = _median(scores)
        print(_row("AdamW(1e-3)", scores), flush=True)
        for lr, mu in ADANAGGS_PAIRS:
            label = f"AdaNAGGS(lr={lr:g}, mu=gamma={mu:g})"
            factory = lambda params, lr_, mu=mu: AdaNAGGS(params, lr=lr_, mu=mu, gamma=mu)  # noqa: E731
            scores = [train(model, factory, lr, s) for s in seeds]
            out[model.name][label] = _median(scores)
            print(_row(label, scores), flush=True)
    return out


def part_lr_find(models: list[Model], seeds: list[int]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model in models:
        print(f"{model.name} (chance {model.chance})", flush=True)
        out[model.name] = {}
        for name, factory, start in (
            ("SGD-Nesterov @ lr_find", _sgd, 0.1),
            ("AdamW @ lr_find", _adamw, 1e-3),
            ("NAGGS @ lr_find", _naggs(), 0.1),
        ):
            lr, seconds = lightning_lr_find(model, factory, start)
            scores = [train(model, factory, lr, s) for s in seeds]
            out[model.name][name] = _median(scores)
            print(_row(name, scores, f"lr {lr:.3g}, {seconds:.1f} s"), flush=True)
        lr, seconds, why = naggs_suggest_lr(model)
        scores = [train(model, _naggs(), lr, s) for s in seeds]
        out[model.name]["NAGGS @ suggest_lr"] = _median(scores)
        print(_row("NAGGS @ suggest_lr", scores, f"lr {lr:.3g}, {seconds:.1f} s"), flush=True)
        print(f"    suggest_lr: {why}", flush=True)
    return out


KS = (1, 3, 5, 8, 10, 20)


def _config(model: Model, optimizer: str, seed: int = 0) -> dict[str, Any]:
    """The LightningCLI config naggs-tune trials: the panel model and data, ``optimizer`` at its defaults, from
    ``seed`` (as ``train`` seeds; LightningCLI's default seed is whatever an earlier ``seed_everything`` in the
    process left)."""
    return {
        "seed_everything": seed,
        "model": {"class_path": f"panel_models.{model.module}"},
        "data": {"class_path": f"panel_models.{model.data}"},
        "optimizer": {"class_path": f"naggs_lightning.{optimizer}"},
        "trainer": {"max_epochs": model.epochs, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0},
    }


#: Trials after which a study's chosen configuration is retrained on fresh seeds (``--refit-seeds``).
REFIT_KS = (1, 8, 20)

#: Retrains a study's trial from a training seed: its final val_acc.
Refit = Callable[[Any, int], float]


def _naggs_study(
    model: Model, sampler_seed: int, budget: int, optimizer: str, train_seed: int = 0
) -> tuple[Any, Refit]:
    """naggs-tune's study of ``optimizer`` at its defaults, its trials trained from ``train_seed``, and how to
    retrain one of its trials."""
    from naggs_lightning.lightning_cli import build_cli
    from naggs_lightning.tune import keys, run
    from naggs_lightning.tune.config import with_params
    from naggs_lightning.tune.space import SearchSpace

    study = run(
        _config(model, optimizer, train_seed),
        n_trials=budget,
        storage=None,
        sampler_seed=sampler_seed,
        verbose=False,
        output_dir=Path("/tmp/panel-tune") / f"{optimizer}-{model.name}-{sampler_seed}",
    )
    space = SearchSpace.from_json(study.user_attrs[keys.STUDY_SPACE])

    def refit(trial: Any, seed: int) -> float:
        # The trial's config as naggs-tune built it (alpha itself in place of its ratio), from another seed.
        config = with_params(_config(model, optimizer), {**space.values(trial), **space.fixed})
        config["seed_everything"] = seed
        config["trainer"].update(
            enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False
        )
        cli = build_cli(config, run=False, save_config_callback=None)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return _score(cli.trainer)

    return study, refit


def _adamw_tpe_study(
    model: Model, sampler_seed: int, budget: int, optimizer: str, train_seed: int = 0
) -> tuple[Any, Refit]:
    """What a user writes without this package: TPE over AdamW's lr and weight decay, no pruning, its trials trained
    from ``train_seed``."""
    import optuna

    def fit(params: dict[str, float], seed: int) -> float:
        factory = lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=params["weight_decay"])  # noqa: E731
        return train(model, factory, params["lr"], seed)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
        return fit(trial.params, train_seed)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    study.optimize(objective, n_trials=budget)
    return study, lambda trial, seed: fit(trial.params, seed)


def _trial_scores(study: Any) -> list[tuple[float, bool]]:
    """Each trial's (last reported val_acc, seeded), in trial order; 0 for a failed trial."""
    import optuna

    from naggs_lightning.tune import keys

    out = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        value = t.value if t.value is not None else (list(t.intermediate_values.values()) or [0.0])[-1]
        if t.state == optuna.trial.TrialState.FAIL:
            value = 0.0
        out.append((float(value), bool(t.user_attrs.get(keys.SEEDED))))
    return out


def _refits(study: Any, refit: Refit, seeds: list[int]) -> dict[int, list[float]]:
    """For each k of :data:`REFIT_KS`: the best completed trial among the first k (the one a user keeps), retrained
    from each of ``seeds``."""
    import optuna

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    out = {}
    for k in REFIT_KS:
        done = [t for t in trials[:k] if t.state == optuna.trial.TrialState.COMPLETE]
        if len(trials) >= k and done:
            chosen = max(done, key=lambda t: t.value)
            out[k] = [refit(chosen, seed) for seed in seeds]
    return out


def _study(
    kind: str, model_name: str, seeds: tuple[int, int], budget: int, optimizer: str, refit_seeds: list[int]
) -> tuple[str, str, int, list, dict[int, list[float]], float]:
    """One study from ``seeds`` (its sampler's, its trials' training seed): the trials' scores, the refits, seconds."""
    _quiet_process()
    model = {**PANEL, **HELD_OUT}[model_name]
    start = time.perf_counter()
    sampler_seed, train_seed = seeds
    make = _naggs_study if kind == "naggs-tune" else _adamw_tpe_study
    study, refit = make(model, sampler_seed, budget, optimizer, train_seed)
    took = time.perf_counter() - start
    return kind, model_name, sampler_seed, _trial_scores(study), _refits(study, refit, refit_seeds), took


def _best_after(trials: list[tuple[float, bool]], k: int) -> float:
    return max(v for v, _ in trials[:k])


def part_tune(
    models: list[Model],
    seeds: list[int],
    budget: int,
    jobs: int,
    optimizer: str,
    baseline: bool,
    refit_seeds: list[int],
    vary_training_seed: bool = False,
) -> dict[str, Any]:
    """Each model's studies from each sampler seed, their trials trained from seed 0, or from the sampler seed with
    ``vary_training_seed`` (the median over studies is then over training seeds too, as the other parts' rows are)."""
    kinds = ("naggs-tune", "AdamW+TPE") if baseline else ("naggs-tune",)
    study_seeds = [(s, s if vary_training_seed else 0) for s in seeds]
    jobs_list = [
        (kind, m.name, ss, budget, optimizer, refit_seeds) for m in models for kind in kinds for ss in study_seeds
    ]
    done: dict[tuple[str, str], list[list[tuple[float, bool]]]] = {}
    refits: dict[tuple[str, str], list[dict[int, list[float]]]] = {}
    seconds: dict[tuple[str, str], float] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for kind, name, _, trials, refit, took in pool.map(_study, *zip(*jobs_list)):
            done.setdefault((kind, name), []).append(trials)
            refits.setdefault((kind, name), []).append(refit)
            seconds[(kind, name)] = seconds.get((kind, name), 0.0) + took
    ks = [k for k in KS if k <= budget]
    out: dict[str, Any] = {}
    print(f"  {'model':<12} {'study':<11} " + " ".join(f"{'k=' + str(k):>6}" for k in ks) + "  near chance  s/study")
    for model in models:
        out[model.name] = {}
        for kind in kinds:
            runs = done[(kind, model.name)]
            medians = [statistics.median(_best_after(r, k) for r in runs) for k in ks]
            after_seed = [v for r in runs for v, seeded in r if not seeded] if kind == "naggs-tune" else []
            near = sum(v <= model.chance + 0.02 for v in after_seed)
            share = f"{near}/{len(after_seed)}" if kind == "naggs-tune" else ""
            out[model.name][kind] = {"best_after": dict(zip(ks, medians)), "near_chance": share}
            cells = " ".join(f"{m:>6.3f}" for m in medians)
            per_run = seconds[(kind, model.name)] / len(runs)
            # Each sampler seed's best after the budget, in seed order: any subset's median can be read off.
            each = out[model.name][kind]["each_seed"] = [_best_after(r, budget) for r in runs]
            out[model.name][kind]["trials"] = runs  # (val_acc, seeded) of every trial, per sampler seed
            shown = " ".join(f"{v:.3f}" for v in each)
            print(f"  {model.name:<12} {kind:<11} {cells}  {share:>11}  {per_run:>7.0f}  [{shown}]", flush=True)
    if refit_seeds:
        _print_refits(models, kinds, refits, refit_seeds, out)
    return out


def _seeded_retrained(model_name: str, optimizer: str, seeds: list[int]) -> tuple[str, list[tuple[float, list[float]]]]:
    """naggs-tune's seeded trials on ``model_name`` (sampler seed 0), each retrained from ``seeds``: for each, its
    alpha/seed ratio and its val_acc from each seed."""
    from naggs_lightning.tune import keys
    from naggs_lightning.tune.options import TuneOptions

    _quiet_process()
    model = {**PANEL, **HELD_OUT}[model_name]
    study, refit = _naggs_study(model, 0, TuneOptions().seed_trials, optimizer)
    seeded = [t for t in study.trials if t.user_attrs.get(keys.SEEDED)]  # fewer where the ladder leaves the range
    return model_name, [(t.params[keys.ALPHA_RATIO], [refit(t, seed) for seed in seeds]) for t in seeded]


def part_seeded(models: list[Model], seeds: list[int], jobs: int, optimizer: str) -> dict[str, Any]:
    """Each seeded trial's configuration retrained from every seed: which one is the better model, not the luckier."""
    out: dict[str, Any] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        names = [m.name for m in models]
        for name, trials in pool.map(_seeded_retrained, names, [optimizer] * len(names), [seeds] * len(names)):
            out[name] = [{"ratio": ratio, "scores": scores} for ratio, scores in trials]
            cells = "  ".join(f"{ratio:g}x: {statistics.median(scores):.3f}" for ratio, scores in trials)
            print(f"  {name:<12} {cells}", flush=True)
    return out


def _print_refits(
    models: list[Model],
    kinds: tuple[str, ...],
    refits: dict[tuple[str, str], list[dict[int, list[float]]]],
    refit_seeds: list[int],
    out: dict[str, Any],
) -> None:
    """The model a user keeps: each study's chosen configuration retrained from fresh seeds (:func:`_refits`)."""
    ks = [k for k in REFIT_KS if all(k in r for runs in refits.values() for r in runs)]
    print(
        f"== kept: the best completed trial after k trials retrained from seeds {refit_seeds}, median over those seeds"
        " and then over sampler seeds [each sampler seed after the last k]"
    )
    print(f"  {'model':<12} {'study':<11} " + " ".join(f"{'k=' + str(k):>6}" for k in ks))
    for model in models:
        for kind in kinds:
            runs = refits[(kind, model.name)]
            medians = [statistics.median(statistics.median(r[k]) for r in runs) for k in ks]
            each = [statistics.median(r[ks[-1]]) for r in runs] if ks else []
            out[model.name][kind]["kept"] = {"after": dict(zip(ks, medians)), "each_seed": each, "runs": runs}
            cells = " ".join(f"{m:>6.3f}" for m in medians)
            shown = " ".join(f"{v:.3f}" for v in each)
            print(f"  {model.name:<12} {kind:<11} {cells}  [{shown}]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["defaults", "lr_find"],
        choices=["defaults", "ada_defaults", "lr_find", "tune", "seeded"],
    )
    parser.add_argument("--models", nargs="+", default=list(PANEL), choices=[*PANEL, *HELD_OUT])
    parser.add_argument("--held-out", action="store_true", help="add the held-out GRU")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--optimizer-args", type=json.loads, default={}, help="NAGGS keyword arguments (JSON)")
    parser.add_argument("--budget", type=int, default=20, help="trials per study (tune)")
    parser.add_argument("--jobs", type=int, default=2, help="studies in parallel (tune)")
    parser.add_argument("--tune-optimizer", default="NAGGS", choices=["NAGGS", "AdaNAGGS"], help="naggs-tune's (tune)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the AdamW+TPE studies (tune)")
    parser.add_argument(
        "--refit-seeds",
        type=int,
        default=0,
        help="retrain each study's best completed trial after 1, 8 and 20 trials from this many fresh seeds (tune)",
    )
    parser.add_argument(
        "--vary-training-seed",
        action="store_true",
        help="train each study's trials from its sampler seed, not all from seed 0 (tune)",
    )
    parser.add_argument("--out", type=Path, help="save the medians as JSON")
    args = parser.parse_args()
    _quiet_process()
    models = [{**PANEL, **HELD_OUT}[m] for m in args.models] + (list(HELD_OUT.values()) if args.held_out else [])
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {}
    start = time.perf_counter()
    if "defaults" in args.parts:
        print("== defaults: final val_acc, median of seeds [each seed]")
        results["defaults"] = part_defaults(models, seeds, args.optimizer_args)
    if "ada_defaults" in args.parts:
        print("== AdaNAGGS's candidate defaults: final val_acc, median of seeds [each seed]")
        results["ada_defaults"] = part_ada_defaults(models, seeds)
    if "lr_find" in args.parts:
        print("== at a found lr: final val_acc, median of seeds [each seed]")
        results["lr_find"] = part_lr_find(models, seeds)
    if "tune" in args.parts:
        print(f"== tuned: best val_acc after k trials, median of {args.seeds} sampler seeds")
        fresh = 1 + (max(seeds) if args.vary_training_seed else 0)  # past every seed the studies train from
        results["tune"] = part_tune(
            models,
            seeds,
            args.budget,
            args.jobs,
            args.tune_optimizer,
            baseline=not args.no_baseline,
            refit_seeds=list(range(fresh, fresh + args.refit_seeds)),
            vary_training_seed=args.vary_training_seed,
        )
    if "seeded" in args.parts:
        print(f"== naggs-tune's seeded trials (alpha / theory's step), retrained from seeds {seeds}: median val_acc")
        results["seeded"] = part_seeded(models, seeds, args.jobs, args.tune_optimizer)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    main()
