"""Gradient accumulation in a real Trainer equals one step on the k-times larger batch.

Lightning divides the loss by ``accumulate_grad_batches``, so k accumulated micro-batch gradients of
mean losses sum to the gradient of the mean over all k micro-batches: the larger batch's gradient.
The oracle is the plain PyTorch loop of ``scale_common.train_reference`` with batch ``k b``, in
float64: the runs differ only by the order in which the gradient sum is formed (~1e-16 per step), so
``rtol=1e-9, atol=1e-12`` is far above round-off and far below a missed or doubled micro-batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from scale_common import N_SAMPLES, SEED, TinyRegression, optimizer_snapshot, train_reference  # noqa: E402

MICRO_BATCH = 4
EPOCHS = 2
TOL = dict(rtol=1e-9, atol=1e-12)


def _fit(quiet_trainer, accumulate: int) -> tuple[L.Trainer, dict]:
    L.seed_everything(SEED, verbose=False)
    module = TinyRegression(batch_size=MICRO_BATCH)
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        precision="64-true",
        max_epochs=EPOCHS,
        accumulate_grad_batches=accumulate,
        deterministic=True,
    )
    trainer.fit(module)
    return trainer, optimizer_snapshot(module, trainer.optimizers[0])


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_micro_batches_equal_the_larger_batch(k, quiet_trainer):
    trainer, accumulated = _fit(quiet_trainer, accumulate=k)
    reference = train_reference(global_batch=k * MICRO_BATCH, epochs=EPOCHS)

    assert trainer.global_step == reference["steps"] == EPOCHS * N_SAMPLES // (k * MICRO_BATCH)
    assert accumulated["gamma"][0] == pytest.approx(reference["gamma"][0], rel=1e-12)
    assert accumulated["state"].keys() == reference["state"].keys() and accumulated["state"]
    for key in ("params", "state"):
        for name, value in reference[key].items():
            torch.testing.assert_close(accumulated[key][name], value, **TOL, msg=f"{key}[{name}]")

    # The tolerance discriminates: stepping on every micro-batch lands far away.
    micro = train_reference(global_batch=MICRO_BATCH, epochs=EPOCHS)
    gap = max((accumulated["params"][n] - micro["params"][n]).abs().max().item() for n in micro["params"])
    assert gap > 1e-3
