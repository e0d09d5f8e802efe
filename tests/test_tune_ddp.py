"""naggs-tune trials on two processes (Lightning ``ddp_spawn``, gloo on CPU): reports and pruning through the
storage, and Ctrl-C while the ranks train.

One study of two trials at one point of the space (the trials' course is what is tested): the first runs to
the end, the second is pruned at its first validation by a pruner that decides on rank zero's process.
Ctrl-C runs the ``naggs-tune`` command in a session of its own, so that every process it starts can be found
(and none can outlive the test), and signals it as a terminal does (the whole process group) or as
``kill -INT`` does (the study's process alone).
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.pruners import BasePruner
from optuna.trial import TrialState

from naggs_lightning.lr import theory_seed
from naggs_lightning.tune import keys, run
from naggs_lightning.tune.cli import main
from naggs_lightning.tune.interrupts import kill_process_trees
from naggs_lightning.tune.storage import open_storage

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


# ----------------------------------------------------------------------------------------------------
# Ctrl-C while a trial trains on its rank processes: the documented exit (status 130, one line), the trial
# FAIL and its point queued again, no process left behind, and the same command resumes the study.

NAGGS_TUNE = [sys.executable, "-m", "naggs_lightning.tune.cli"]
INTERRUPTED = (
    "naggs-tune: interrupted; finished trials are kept in the storage: re-run the same command to resume "
    "study 'ddp-ctrl-c'"
)
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the processes in /proc (Linux)")


def _ctrl_c_args(tmp_path: Path, num_workers: int) -> list[str]:
    """naggs-tune's arguments for a one-trial study of RECIPE searching mu only (alpha pinned: no curvature to
    estimate), 20 epochs, everything it writes under ``tmp_path``."""
    config = copy.deepcopy(RECIPE)
    config["data"]["init_args"]["num_workers"] = num_workers
    config["trainer"]["max_epochs"] = 20  # seconds of training: still running when the signal lands
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    storage = f"sqlite:///{tmp_path / 'ddp.db'}"
    options = ["--study-name", "ddp-ctrl-c", "--n-trials", "1", "--pruner", "none", "--sampler-seed", "0", "--quiet"]
    space = ["--param", "lr=0.5", "--param", "gamma=1.0", "--param", "mu=0.5..2.0"]
    return ["--config", str(recipe), "--storage", storage, "--output-dir", str(tmp_path / "out"), *options, *space]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _session(sid: int) -> dict[int, int]:
    """The live processes of session ``sid``: pid -> parent pid (zombies, already ended, left out)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid, _, session = stat[stat.rfind(")") + 2 :].split()[:4]
        if int(session) == sid and state != "Z":
            found[int(entry)] = int(ppid)
    return found


def _describe(pids) -> str:
    lines = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = "(ended)"
        lines.append(f"{pid}: {command[:160]}")
    return "\n".join(lines)


def _ranks_training(db: Path) -> Callable[[], optuna.trial.FrozenTrial | None]:
    """A poll of ``db``: the RUNNING trial whose rank zero has started ``fit`` (it stores the world size from its
    own process), or ``None``. The storage is opened once it exists, as naggs-tune opens it (the two may race to
    create Optuna's tables)."""
    storage = None

    def poll() -> optuna.trial.FrozenTrial | None:
        nonlocal storage
        if storage is None and db.exists():
            storage = open_storage(f"sqlite:///{db}")
        if storage is None or "ddp-ctrl-c" not in optuna.get_all_study_names(storage):
            return None
        for trial in optuna.load_study(study_name="ddp-ctrl-c", storage=storage).trials:
            if trial.state == TrialState.RUNNING and trial.user_attrs.get(keys.WORLD_SIZE) == 2:
                return trial
        return None

    return poll


def _ranks_have_children(driver: int) -> bool:
    """Both ranks (children of the study's process) have started processes of their own (DataLoader workers)."""
    tree = _session(driver)
    children = {pid for pid, parent in tree.items() if parent == driver}
    return len({parent for parent in tree.values() if parent in children}) >= 2


