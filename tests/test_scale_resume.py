"""A Trainer checkpoint taken mid-epoch and resumed with ``ckpt_path`` ends exactly where the uninterrupted run ends.

Both runs are the same deterministic fp32 computation in the same order, so the final parameters,
NAGGS state and gamma must agree bit for bit. Mid-epoch resumption needs a data loader that Lightning
can resume (``state_dict``/``load_state_dict``; Lightning warns otherwise and repeats data): the tests
use ``scale_common.ResumableDataLoader``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from scale_common import N_SAMPLES, SEED, TinyRegression, optimizer_snapshot  # noqa: E402

from naggs_lightning.callbacks import SpectralStabilityMonitor  # noqa: E402

BATCH = 8
EPOCHS = 2
STEPS_PER_EPOCH = N_SAMPLES // BATCH
SAVE_EVERY = 5  # steps 5 (epoch 0, batch 5 of 8) and 10 (epoch 1, batch 2 of 8): both mid-epoch
MONITOR_EVERY = 4


def _trainer(quiet_trainer, tmp_path: Path, callbacks=()) -> L.Trainer:
    return quiet_trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        deterministic=True,
    )


def _module() -> TinyRegression:
    return TinyRegression(lr=0.3, mu=0.5, gamma=2.0, batch_size=BATCH, resumable=True)


def _monitor() -> SpectralStabilityMonitor:
    return SpectralStabilityMonitor(every_n_steps=MONITOR_EVERY)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, quiet_trainer):
    tmp_path = tmp_path_factory.mktemp("resume")
    L.seed_everything(SEED, verbose=False)
    module = _module()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=SAVE_EVERY, save_top_k=-1)
    monitor = _monitor()
    trainer = _trainer(quiet_trainer, tmp_path, [checkpoints, monitor])
    trainer.fit(module)
    return tmp_path, optimizer_snapshot(module, trainer.optimizers[0]), monitor.history


def _resume(quiet_trainer, ckpt_dir: Path, step: int) -> dict:
    (ckpt,) = ckpt_dir.glob(f"*step={step}.ckpt")
    L.seed_everything(SEED + 1, verbose=False)  # a different RNG state must not matter
    module = _module()
    monitor = _monitor()
    trainer = _trainer(quiet_trainer, ckpt_dir, [monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, ckpt_path=ckpt)
    return dict(
        checkpoint=torch.load(ckpt, weights_only=False),
        snapshot=optimizer_snapshot(module, trainer.optimizers[0]),
        history=monitor.history,
        global_step=trainer.global_step,
        seen=len(module.seen_indices),
        warnings=[str(w.message) for w in caught],
    )


@pytest.fixture(scope="module")
def resumed(uninterrupted, quiet_trainer) -> dict[int, dict]:
    return {step: _resume(quiet_trainer, uninterrupted[0], step) for step in (SAVE_EVERY, 2 * SAVE_EVERY)}


# update_cosine needs parameter snapshots from the two steps before a probe; checked separately below.
_PROBE_KEYS = ("step", "lambda_max", "hvps", "converged", "unstable")


@pytest.mark.slow
@pytest.mark.parametrize("step", [SAVE_EVERY, 2 * SAVE_EVERY])
def test_mid_epoch_resume_matches_the_uninterrupted_run(uninterrupted, resumed, step):
    _, final, history = uninterrupted
    run = resumed[step]
    saved = run["checkpoint"]
    assert saved["global_step"] == step
    assert step % STEPS_PER_EPOCH != 0, "the checkpoint should be mid-epoch"
    assert saved["optimizer_states"][0]["param_groups"][0]["gamma"] != 2.0, "gamma should have moved"

    assert not [w for w in run["warnings"] if "not resumable" in w]
    assert run["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert run["seen"] == (EPOCHS * STEPS_PER_EPOCH - step) * BATCH, "the resumed run repeated or skipped data"
    assert run["snapshot"]["gamma"] == final["gamma"]
    for key in ("params", "state"):
        assert run["snapshot"][key].keys() == final[key].keys() and final[key]
        for name, value in final[key].items():
            assert torch.equal(run["snapshot"][key][name], value), f"{key}[{name}] differs after resuming at {step}"
    # The monitor resumes too: same probes, same estimates (its warm-start vector was restored).
    assert [h["step"] for h in history] == [1, *range(MONITOR_EVERY, EPOCHS * STEPS_PER_EPOCH + 1, MONITOR_EVERY)]
    probes = lambda hs: [{k: h[k] for k in _PROBE_KEYS} for h in hs]  # noqa: E731
    assert probes(run["history"]) == probes(history)


@pytest.mark.slow
def test_monitor_history_survives_a_checkpoint_next_to_a_probe(uninterrupted, resumed):
    assert resumed[2 * SAVE_EVERY]["history"] == uninterrupted[2]
