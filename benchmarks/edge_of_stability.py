"""The edge of stability of NAG-GS and SGD-momentum, and what SpectralStabilityMonitor does there.

Full-batch training on the shipped digits data (``DigitsDataModule``'s training split, 1257 images) of a
tanh MLP 64-100-100-10 with squared error on one-hot targets (the setting of Cohen et al. 2021, where a fixed
step sharpens the network to its edge). Part 1 probes lambda_max every ``--probe-every`` steps and prints the
plateau ratio lambda_max / edge (median over the second half of the run) for NAG-GS (mu = gamma = 1) at
several alpha against lambda_stab(alpha), and for SGD-momentum against (2 + 2 beta) / eta. Part 2 repeats
NAG-GS at alpha 1.2 with minibatches and compares what settles at the edge: lambda_max of the batch's Hessian
(what the monitor reads), the batch sharpness g^T H g / g^T g of the batch along its own gradient (Andreyev &
Beneventano), and lambda_max of the full-batch Hessian. Part 3 trains the
NAG-GS run at alpha 1.2 under the monitor (``warn``, then ``cap_lr``) in a real Lightning Trainer and prints
the divergence warnings, the largest edge ratio and the smallest lr / asked-for lr over the run.

``--adanaggs`` runs the same full-batch setting with AdaNAGGS (NAG-GS in the metric P = sqrt(v_hat) + eps,
mu = gamma = 1) instead: the preconditioned sharpness lambda_max(P^-1/2 H P^-1/2), P the optimizer's own at each
probe, against NAG-GS's edge lambda_stab(alpha) (THEORY.md 2d), then the run under the monitor (``warn``), which
reads the same number.

    python benchmarks/edge_of_stability.py                 # 2000 steps per curve, 5000 under the monitor
    python benchmarks/edge_of_stability.py --out docs/data/edge_of_stability.json
    python benchmarks/edge_of_stability.py --adanaggs --steps 1000 --monitored-steps 1000 --probe-every 50
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from _trainer import quiet_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from naggs_lightning import NAGGS, AdaNAGGS, theory
from naggs_lightning.callbacks import SpectralStabilityMonitor, StabilityWarning
from naggs_lightning.curvature import estimate_batch_sharpness, estimate_top_eigenvalue, optimizer_metric
from naggs_lightning.tasks import DigitsDataModule

NAGGS_ALPHAS = (0.6, 1.2, 2.4)
ADANAGGS_ALPHAS = (0.01, 0.03)  # mu = gamma = 1; 0.03 was AdaNAGGS's default lr at mu = gamma = 1
SGD_SETTINGS = ((0.5, 0.5), (0.3, 0.9))  # (eta, beta)
BATCH_SIZES = (64, 256)


def full_batch() -> tuple[Tensor, Tensor]:
    data = DigitsDataModule(batch_size=4096)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    return x, nn.functional.one_hot(y, 10).float()


class TanhMLP(pl.LightningModule):
    """64-100-100-10 tanh MLP, half the squared error summed over classes, mean over samples."""

    def __init__(self, make_optimizer) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 10))
        self.make_optimizer = make_optimizer

    def compute_loss(self, batch) -> Tensor:
        x, t = batch
        return 0.5 * (self.net(x) - t).pow(2).sum(1).mean()

    def training_step(self, batch, batch_idx) -> Tensor:
        return self.compute_loss(batch)

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


def curve(make_optimizer, edge: float, batch, steps: int, every: int) -> dict:
    """lambda_max / edge and the loss every ``every`` steps of full-batch training (plain loop); in the optimizer's
    metric when it has one (AdaNAGGS: the preconditioned sharpness; P = 1 at step 0, before its first step)."""
    model = TanhMLP(make_optimizer)
    opt = model.configure_optimizers()
    rows = []
    for k in range(steps + 1):
        if k % every == 0:
            metric = optimizer_metric([opt], list(model.parameters()))
            lam = estimate_top_eigenvalue(model, [batch], tol=1e-3, metric=metric)
            with torch.no_grad():
                rows.append((k, lam / edge, float(model.compute_loss(batch))))
        opt.zero_grad()
        model.compute_loss(batch).backward()
        opt.step()
    late = [r[1] for r in rows if r[0] >= steps // 2]
    return {
        "edge": edge,
        "steps": [r[0] for r in rows],
        "ratio": [r[1] for r in rows],
        "loss": [r[2] for r in rows],
        "plateau": statistics.median(late),
        "late_range": [min(late), max(late)],
    }


def minibatch_curve(alpha: float, batch_size: int, batch, steps: int, every: int) -> dict:
    """Batch lambda_max, batch sharpness and full-batch lambda_max over lambda_stab(alpha), every ``every`` steps."""
    model = TanhMLP(lambda p: NAGGS(p, lr=alpha, mu=1.0, gamma=1.0))
    opt, edge = model.configure_optimizers(), theory.lambda_stab(alpha, 1.0, 1.0)
    gen, rows, k = torch.Generator().manual_seed(0), [], 0
    x, t = batch
    while k <= steps:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            mb = (x[perm[i : i + batch_size]], t[perm[i : i + batch_size]])
            if k % every == 0:
                rows.append(
                    (
                        k,
                        estimate_top_eigenvalue(model, [mb], tol=1e-3) / edge,
                        estimate_batch_sharpness(model, mb) / edge,
                        estimate_top_eigenvalue(model, [batch], tol=1e-3) / edge,
                    )
                )
            opt.zero_grad()
            model.compute_loss(mb).backward()
            opt.step()
            k += 1
            if k > steps:
                break
    late = [r for r in rows if r[0] >= steps // 2]
    names = ("batch_lambda_max", "batch_sharpness", "full_lambda_max")
    out = {"edge": edge, "steps": [r[0] for r in rows]}
    for j, name in enumerate(names, start=1):
        out[name] = [r[j] for r in rows]
        out[f"{name}_plateau"] = statistics.median(r[j] for r in late)
        out[f"{name}_range"] = [min(r[j] for r in late), max(r[j] for r in late)]
    return out


class LrTrace(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


def monitored(action: str, alpha: float, batch, steps: int, every: int, optimizer=NAGGS) -> dict:
    model = TanhMLP(lambda p: optimizer(p, lr=alpha, mu=1.0, gamma=1.0))
    monitor, trace = SpectralStabilityMonitor(every_n_steps=every, on_unstable=action), LrTrace()
    loader = DataLoader(TensorDataset(*batch), batch_size=len(batch[0]))
    trainer = quiet_trainer(max_steps=steps, callbacks=[trace, monitor])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", StabilityWarning)
        trainer.fit(model, loader)
    ratios = [h["edge_ratio"] for h in monitor.history]
    late = [h["edge_ratio"] for h in monitor.history if h["step"] >= steps // 2]
    return {
        "plateau": statistics.median(late),
        "late_range": [min(late), max(late)],
        "warnings": sum(issubclass(w.category, StabilityWarning) for w in record),
        "max_ratio": max(ratios),
        "loss": [monitor.history[0]["loss"], monitor.history[-1]["loss"]],
        "min_lr_ratio": min(trace.lrs) / alpha,
        "steps": len(trace.lrs),
        "probes": len(monitor.history),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per curve (part 1)")
    parser.add_argument("--monitored-steps", type=int, default=5000, help="steps under the monitor (part 2)")
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the curves as JSON (the docs figure's data)")
    parser.add_argument("--adanaggs", action="store_true", help="the AdaNAGGS runs (in its metric) only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    batch = full_batch()
    if args.adanaggs:
        adaptive(batch, args)
        return
    curves = {}
    print(f"full batch of {len(batch[0])} digits, tanh MLP 64-100-100-10, MSE; {args.steps} steps per run")
    print(f"{'optimizer':<28} {'edge':>7} {'ratio @0':>9} {'plateau':>8} {'late range':>13} {'loss 0 -> end':>17}")
    runs = [
        (f"NAGGS alpha={a:g}", lambda p, a=a: NAGGS(p, lr=a, mu=1.0, gamma=1.0), theory.lambda_stab(a, 1.0, 1.0))
        for a in NAGGS_ALPHAS
    ]
    runs += [
        (
            f"SGD eta={eta:g} beta={beta:g}",
            lambda p, eta=eta, beta=beta: torch.optim.SGD(p, lr=eta, momentum=beta),
            theory.classic_edge(eta, beta),
        )
        for eta, beta in SGD_SETTINGS
    ]
    for name, make, edge in runs:
        c = curves[name] = curve(make, edge, batch, args.steps, args.probe_every)
        print(
            f"{name:<28} {edge:>7.3f} {c['ratio'][0]:>9.3f} {c['plateau']:>8.3f} "
            f"{c['late_range'][0]:>6.3f}-{c['late_range'][1]:<6.3f} {c['loss'][0]:>8.4f} -> {c['loss'][-1]:<7.4f}"
        )
    print(f"\nminibatch NAGGS alpha=1.2, {args.steps} steps: plateau (median of the second half, range) / lambda_stab")
    print(f"{'batch':>6} {'batch lambda_max':>22} {'batch sharpness':>22} {'full-batch lambda_max':>22}")
    minibatch = {}
    for size in BATCH_SIZES:
        m = minibatch[size] = minibatch_curve(1.2, size, batch, args.steps, args.probe_every)
        cells = [
            f"{m[f'{n}_plateau']:.3f} ({m[f'{n}_range'][0]:.2f}-{m[f'{n}_range'][1]:.2f})"
            for n in ("batch_lambda_max", "batch_sharpness", "full_lambda_max")
        ]
        print(f"{size:>6} " + " ".join(f"{c:>22}" for c in cells))
    print(
        f"\nSpectralStabilityMonitor(every_n_steps={args.probe_every}) on NAGGS alpha=1.2, {args.monitored_steps} steps"
    )
    summary = {}
    for action in ("warn", "cap_lr"):
        m = summary[action] = monitored(action, 1.2, batch, args.monitored_steps, args.probe_every)
        print(
            f"  {action:<7} divergence warnings {m['warnings']}, max lambda_max / lambda_stab {m['max_ratio']:.3f}, "
            f"loss {m['loss'][0]:.4f} -> {m['loss'][1]:.4f}, min lr / asked-for lr {m['min_lr_ratio']:.3f} "
            f"over {m['steps']} steps ({m['probes']} probes)"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"curves": curves, "minibatch": minibatch, "monitored": summary}, indent=1))
        print(f"\nwrote {args.out}")


def adaptive(batch, args: argparse.Namespace) -> None:
    """AdaNAGGS full batch: the preconditioned sharpness against lambda_stab(alpha), then under the monitor."""
    print(
        f"full batch of {len(batch[0])} digits, tanh MLP 64-100-100-10, MSE; AdaNAGGS mu = gamma = 1, {args.steps} "
        f"steps; lambda_max in the optimizer's metric, lambda_max(P^-1/2 H P^-1/2), over lambda_stab(alpha)"
    )
    print(f"{'optimizer':<28} {'edge':>8} {'plateau':>8} {'late range':>13} {'loss 0 -> end':>17}")
    for alpha in ADANAGGS_ALPHAS:
        edge = theory.lambda_stab(alpha, 1.0, 1.0)
        c = curve(lambda p, a=alpha: AdaNAGGS(p, lr=a, mu=1.0, gamma=1.0), edge, batch, args.steps, args.probe_every)
        print(
            f"{f'AdaNAGGS alpha={alpha:g}':<28} {edge:>8.1f} {c['plateau']:>8.3f} "
            f"{c['late_range'][0]:>6.3f}-{c['late_range'][1]:<6.3f} {c['loss'][0]:>8.4f} -> {c['loss'][-1]:<7.4f}"
        )
    alpha = ADANAGGS_ALPHAS[-1]
    m = monitored("warn", alpha, batch, args.monitored_steps, args.probe_every, optimizer=AdaNAGGS)
    print(
        f"SpectralStabilityMonitor(every_n_steps={args.probe_every}, warn) on AdaNAGGS alpha={alpha:g}: divergence "
        f"warnings {m['warnings']}, edge ratio (preconditioned lambda_max / lambda_stab) median {m['plateau']:.3f} "
        f"over the second half (range {m['late_range'][0]:.3f}-{m['late_range'][1]:.3f}, max {m['max_ratio']:.3f}), "
        f"loss {m['loss'][0]:.4f} -> {m['loss'][1]:.4f} over {m['steps']} steps ({m['probes']} probes)"
    )


if __name__ == "__main__":
    main()
