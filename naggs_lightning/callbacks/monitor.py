r"""SpectralStabilityMonitor: a thin Lightning callback composing the detectors of this package."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from naggs_lightning.callbacks import report
from naggs_lightning.callbacks.edge import EdgeOfStabilityDetector
from naggs_lightning.callbacks.groups import group_stability, param_groups, trained_params
from naggs_lightning.callbacks.lr_cap import LrCap
from naggs_lightning.callbacks.non_finite import NonFiniteLossDetector
from naggs_lightning.callbacks.oscillation import OscillationDetector
from naggs_lightning.callbacks.spike import SpikeDetector
from naggs_lightning.curvature import Algorithm, Method, NonFiniteCurvatureError, probe_batch

__all__ = ["SpectralStabilityMonitor"]

_ACTIONS = ("warn", "cap_lr", "stop")


class SpectralStabilityMonitor(Callback):
    r"""Estimate the loss Hessian's top eigenvalue during training and tell the edge of stability from divergence.

    Every ``every_n_steps`` optimizer steps (and after the first step) it measures the current batch with
    :func:`naggs_lightning.curvature.probe_batch` (side-effect free): :math:`\lambda_{max}` of the loss's
    Hessian (warm-started Lanczos), the batch sharpness (logged for comparison) and the loss after the step. Each
    param group's edge comes from :mod:`naggs_lightning.callbacks.groups` (NAG-GS :math:`\lambda_{stab}(\alpha)`,
    SGD :math:`2(1+\beta)/\eta`), and the ratio :math:`\lambda_{max}` / edge is read by
    :class:`~naggs_lightning.callbacks.edge.EdgeOfStabilityDetector`:

    * **at the edge** (ratio from ``1 - edge_band`` up to ``divergence_ratio``): normal for a network trained
      with a fixed step; reported once through Lightning's logger, never warned.
    * **diverging**: ratio >= ``divergence_ratio`` together with a sign (the probed batch's loss rose over the
      step, or the update cosine is below ``oscillation_threshold``), or a non-finite loss (checked every batch).
      Past the edge without a sign, the next probes come after 1, 2, 4, ... steps.

    On divergence ``on_unstable`` decides: ``"warn"`` (a :class:`StabilityWarning` with a table, once per
    episode), ``"cap_lr"`` (warn and cap the lr: :mod:`naggs_lightning.callbacks.lr_cap`) or ``"stop"`` (warn and
    set ``trainer.should_stop``). A loss spike brings the probe forward. Under DDP products and losses are
    averaged across ranks, so every rank decides alike. The logged keys (``stability/...``) are listed in
    ``docs/monitor.md``; :attr:`history` keeps one record per probe; ``state_dict`` saves all for resume.

    Args:
        every_n_steps: optimizer steps between scheduled probes (default 500: about 2-3 % of a digits run).
        on_unstable: ``"warn"``, ``"cap_lr"`` or ``"stop"``.
        safety_factor: ``cap_lr`` sets lr to this fraction of the stable limit, in (0, 1].
        max_iter, tol, method, algorithm: the eigen-solver (:func:`naggs_lightning.curvature.extreme_eigenpair`).
        spike_factor, spike_min_rise, spike_window: the spike detector (``spike_factor=None``: off).
        oscillation_threshold: an update cosine below this is a divergence sign, in [-1, 1) (``None``: off).
        edge_band: the edge zone starts at ``1 - edge_band`` times the edge, in [0, 1).
        divergence_ratio: the edge ratio from which a divergence sign means divergence, > 1.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        *,
        on_unstable: Literal["warn", "cap_lr", "stop"] = "warn",
        safety_factor: float = 0.9,
        max_iter: int = 20,
        tol: float = 1e-2,
        method: Method = "exact",
        algorithm: Algorithm = "lanczos",
        spike_factor: float | None = 3.0,
        spike_min_rise: float = 0.1,
        spike_window: int = 50,
        oscillation_threshold: float | None = -0.5,
        edge_band: float = 0.1,
        divergence_ratio: float = 2.0,
    ) -> None:
        _check_int("every_n_steps", every_n_steps, 1)
        _check(on_unstable in _ACTIONS, f"on_unstable must be one of {_ACTIONS}, got {on_unstable!r}")
        _check_int("max_iter", max_iter, 1)
        _check(0.0 <= tol < 1.0, f"tol must be in [0, 1), got {tol!r}")
        _check(
            method in ("exact", "finite_difference"), f"method must be 'exact' or 'finite_difference', got {method!r}"
        )
        _check(algorithm in ("lanczos", "power"), f"algorithm must be 'lanczos' or 'power', got {algorithm!r}")
        self.every_n_steps, self.on_unstable = every_n_steps, on_unstable
        self.solver = {"max_iter": max_iter, "tol": tol, "algorithm": algorithm}
        self.method = method
        try:  # each detector checks its own arguments
            self.non_finite = NonFiniteLossDetector()
            self.spike = SpikeDetector(spike_factor, spike_min_rise, spike_window) if spike_factor is not None else None
            self.oscillation = OscillationDetector(oscillation_threshold) if oscillation_threshold is not None else None
            self.edge = EdgeOfStabilityDetector(edge_band, divergence_ratio)
            self.lr_cap = LrCap(safety_factor)
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        # Lightning reads state_key on every hook call (profiler names): build the string once.
        self._state_key = self._generate_state_key(every_n_steps=every_n_steps, on_unstable=on_unstable)
        self.history: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}
        self._vector: Tensor | None = None
        self._last_probe_step: int | None = None
        self._last_step: int | None = None
        self._probe_at: int | None = None  # an unscheduled probe (spike, or past the edge without a sign)
        self._recheck = 1

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @property
    def unstable(self) -> bool:
        """Whether the last probe found the run diverging, or the loss is not finite."""
        return self.edge.diverging or self.non_finite.active

    @property
    def lr_caps(self) -> dict[str, float]:
        """The lr caps in force, keyed ``"optimizer_index/group_index"``."""
        return dict(self.lr_cap.caps)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization and not callable(getattr(pl_module, "compute_loss", None)):
            raise MisconfigurationException(
                f"SpectralStabilityMonitor needs {type(pl_module).__name__}.compute_loss(batch) under manual "
                "optimization: its training_step steps the optimizer and cannot serve as the probe's loss"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._impose_caps(trainer)

    def _impose_caps(self, trainer: pl.Trainer) -> None:
        """Schedulers step after the optimizer and may move the lr: re-impose the caps before each step and probe."""
        if self.lr_cap.caps:
            for key, _, _, group in param_groups(trainer.optimizers):
                if key in self.lr_cap.caps:
                    self.lr_cap.apply(key, group)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss_of(outputs)
        if loss is not None and trainer.world_size > 1:
            loss = trainer.strategy.reduce(loss.detach().float(), reduce_op="mean")
        value = float(loss) if loss is not None else None
        if value is not None and not self._check_loss(trainer, value):
            return
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: no optimizer step on this batch
            return
        self._last_step = step
        params = trained_params(trainer.optimizers)
        cosine = self.oscillation.observe(step, params, self.every_n_steps) if self.oscillation else None
        due = step % self.every_n_steps == 0 or self._last_probe_step is None
        if due or (self._probe_at is not None and step >= self._probe_at):
            self._probe(trainer, pl_module, batch, step, cosine, value)

    def _check_loss(self, trainer: pl.Trainer, value: float) -> bool:
        """The per-batch checks (non-finite, spike); False when the loss is not finite."""
        act, reason = self.non_finite.check(value)
        if act:
            self._on_non_finite(trainer, f"step {trainer.global_step}: {reason}")
        if self.spike is not None and math.isfinite(value):
            act, reason = self.spike.check(value)
            if act:
                report.info(f"step {trainer.global_step}: {reason}; probing the curvature now.")
                self._probe_at = trainer.global_step
        return math.isfinite(value)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "vector": None if self._vector is None else self._vector.detach().cpu(),
            "last_probe_step": self._last_probe_step,
            "probe_at": self._probe_at,
            "recheck": self._recheck,
            "history": [dict(h) for h in self.history],
            **{name: d.state_dict() for name, d in self._detectors().items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._vector = state_dict["vector"]  # kept on the CPU until the next probe moves it
        self._last_probe_step, self._probe_at = state_dict["last_probe_step"], state_dict["probe_at"]
        self._recheck = state_dict["recheck"]
        self.history = [dict(h) for h in state_dict["history"]]
        for name, detector in self._detectors().items():
            detector.load_state_dict(state_dict[name])

    def _detectors(self) -> dict[str, Any]:
        names = ("non_finite", "spike", "oscillation", "edge", "lr_cap")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def _on_non_finite(self, trainer: pl.Trainer, reason: str) -> None:
        params = trained_params(trainer.optimizers)
        finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
        stop, words = self.non_finite.action(self.on_unstable, finite)
        report.warn(f"{reason}; {words}.")
        trainer.should_stop = trainer.should_stop or stop

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, step: int, cosine, loss_before):
        self._probe_at = None
        self._impose_caps(trainer)  # the edge is read at the lr the next step takes
        params = trained_params(trainer.optimizers)
        if not params:
            return
        sync = trainer.world_size > 1
        try:
            probe = probe_batch(
                pl_module, batch, params=params, method=self.method, sync=sync, init=self._vector, **self.solver
            )
        except NonFiniteCurvatureError as err:
            if not self.non_finite.active:  # else a non-finite loss was reported already
                self._on_non_finite(trainer, f"step {step}: the curvature probe failed: {err}")
            return
        loss = probe.loss
        if sync:
            loss = float(
                trainer.strategy.reduce(torch.tensor(loss, device=trainer.strategy.root_device), reduce_op="mean")
            )
        self._last_probe_step, self._vector, lam = step, probe.eigen.vector, probe.eigen.eigenvalue
        rows = [group_stability(k, sfx, opt, group, lam) for k, sfx, opt, group in param_groups(trainer.optimizers)]
        ratio = max((r.metrics["edge_ratio"] for r in rows if "edge_ratio" in r.metrics), default=0.0)
        self._decide(trainer, step, lam, ratio, rows, self._signs(loss_before, loss, cosine))
        record = {"step": step, "lambda_max": lam, "batch_sharpness": probe.batch_sharpness, "edge_ratio": ratio}
        record.update(
            loss=loss, zone=self.edge.zone(ratio), hvps=probe.eigen.n_matvecs, converged=probe.eigen.converged
        )
        record["unstable"] = self.edge.diverging
        self.history.append(record if cosine is None else {**record, "update_cosine": cosine})
        self.last_metrics = report.log_probe(trainer, probe, cosine, rows)

    def _signs(self, loss_before: float | None, loss: float, cosine: float | None) -> list[str]:
        """The signs that the iteration runs away, in words."""
        signs = []
        if loss_before is not None and loss > loss_before:
            signs.append(f"the probed batch's loss rose over the step ({loss_before:.4g} -> {loss:.4g})")
        oscillating, reason = self.oscillation.check(cosine) if self.oscillation is not None else (False, None)
        return signs + [reason] if oscillating else signs

    def _decide(self, trainer: pl.Trainer, step: int, lam: float, ratio: float, rows: list, signs: list[str]) -> None:
        was_diverging = self.edge.diverging
        diverging, reason = self.edge.check(ratio, signs, spiking=self.spike is not None and self.spike.active)
        reached, message = self.edge.check_reached(ratio)
        if reached:
            report.info(f"step {step}: {message}")
        if self.on_unstable == "cap_lr":
            for message in self.lr_cap.update(rows, lam, diverging):
                report.info(f"step {step}: {message}")
        if diverging and not was_diverging:
            table = report.divergence_table(rows, lam, self.lr_cap.caps, self.on_unstable)
            report.warn(f"step {step}: diverging: {reason}. The step is past the stability edge.\n{table}")
            trainer.should_stop = trainer.should_stop or self.on_unstable == "stop"
        # Past the edge with no sign yet: look again after 1, 2, 4, ... steps (a divergence is fast, a catapult rare).
        past = self.edge.zone(ratio) == "past"
        self._recheck = min(2 * self._recheck, self.every_n_steps) if past else 1
        if past and not diverging:
            self._probe_at = step + self._recheck // 2


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MisconfigurationException(message)


def _check_int(name: str, value: Any, low: int) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{name} must be an integer >= {low}, got {value!r}",
    )


def _loss_of(outputs: Any) -> Tensor | None:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, Tensor) and outputs.numel() == 1 else None
