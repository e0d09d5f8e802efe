"""naggs-tune trials on two processes (Lightning ``ddp_spawn``, gloo on CPU): reports and pruning through the storage.

One study of two trials at one point of the space (the trials' course is what is tested): the first runs to
the end, the second is pruned at its first validation by a pruner that decides on rank zero's process.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.pruners import BasePruner
from optuna.trial import TrialState

from naggs_lightning.lr import theory_seed
from naggs_lightning.tune import keys, run

RECIPE = {
    "seed_everything": 0,
    "model": {"class_path": "naggs_lightning.tasks.LogisticRegression", "init_args": {"lr": 0.5}},
    "data": {"class_path": "naggs_lightning.tasks.DigitsDataModule", "init_args": {"batch_size": 128}},
    "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn", "max_epochs": 3},
}


class PruneFromTrialOne(BasePruner):
    """Prunes every trial after the first at its first report."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number >= 1


@pytest.fixture(scope="module")
def ddp_study(tmp_path_factory) -> optuna.Study:
    tmp = tmp_path_factory.mktemp("ddp")
    return run(
        RECIPE,
        space={"mu": 1.0, "gamma": 1.0, "lr": 0.5},
        storage=f"sqlite:///{tmp / 'ddp.db'}",
        study_name="ddp",
        n_trials=2,
        pruner=PruneFromTrialOne(),
        verbose=False,
    )


@pytest.mark.slow
def test_a_ddp_trial_trains_on_two_processes_and_reports_every_validation(ddp_study):
    trial = ddp_study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[keys.WORLD_SIZE] == 2
    assert sorted(trial.intermediate_values) == [0, 1, 2]  # reported by rank 0 from its own process
    assert trial.value == trial.intermediate_values[2] and 0.5 < trial.value <= 1.0


@pytest.mark.slow
def test_a_pruning_decision_made_on_rank_zero_reaches_the_study_through_the_storage(ddp_study):
    trial = ddp_study.trials[1]
    assert trial.state == TrialState.PRUNED and trial.user_attrs[keys.WORLD_SIZE] == 2
    assert list(trial.intermediate_values) == [0]  # every rank stopped after one of its three epochs
    assert trial.user_attrs[keys.PRUNED_REASON].startswith("pruned by PruneFromTrialOne at validation 0")
    assert len(ddp_study.trials) == 2


# Least squares with its Hessian spectrum in [0.1, 10]: at twice the NAG-GS edge the run is unstable, still finite
# at the monitor's first probe (step 1), which stops it on both ranks.
MONITORED = {
    "seed_everything": 0,
    "model": {"class_path": "naggs_lightning.tasks.LeastSquares", "init_args": {"dim": 10}},
    "data": {
        "class_path": "naggs_lightning.tasks.QuadraticDataModule",
        "init_args": {"dim": 10, "mu": 0.1, "L": 10.0, "n_samples": 400, "batch_size": 100},
    },
    "trainer": {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp_spawn",
        "max_epochs": 3,
        "callbacks": [
            {
                "class_path": "naggs_lightning.callbacks.SpectralStabilityMonitor",
                "init_args": {"every_n_steps": 50, "on_unstable": "stop"},
            }
        ],
    },
}


@pytest.mark.slow
def test_a_monitor_stop_inside_a_ddp_spawn_trial_prunes_it_with_the_monitors_reason(tmp_path):
    # The monitor decides in the rank processes; the study's process only sees what rank zero stored.
    alpha = 2.0 * theory_seed(10.0, 0.1, 0.1).alpha_crit
    study = run(
        MONITORED,
        space={"lr": alpha, "mu": 0.1, "gamma": 0.1},
        storage=f"sqlite:///{tmp_path / 'ddp.db'}",
        study_name="ddp-monitor",
        n_trials=1,
        pruner="none",
        metric="val_loss",
        verbose=False,
    )
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs[keys.WORLD_SIZE] == 2
    reason = trial.user_attrs[keys.PRUNED_REASON]
    assert reason.startswith("diverging: stopped by SpectralStabilityMonitor (lambda_max = "), reason
    assert "at step 1:" in reason
