"""A seeded study's step range ends below the trials whose loss collapsed.

Oracles: the rule of ``naggs_lightning/tune/ceiling.py`` on trials built by hand (the answer read off the list), the
ratios a sampler draws once a collapse is stored, and a real run of the signal CNN at twice its best step, which
collapses to chance (``tests/test_collapse.py``), against the same network at half its best step.
"""

from __future__ import annotations

import io
import math

import lightning.pytorch as pl
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from rich.console import Console

from naggs_lightning.tasks import SignalCNN, SignalDataModule
from naggs_lightning.tune import SearchSpace, keys
from naggs_lightning.tune.ceiling import capped, ratio_ceiling
from naggs_lightning.tune.objective import TrialCallback
from naggs_lightning.tune.report import Reporter
from naggs_lightning.tune.space import RelativeAlpha

RANGE = FloatDistribution(0.25, 5.66, log=True)


def trial(ratio: float, value: float, *, collapsed: bool = False, pruned: bool = False) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        value=None if pruned else value,
        intermediate_values={0: value},
        params={keys.ALPHA_RATIO: ratio, "mu": 0.03},
        distributions={keys.ALPHA_RATIO: RANGE, "mu": FloatDistribution(1e-3, 1.0, log=True)},
        user_attrs={keys.COLLAPSED: "collapsed: ..."} if collapsed else {},
    )


def test_the_ceiling_is_half_way_from_what_held_to_the_lowest_collapse_above_the_best_trials_step():
    best, below, seeded_collapse = trial(2.0, 0.984), trial(1.0, 0.980), trial(4.0, 0.102, collapsed=True)
    assert ratio_ceiling([best, below, seeded_collapse], StudyDirection.MAXIMIZE) == pytest.approx(math.sqrt(8.0))
    # a complete trial between the best and the collapse held: the midpoint moves up to it
    held = trial(3.0, 0.95)
    assert ratio_ceiling([best, below, held, seeded_collapse], StudyDirection.MAXIMIZE) == pytest.approx(math.sqrt(12))
    # a lower collapse (a pruned trial's counts) takes over; a collapse below the best says nothing of the top
    pruned = trial(2.7, 0.110, collapsed=True, pruned=True)
    low = trial(0.5, 0.101, collapsed=True)
    trials = [best, below, held, seeded_collapse, pruned, low]
    assert ratio_ceiling(trials, StudyDirection.MAXIMIZE) == pytest.approx(math.sqrt(2.0 * 2.7))
    assert ratio_ceiling([best, below, low], StudyDirection.MAXIMIZE) is None
    # no complete trial yet: no best to measure "above" from
    assert ratio_ceiling([trial(4.0, 0.1, collapsed=True, pruned=True)], StudyDirection.MAXIMIZE) is None


def test_the_best_trial_follows_the_studys_direction():
    losses = [trial(2.0, 0.05), trial(1.0, 0.08), trial(4.0, 2.3, collapsed=True)]
    assert ratio_ceiling(losses, StudyDirection.MINIMIZE) == pytest.approx(math.sqrt(8.0))
    assert ratio_ceiling(losses, StudyDirection.MAXIMIZE) is None  # the collapsed trial itself reads best


def test_capped_ends_the_range_at_the_ceiling_only_inside_it():
    study = optuna.create_study(direction="maximize")
    study.add_trials([trial(2.0, 0.984), trial(4.0, 0.102, collapsed=True)])
    assert capped(RANGE, study) == FloatDistribution(0.25, math.sqrt(8.0), log=True)
    assert capped(FloatDistribution(0.25, 2.5, log=True), study) == FloatDistribution(0.25, 2.5, log=True)


def test_sampled_ratios_stay_below_a_stored_collapse():
    relative = RelativeAlpha(
        lambda_max=10.0, safety=1.0, window=4.0, low=1e-4, high=10.0, ratio_low=0.25, ratio_high=5.66
    )
    space = SearchSpace({"lr": RANGE, "mu": FloatDistribution(1e-3, 1.0, log=True)}, {"gamma": 0.03}).seeded(relative)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.add_trials([trial(2.0, 0.984), trial(1.0, 0.98)])
    drawn = [space.suggest(study.ask()) for _ in range(30)]
    ratios = [t.params[keys.ALPHA_RATIO] for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert max(ratios) > 2.83  # the control: without a collapse the sampler reaches the top of the range
    study.add_trial(trial(3.2, 0.1, collapsed=True))
    for _ in range(30):
        t = study.ask()
        space.suggest(t)
        assert t.params[keys.ALPHA_RATIO] <= 2.53 and t.distributions[keys.ALPHA_RATIO].high == pytest.approx(
            math.sqrt(2.0 * 3.2)
        )
    assert all(p["lr"] > 0 for p in drawn)


def fit_signal_cnn(quiet_trainer, lr: float) -> optuna.trial.FrozenTrial:
    """The signal CNN (NAG-GS, mu = gamma = 0.1) trained 300 steps at ``lr`` under a trial's callback."""
    study = optuna.create_study(direction="maximize")
    live = study.ask()
    pl.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_steps=300, limit_val_batches=0, callbacks=[TrialCallback(live, "val_acc")])
    trainer.fit(SignalCNN(lr=lr, mu=0.1, gamma=0.1), datamodule=SignalDataModule())
    return study.get_trials(deepcopy=False)[0]


@pytest.mark.parametrize(("lr", "collapses"), [(0.4, True), (0.1, False)])
def test_a_trial_whose_loss_collapsed_is_marked(lr, collapses, quiet_trainer):
    # the best step is about 0.2 (tests/test_collapse.py): at 0.4 the run goes back to its initial loss and stays
    marked = fit_signal_cnn(quiet_trainer, lr).user_attrs.get(keys.COLLAPSED)
    assert bool(marked) is collapses
    if collapses:
        assert marked.startswith("collapsed: the loss")


def test_the_trial_line_says_the_loss_collapsed_and_where_the_range_now_ends():
    relative = RelativeAlpha(
        lambda_max=10.0, safety=1.0, window=4.0, low=1e-4, high=10.0, ratio_low=0.25, ratio_high=5.66
    )
    space = SearchSpace({"lr": RANGE, "mu": FloatDistribution(1e-3, 1.0, log=True)}, {"gamma": 0.03}).seeded(relative)
    study = optuna.create_study(direction="maximize")
    study.add_trials([trial(2.0, 0.984), trial(4.0, 0.102, collapsed=True)])
    out = io.StringIO()
    reporter = Reporter(Console(file=out, width=300), space, n_trials=2, metric="val_acc")
    collapsed = study.get_trials()[1]
    reporter.trial_finished(study, collapsed)
    assert "val_acc = 0.102 (the loss collapsed; later trials search alpha/seed up to 2.83)" in out.getvalue()
    reporter.trial_finished(study, study.get_trials()[0])  # the control: no mark on a trial that held
    assert out.getvalue().count("collapsed") == 1
