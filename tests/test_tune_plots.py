"""The tuner's plots, drawn for real (Agg): readable alpha ticks on a narrow range, alpha named as such."""

from __future__ import annotations

import dataclasses
import itertools

import optuna
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from naggs_lightning.lr import theory_seed
from naggs_lightning.lr.readings import CurvatureReading, WarmupResult
from naggs_lightning.lr.seed import TheorySeed
from naggs_lightning.tune import SearchSpace, keys
from naggs_lightning.tune.report import alpha_figure, importances_figure
from naggs_lightning.tune.space import RelativeAlpha

LAMBDA = 6.0


def _study(ratios: list[float], seed: TheorySeed | None = None) -> tuple[optuna.Study, SearchSpace]:
    """A finished study whose trials trained with alpha = ratio x seed, at mu from 0.5 to 1."""
    relative = RelativeAlpha(LAMBDA, 0.9, 10.0, 1e-4, 10.0)
    space = SearchSpace.parse({"gamma": 1.0}).seeded(relative)
    study = optuna.create_study(direction="maximize", study_name="plots")
    study.set_user_attr(keys.STUDY_SEED, (seed or theory_seed(LAMBDA, 1.0, 1.0)).to_attrs())
    dists = {keys.ALPHA_RATIO: relative.distribution(), "mu": FloatDistribution(1e-4, 10.0, log=True)}
    for k, ratio in enumerate(ratios):
        mu = 0.5 + 0.5 * k / max(len(ratios) - 1, 1)
        study.add_trial(
            create_trial(
                params={keys.ALPHA_RATIO: ratio, "mu": mu},
                distributions=dists,
                value=0.9 - 0.1 * abs(ratio - 0.7) + 0.01 * mu,
                user_attrs={keys.ALPHA: relative.alpha(ratio, mu, 1.0)},
            )
        )
    return study, space


def _overlapping_labels(fig, axis_name: str) -> list[tuple[str, str]]:
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    axis = getattr(fig.axes[0], axis_name)
    labels = [
        label
        for label in [*axis.get_ticklabels(), *axis.get_ticklabels(minor=True)]
        if label.get_visible() and label.get_text()
    ]
    boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


@pytest.mark.parametrize("ratios", [[0.55, 0.6, 0.7, 0.8, 0.9], [0.3, 0.45, 0.6, 0.9, 1.05], [0.2, 1.0, 3.0, 6.0]])
def test_alpha_ticks_never_overlap(ratios):
    study, space = _study(ratios)
    fig = alpha_figure(study, space, "val_acc")
    assert not _overlapping_labels(fig, "xaxis")
    labels = [t.get_text() for t in fig.axes[0].xaxis.get_ticklabels() if t.get_visible() and t.get_text()]
    assert len(labels) >= 2, "the alpha axis needs at least two labelled ticks to be read"
    assert fig.axes[0].get_xlabel() == "alpha (lr)"


def test_importances_name_alpha_not_its_ratio():
    study, space = _study([0.2, 0.5, 0.9, 1.5, 3.0, 6.0])
    fig, note = importances_figure(study, space)
    assert fig is not None, note
    FigureCanvasAgg(fig).draw()
    names = [label.get_text() for label in fig.axes[0].yaxis.get_ticklabels()]
    assert sorted(names) == ["lr (alpha, x theory seed)", "mu"]
    assert not _overlapping_labels(fig, "yaxis")


@pytest.mark.parametrize("steps, when", [(0, "at init"), (40, "after a 40-step warm-up")])
def test_the_stability_edge_says_when_its_curvature_was_read(steps, when):
    readings = (CurvatureReading(0, LAMBDA, 0.1, 2.3),)
    warmup = WarmupResult(1.0, readings, (LAMBDA,), steps, 1.0)
    seed = dataclasses.replace(theory_seed(LAMBDA, 1.0, 1.0), warmup=warmup)
    study, space = _study([0.5, 1.0], seed)
    labels = alpha_figure(study, space, "val_acc").axes[0].get_legend_handles_labels()[1]
    edge = [label for label in labels if label.startswith("alpha_crit")]
    assert edge == [f"alpha_crit {seed.alpha_crit:.3g} ({when})"]
