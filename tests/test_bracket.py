"""The bracket above the theory's step (naggs_lightning.lr.bracket) on problems whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from naggs_lightning import suggest_lr, theory
from naggs_lightning.lr.bracket import bracket_step
from naggs_lightning.lr.errors import LRError
from naggs_lightning.lr.readings import Bracket
from naggs_lightning.tasks import DigitsDataModule, LeastSquares, QuadraticDataModule
from naggs_lightning.tasks.digits import MLP

MU, L, DIM = 0.05, 8.0, 10


def _quadratic() -> tuple[LeastSquares, list]:
    data = QuadraticDataModule(dim=DIM, mu=MU, L=L, n_samples=200, batch_size=200, noise=0.0)
    data.setup("fit")
    return LeastSquares(dim=DIM, mu=MU, gamma=MU), list(data.train_dataloader())


def test_on_a_quadratic_every_step_past_the_edge_diverges_and_the_theory_step_is_kept():
    model, batches = _quadratic()
    alpha_star = theory.alpha_opt(MU, L)
    assert 2 * alpha_star > theory.alpha_crit(MU, MU, L)  # a quadratic has no edge of stability: 2x diverges
    found = bracket_step(model, batches, alpha_star, MU, MU, steps=200)
    assert [r.factor for r in found.runs][:1] == [1.0]
    assert found.runs[0].outcome == "trains" and found.runs[-1].outcome in ("diverged", "no better")
    assert found.best.factor == 1.0 and found.best.alpha == pytest.approx(alpha_star)


def test_the_best_run_is_the_lowest_score_and_the_climb_stops_at_the_first_failure():
    torch.manual_seed(0)
    model = MLP(hidden_sizes=[32])
    data = DigitsDataModule(batch_size=64)
    data.setup("fit")
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    found = bracket_step(model, data.train_dataloader(), 0.05, 0.03, 0.03, factors=(1.0, 2.0, 4.0, 8.0, 16.0))
    kept = [r for r in found.runs if r.outcome == "trains"]
    assert found.best == (kept[-1] if kept else found.runs[0])
    assert all(b.score < 0.9 * a.score for a, b in zip(kept, kept[1:]))  # each kept step clearly better
    assert all(r.outcome == "trains" for r in found.runs[:-1])  # it climbs only while the runs improve
    assert [r.factor for r in found.runs] == [1.0, 2.0, 4.0, 8.0, 16.0][: len(found.runs)]
    assert all(r.alpha == pytest.approx(0.05 * r.factor) for r in found.runs)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # the model is untouched
    assert torch.equal(torch.get_rng_state(), rng)  # and so is the global RNG
    assert Bracket.from_attrs(found.to_attrs()) == found


def test_suggest_lr_returns_half_the_bracket_best_never_below_the_theory_step():
    model, _ = _quadratic()
    data = QuadraticDataModule(dim=DIM, mu=MU, L=L, n_samples=200, batch_size=200, noise=0.0)
    # At a tenth of alpha* each doubling converges clearly faster: the bracket climbs to 4x, the seed is 2x.
    low = suggest_lr(model, data, curvature_batches=1, safety=0.1)
    assert low.bracket is not None and low.bracket.best.factor == 4.0
    assert low.alpha == pytest.approx(0.5 * low.bracket.best.alpha) and "0.5 x the best" in low.describe()
    # At 0.9 alpha* the bracket keeps the theory's step (2x is past the edge), and so does the seed.
    seed = suggest_lr(model, data, curvature_batches=1)
    assert seed.bracket is not None and seed.bracket.best.factor == 1.0
    assert seed.alpha == seed.bracket.best.alpha == seed.bracket.runs[0].alpha and "x the best" not in seed.describe()
    assert seed.theory_step == pytest.approx(0.9 * theory.alpha_opt(MU, L), rel=2e-3)
    assert "bracket of 40-step runs" in seed.describe() and "is the stability edge" in seed.regime
    assert suggest_lr(model, data, curvature_batches=1, bracket_steps=0).bracket is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "seed alpha > 0"),
        ({"alpha": math.nan}, "seed alpha > 0"),
        ({"factors": (0.5, 1.0)}, "increasing and start at >= 1"),
        ({"factors": (1.0, 1.0)}, "increasing and start at >= 1"),
        ({"steps": 3}, "steps must be an integer >= 4"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    model, batches = _quadratic()
    args = {"alpha": 0.1, **kwargs}
    with pytest.raises(LRError, match=match):
        bracket_step(model, batches, args.pop("alpha"), MU, MU, **args)


@pytest.mark.parametrize(
    ("quarters", "below", "outcome"),
    [
        ([1.60, 1.60, 1.60, 1.60], None, "slow"),  # the loss has not moved yet: a larger step may move it
        ([1.61, 1.61, 1.61, 1.61], "trains", "collapsed"),  # not moved, where the smaller step's run trained: dead
        ([1.50, 1.30, 1.58, 1.60], None, "collapsed"),  # it fell, then came back to the initial loss
        ([1.90, 1.75, 1.72, 1.70], None, "collapsed"),  # thrown above the initial loss and still there
        ([1.40, 1.10, 0.90, 0.80], None, "trains"),
        ([1.40, 1.10, 0.90, 0.88], "trains", "no better"),  # within 10 % of the step below (scored 0.95 there)
        ([math.inf], None, "diverged"),
    ],
)
def test_a_run_that_did_not_train_is_slow_unless_it_fell_or_rose_on_the_way(quarters, below, outcome):
    from naggs_lightning.lr.bracket import _outcome
    from naggs_lightning.lr.readings import BracketRun

    earlier = [] if below is None else [BracketRun(1.0, 0.1, 0.95, below)]  # the smaller step's run
    assert _outcome(quarters, 1.609, earlier) == outcome
    if outcome == "slow":  # after a run that was slow too, still a slow start
        assert _outcome(quarters, 1.609, [BracketRun(1.0, 0.1, 1.6, "slow")]) == "slow"


def test_seeded_trials_keep_the_best_step_and_skip_only_failures_above_it():
    from dataclasses import replace

    from naggs_lightning.lr.readings import BracketRun
    from naggs_lightning.lr.seed import theory_seed
    from naggs_lightning.tune.seeding import ratio_range, seeded_ratios

    seed = theory_seed(20.0, 0.03, 0.03)

    def bracketed(best: float, *runs: tuple[float, str], first: float = 1.0) -> tuple[list[float], tuple[float, float]]:
        """The seeded ratios and the range for a bracket whose best run is ``best``x, the seed ``first`` x that."""
        found = None
        if runs:
            scored = tuple(BracketRun(f, f * seed.theory_step, 0.5 if f == best else 1.0, o) for f, o in runs)
            found = Bracket(scored, 2.3, 40, 0.1)
            assert found.best.factor == best or not any(r.outcome == "trains" for r in scored)
        seeded = replace(seed, alpha=first * best * seed.theory_step, bracket=found)
        bounds = ratio_range(seeded, 4.0)
        return seeded_ratios(seeded, 3, bounds), bounds

    assert bracketed(1.0) == ([1.0, 0.5, 2.0], (0.25, 4.0))  # no bracket: the window around the theory's step

    # the search ends half a doubling past the largest multiple that did not fail (log-midway to one that did)
    def root2(x: float):
        return pytest.approx(x * 2**0.5)

    assert bracketed(1.0, (1.0, "trains"), (2.0, "no better")) == ([1.0, 0.5, 2.0], (0.25, root2(2)))
    assert bracketed(2.0, (1.0, "trains"), (2.0, "trains"), (4.0, "collapsed")) == ([2.0, 1.0, 0.5], (0.5, root2(2)))
    assert bracketed(4.0, (1.0, "trains"), (2.0, "trains"), (4.0, "trains")) == ([4.0, 2.0, root2(4)], (1.0, root2(4)))
    # nothing trained in the short runs (a slow start, then a collapse): the theory's step is still tried first
    assert bracketed(1.0, (1.0, "slow"), (2.0, "collapsed")) == ([1.0, 0.5, 0.25], (0.25, root2(1)))
    # the seed half the bracket's best (AdaNAGGS; NAGGS above the theory's step): it first, then b, then b/4
    assert bracketed(2.0, (1.0, "trains"), (2.0, "trains"), (4.0, "trains"), first=0.5) == (
        [1.0, 2.0, 0.5],
        (0.5, root2(4)),
    )
    assert bracketed(1.0, (1.0, "trains"), (2.0, "collapsed"), first=0.5) == ([0.5, 1.0, 0.25], (0.25, root2(1)))
