"""Draw the documentation's figures (run by the docs build, into the build folder's _static/)."""

from __future__ import annotations

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


def main(out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spectral_radius_figure(out / "spectral_radius.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "_build" / "figures")