def _wait(condition, proc: subprocess.Popen, err: Path, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert proc.poll() is None, f"naggs-tune exited ({proc.returncode}) before {what}:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return found


def _interrupt(
    tmp_path: Path, cmd: list[str], how: str, *, grandchildren: bool = False
) -> tuple[optuna.trial.FrozenTrial, optuna.trial.FrozenTrial]:
    """Start ``cmd`` in a session of its own, Ctrl-C it while the ranks train, and check the documented end.

    ``how``: ``"terminal"`` signals the process group, as a terminal's Ctrl-C does (the ranks get it too);
    ``"kill"`` the study's process alone. ``grandchildren``: wait until the ranks have started processes of their
    own. Returns the trial that was training and the one that queues its point again.
    """
    err = tmp_path / "interrupted.err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    try:
        victim = _wait(_ranks_training(tmp_path / "ddp.db"), proc, err, "trial training on its ranks")
        if grandchildren:
            _wait(lambda: _ranks_have_children(proc.pid), proc, err, "DataLoader workers under the ranks")
        signalled = time.monotonic()
        if how == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        status = proc.wait(timeout=60)
        exited = time.monotonic() - signalled
        # Once the study's process has gone, so is everything it started (the resource tracker ends on its own
        # once no process holds its pipe: moments, or never if an orphaned worker does).
        deadline = time.monotonic() + 15
        while (left := _session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left_behind = _describe(left)
    finally:
        for pid in _session(proc.pid):  # whatever a failure left behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=30)
    stderr_text = err.read_text()
    assert not left, "processes outlived naggs-tune:\n" + left_behind
    assert status == 130, stderr_text[-3000:]
    assert exited < 30, f"naggs-tune took {exited:.1f} s to exit after Ctrl-C"
    assert "Traceback" not in stderr_text, stderr_text[-3000:]
    assert [line for line in stderr_text.splitlines() if line.startswith("naggs-tune:")] == [INTERRUPTED]

    study = optuna.load_study(study_name="ddp-ctrl-c", storage=f"sqlite:///{tmp_path / 'ddp.db'}")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = study.trials[victim.number]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs[keys.WORLD_SIZE] == 2
    (queued,) = [t for t in study.trials if t.user_attrs.get(keys.RETRY_OF) == victim.number]
    assert queued.state == TrialState.WAITING
    assert not study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return victim, queued


@pytest.mark.slow
@needs_proc
@pytest.mark.filterwarnings("ignore:The number of trials is too small to compute importances")  # a one-trial study
def test_ctrl_c_in_a_terminal_during_a_ddp_spawn_trial_exits_130_and_the_same_command_resumes(tmp_path):
    args = _ctrl_c_args(tmp_path, num_workers=0)
    victim, queued = _interrupt(tmp_path, [*NAGGS_TUNE, *args], "terminal")

    # The same command again, in this process (Lightning and the package are imported already: seconds saved).
    assert main(args) == 0
    study = optuna.load_study(study_name="ddp-ctrl-c", storage=f"sqlite:///{tmp_path / 'ddp.db'}")
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    (finished,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert finished.number == queued.number and finished.params == victim.params  # the interrupted point, trained
    assert finished.user_attrs[keys.WORLD_SIZE] == 2 and sorted(finished.intermediate_values) == list(range(20))
    assert study.trials[victim.number].state == TrialState.FAIL


@pytest.mark.slow
@needs_proc
def test_sigint_to_the_study_process_alone_ends_the_ranks_and_their_dataloader_workers(tmp_path):
    # `kill -INT` reaches no rank: the study's process ends them. Signalled as soon as each rank has started its
    # DataLoader worker (still importing torch), the case a worker's own watchdog never notices: orphaned, it
    # waited for work for ever (and kept the command's stderr and multiprocessing's resource tracker open).
    _interrupt(tmp_path, [*NAGGS_TUNE, *_ctrl_c_args(tmp_path, num_workers=1)], "kill", grandchildren=True)


@needs_proc
def test_kill_process_trees_ends_every_generation_below_the_processes_given():
    # Three generations: a shell, a sleep and a shell of its own below it, two sleeps below that one.
    script = "sh -c 'sleep 600 & sleep 600 & wait' & sleep 600 & wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(_session(proc.pid)) < 5:
            assert time.monotonic() < deadline, _describe(_session(proc.pid))
            time.sleep(0.02)
        kill_process_trees([proc.pid])
        assert proc.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10  # the orphans' ends are collected by init: not at once
        while (left := _session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not left, _describe(left)
    finally:
        for pid in _session(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
