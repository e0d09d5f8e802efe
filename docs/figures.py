"""Draw the documentation's figures: the theory page's from naggs_lightning.theory, the monitor page's
from the data that benchmarks/edge_of_stability.py measured (docs/data/edge_of_stability.json).
Run by the docs build, into the build folder's _static/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from naggs_lightning import theory  # noqa: E402


def spectral_radius_figure(path: Path, mu: float = 1.0, kappas=(10.0, 100.0, 1000.0)) -> None:
    """Worst spectral radius over [mu, L] against alpha (gamma = mu), alpha* and alpha_crit marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kappa, color in zip(kappas, ("tab:blue", "tab:orange", "tab:green")):
        L = mu * kappa
        a_star, a_crit = theory.alpha_opt(mu, L), theory.alpha_crit(mu, mu, L)
        alphas = np.geomspace(a_star / 30, a_crit * 1.6, 2000)
        rho = theory.worst_spectral_radius(alphas, mu, mu, L)
        ax.plot(alphas, rho, color=color, label=f"kappa = {kappa:g}")
        ax.plot([a_star], [theory.worst_spectral_radius(a_star, mu, mu, L)], "o", color=color)
        ax.axvline(a_crit, color=color, ls=":", lw=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.6)
    ax.set_xlabel("alpha (the optimizer's lr)")
    ax.set_ylabel("worst spectral radius over [mu, L]")
    ax.set_title("NAG-GS, gamma = mu: alpha* (dots) and alpha_crit (dotted lines)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


EDGE_OF_STABILITY_DATA = Path(__file__).parent / "data" / "edge_of_stability.json"


def edge_of_stability_figure(path: Path) -> None:
    """lambda_max / edge over full-batch training (NAG-GS at several alpha, SGD-momentum), the loss, and what
    settles at the edge with minibatches, from the data ``benchmarks/edge_of_stability.py`` wrote."""
    data = json.loads(EDGE_OF_STABILITY_DATA.read_text())
    fig, (ax_ratio, ax_loss, ax_mb) = plt.subplots(1, 3, figsize=(14, 4.2))
    for name, curve in data["curves"].items():
        style = "-" if name.startswith("NAGGS") else "--"
        ax_ratio.plot(curve["steps"], curve["ratio"], style, label=f"{name} (plateau {curve['plateau']:.2f})")
        ax_loss.plot(curve["steps"], curve["loss"], style, label=name)
    ax_ratio.axhline(1.0, color="k", lw=0.8)
    ax_ratio.set_xlabel("step (full batch)")
    ax_ratio.set_ylabel("lambda_max / edge")
    ax_ratio.set_title("edge: lambda_stab(alpha) for NAG-GS, (2 + 2 beta)/eta for SGD", fontsize=9)
    ax_ratio.legend(fontsize=7)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step (full batch)")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("the loss keeps falling at the edge", fontsize=9)
    for (size, curve), color in zip(data["minibatch"].items(), ("tab:blue", "tab:orange")):
        for key, style in (("batch_lambda_max", "-"), ("batch_sharpness", ":"), ("full_lambda_max", "--")):
            ax_mb.plot(curve["steps"], curve[key], style, color=color, label=f"batch {size}: {key.replace('_', ' ')}")
    ax_mb.axhline(1.0, color="k", lw=0.8)
    ax_mb.set_xlabel("step (minibatch)")
    ax_mb.set_ylabel("curvature / lambda_stab(1.2)")
    ax_mb.set_title("NAG-GS alpha 1.2 with minibatches", fontsize=9)
    ax_mb.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spectral_radius_figure(out / "spectral_radius.png")
    edge_of_stability_figure(out / "edge_of_stability.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "_build" / "figures")
