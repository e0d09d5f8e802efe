"""NAGGS under mixed precision in real Lightning runs: bf16 autocast, fp16 with GradScaler, curvature in fp32."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from scale_common import N_SAMPLES, SEED, TinyRegression, exact_top_eigenvalue, optimizer_snapshot  # noqa: E402

from naggs_lightning.curvature import estimate_top_eigenvalue, hvp  # noqa: E402

LR, MU, GAMMA0 = 0.3, 0.5, 2.0
BATCH = 8
EPOCHS = 2
STEPS = EPOCHS * N_SAMPLES // BATCH


def _gamma_after(steps: int) -> float:
    return MU + (GAMMA0 - MU) * (1 + LR) ** -steps


def _trainer(quiet_trainer, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=EPOCHS, deterministic=True)
    return quiet_trainer(**{**defaults, **kwargs})


class _RecordsForwardDtype(TinyRegression):
    def compute_loss(self, batch):
        self.forward_dtype = self(batch[0]).dtype
        return super().compute_loss(batch)


class _StepRecorder(Callback):
    """Optimizer state before and after every training batch, with the GradScaler's scale."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def _scale(self, trainer: L.Trainer) -> float | None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return None if scaler is None else scaler.get_scale()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = (optimizer_snapshot(pl_module, trainer.optimizers[0]), self._scale(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before, scale_before = self._before
        after = optimizer_snapshot(pl_module, trainer.optimizers[0])
        self.records.append(
            dict(before=before, after=after, scale_before=scale_before, scale_after=self._scale(trainer))
        )


def _unchanged(before: dict, after: dict) -> bool:
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    return (
        same(before["params"], after["params"])
        and same(before["state"], after["state"])
        and before["gamma"] == after["gamma"]
    )


def _fit(quiet_trainer, module: TinyRegression, **trainer_kwargs) -> L.Trainer:
    L.seed_everything(SEED, verbose=False)
    trainer = _trainer(quiet_trainer, **trainer_kwargs)
    trainer.fit(module)
    return trainer


@pytest.mark.slow
def test_bf16_mixed_on_cpu_trains_naggs_like_fp32(quiet_trainer):
    fp32 = TinyRegression(lr=LR, mu=MU, gamma=GAMMA0, batch_size=BATCH)
    init = {n: p.detach().clone() for n, p in fp32.named_parameters()}
    _fit(quiet_trainer, fp32, precision="32-true")
    bf16 = _RecordsForwardDtype(lr=LR, mu=MU, gamma=GAMMA0, batch_size=BATCH)
    trainer = _fit(quiet_trainer, bf16, precision="bf16-mixed")

    assert bf16.forward_dtype == torch.bfloat16, "autocast was not active"
    optimizer = trainer.optimizers[0]
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(t.dtype == torch.float32 for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    assert trainer.global_step == STEPS
    assert optimizer.param_groups[0]["gamma"] == pytest.approx(_gamma_after(STEPS), rel=1e-12)
    # bf16 activations carry ~3 significant digits: the trajectory stays within a few percent of the
    # fp32 one, while training moved the parameters much further than that.
    for name, p in bf16.named_parameters():
        q = dict(fp32.named_parameters())[name]
        moved = (q - init[name]).norm()
        assert (p - q).norm() < 0.05 * moved, name


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        # Lightning maps precision="16-mixed" on CPU to bf16, so the fp16 plugin is passed explicitly.
        pytest.param("cpu", id="cpu-fp16-plugin"),
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
        ),
    ],
)
def test_grad_scaler_skipped_step_leaves_naggs_state_untouched(device, quiet_trainer):
    inf_step = 3
    module = TinyRegression(lr=LR, mu=MU, gamma=GAMMA0, batch_size=BATCH, inf_loss_at_step=inf_step)
    recorder = _StepRecorder()
    if device == "cpu":
        kwargs = dict(accelerator="cpu", plugins=[MixedPrecision("16-mixed", device="cpu")])
    else:
        kwargs = dict(accelerator="gpu", precision="16-mixed")
    trainer = _fit(quiet_trainer, module, callbacks=[recorder], **kwargs)

    records = recorder.records
    assert len(records) == STEPS
    skipped = records[inf_step]
    assert skipped["scale_before"] is not None, "no GradScaler in use"
    assert _unchanged(skipped["before"], skipped["after"]), "a skipped step changed parameters, v or gamma"
    assert skipped["scale_after"] == skipped["scale_before"] / 2  # GradScaler's backoff
    for k, record in enumerate(records):
        if k == inf_step:
            continue
        assert not _unchanged(record["before"], record["after"]), f"step {k} did not update"
        assert record["scale_after"] == record["scale_before"]
    # gamma advanced on every step but the skipped one.
    assert trainer.optimizers[0].param_groups[0]["gamma"] == pytest.approx(_gamma_after(STEPS - 1), rel=1e-12)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_curvature_probe_runs_in_fp32_under_autocast():
    module = TinyRegression()
    batch = module.dataset.tensors
    exact = exact_top_eigenvalue(module, *batch[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        estimate = estimate_top_eigenvalue(module, [batch], max_iter=40, tol=1e-7)
    assert estimate == pytest.approx(exact, rel=1e-5)  # measured 1e-8: fp32 products, converged Lanczos

    # The check can fail: the same Hessian-vector product taken under bf16 autocast is visibly off.
    params = list(module.parameters())
    gen = torch.Generator().manual_seed(0)
    vec = [torch.randn(p.shape, generator=gen) for p in params]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = hvp(module.compute_loss(batch), params, vec)
    full = hvp(module.compute_loss(batch), params, vec)
    diff = torch.cat([(a - b).reshape(-1) for a, b in zip(low, full)])
    gap = diff.norm() / torch.cat([b.reshape(-1) for b in full]).norm()
    assert gap > 1e-3  # measured 6e-3
