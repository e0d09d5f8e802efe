r"""SpectralStabilityMonitor: a thin Lightning callback that measures, runs a list of detectors, and acts.

The detectors share one interface (:mod:`naggs_lightning.callbacks.detector`); :func:`default_detectors` builds
the default list. The monitor owns what is not a rule: the probe schedule, the curvature probe, the logging,
the history, and the actions (the warning, the lr cap of :mod:`naggs_lightning.callbacks.lr_cap`, the stop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from naggs_lightning.callbacks import report
from naggs_lightning.callbacks.collapse import CollapseDetector
from naggs_lightning.callbacks.detector import Decision, Detector, Observation
from naggs_lightning.callbacks.edge import EdgeOfStabilityDetector
from naggs_lightning.callbacks.groups import group_stability, in_metric, param_groups
from naggs_lightning.callbacks.lr_cap import LrCap
from naggs_lightning.callbacks.non_finite import NonFiniteLossDetector
from naggs_lightning.callbacks.oscillation import OscillationDetector
from naggs_lightning.callbacks.rollback import Snapshot
from naggs_lightning.callbacks.schedule import DENSE_GROWTH, ProbeSchedule
from naggs_lightning.callbacks.spike import SpikeDetector
from naggs_lightning.curvature import Algorithm, Method, NonFiniteCurvatureError, optimizer_metric, probe_batch

__all__ = ["SpectralStabilityMonitor", "default_detectors"]

_ACTIONS = ("warn", "cap_lr", "stop")


def default_detectors() -> list[Detector]:
    """The detectors a monitor runs when given none, in order (later ones read what earlier ones found)."""
    return [
        NonFiniteLossDetector(),
        SpikeDetector(),
        OscillationDetector(),
        EdgeOfStabilityDetector(),
        CollapseDetector(),
    ]


class SpectralStabilityMonitor(Callback):
    r"""Estimate the loss Hessian's top eigenvalue during training and tell the edge of stability from divergence.

    Every ``every_n_steps`` optimizer steps, and densely early in training and after the lr rose (steps 1, 8, 64
    from the start: :mod:`naggs_lightning.callbacks.schedule`), it measures the current batch with
    :func:`naggs_lightning.curvature.probe_batch` (side-effect free): :math:`\lambda_{max}` of the loss's
    Hessian (warm-started Lanczos), the batch sharpness (logged for comparison) and the loss after the step. Each
    param group's edge comes from :mod:`naggs_lightning.callbacks.groups` (NAG-GS :math:`\lambda_{stab}(\alpha)`,
    SGD :math:`2(1+\beta)/\eta`). For :class:`~naggs_lightning.AdaNAGGS` everything is read in the optimizer's
    metric P (THEORY.md 2d): :math:`\lambda_{max}` is the preconditioned sharpness, the top eigenvalue of
    :math:`P^{-1/2} H P^{-1/2}` with P the optimizer's own (``AdaNAGGS.metric``), the batch sharpness is taken
    along :math:`P^{-1/2} g`, and the edge is NAG-GS's :math:`\lambda_{stab}(\alpha)`; a parameter without a
    metric yet reads P = 1. A trainer whose optimizers mix a metric with plain steps is refused at the start of
    training (:func:`~naggs_lightning.callbacks.groups.in_metric`). What it means is decided by a list of detectors
    (:mod:`naggs_lightning.callbacks.detector`), by default (:func:`default_detectors`):

    * :class:`~naggs_lightning.callbacks.NonFiniteLossDetector`: a NaN or inf loss, checked every batch.
    * :class:`~naggs_lightning.callbacks.SpikeDetector`: a loss spike brings the probe forward.
    * :class:`~naggs_lightning.callbacks.OscillationDetector`: the cosine between the last two updates.
    * :class:`~naggs_lightning.callbacks.EdgeOfStabilityDetector`: the ratio :math:`\lambda_{max}` / edge **at
      the edge** (normal for a network trained with a fixed step; reported once through Lightning's logger,
      never warned) or **diverging** (well past the edge together with a sign: the probed batch's loss rose
      over the step, or the updates oscillate); past the edge without a sign, the next probes come after 1, 2,
      4, ... steps.
    * :class:`~naggs_lightning.callbacks.CollapseDetector`: the loss left its initial value (fell, or jumped) and
      came back to it, and sits there: the step threw the network into a flat region. ``cap_lr`` then rolls the
      weights back to the start of the dense phase and restarts at a quarter of the lr
      (:mod:`~naggs_lightning.callbacks.rollback`), or, past the dense phase, halves the lr, whatever the curvature.

    On divergence ``on_unstable`` decides: ``"warn"`` (a :class:`StabilityWarning` with a table, once per
    episode), ``"cap_lr"`` (warn and cap the lr: :mod:`naggs_lightning.callbacks.lr_cap`) or ``"stop"`` (warn and
    set ``trainer.should_stop``; :attr:`stop_reason` says why). Under DDP products and losses are averaged
    across ranks, so every rank decides alike. The logged keys (``stability/...``) are listed in
    ``docs/monitor.md``; :attr:`history` keeps one record per probe; ``state_dict`` saves all for resume, each
    detector's state under its name.

    Args:
        every_n_steps: optimizer steps between scheduled probes (default 500: about 2-3 % of a digits run).
        dense_growth: the dense phase's probes fall at 1, ``dense_growth``, ``dense_growth``\ :sup:`2`, ... steps
            from the start and from each lr rise, while below ``every_n_steps / 4``; 0: no dense phase
            (:class:`~naggs_lightning.callbacks.schedule.ProbeSchedule`).
        on_unstable: ``"warn"``, ``"cap_lr"`` or ``"stop"``.
        detectors: the rules, run in this order (``None``: :func:`default_detectors`). Each detector's settings
            are its constructor's arguments, e.g. ``[NonFiniteLossDetector(), SpikeDetector(factor=5.0),
            EdgeOfStabilityDetector(divergence_ratio=3.0)]`` (no oscillation rule, a later spike).
        safety_factor: ``cap_lr`` sets lr to this fraction of the stable limit, in (0, 1].
        rollback: under ``cap_lr``, keep the module's and optimizers' state from the start of each dense phase (one
            copy in host memory, while the phase lasts) and restore it on a collapse in that phase.
        max_iter, tol, method, algorithm: the eigen-solver (:func:`naggs_lightning.curvature.extreme_eigenpair`).
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        *,
        on_unstable: Literal["warn", "cap_lr", "stop"] = "warn",
        detectors: list[Detector] | None = None,
        dense_growth: int = DENSE_GROWTH,
        safety_factor: float = 0.9,
        rollback: bool = True,
        max_iter: int = 20,
        tol: float = 1e-2,
        method: Method = "exact",
        algorithm: Algorithm = "lanczos",
    ) -> None:
        _check_int("every_n_steps", every_n_steps, 1)
        _check(on_unstable in _ACTIONS, f"on_unstable must be one of {_ACTIONS}, got {on_unstable!r}")
        _check_int("max_iter", max_iter, 1)
        _check(0.0 <= tol < 1.0, f"tol must be in [0, 1), got {tol!r}")
        _check(
            method in ("exact", "finite_difference"), f"method must be 'exact' or 'finite_difference', got {method!r}"
        )
        _check(algorithm in ("lanczos", "power"), f"algorithm must be 'lanczos' or 'power', got {algorithm!r}")
        self.detectors = _checked_detectors(default_detectors() if detectors is None else detectors)
        # The per-batch hooks call only the detectors that override them (the loop runs every batch).
        self._on_batch = [d for d in self.detectors if type(d).on_batch is not Detector.on_batch]
        self._on_step = [d for d in self.detectors if type(d).on_step is not Detector.on_step]
        self._lrs: list[float] = []  # the groups' lrs at the last step: the schedule reads them when they move
        self.every_n_steps, self.on_unstable = every_n_steps, on_unstable
        self.solver = {"max_iter": max_iter, "tol": tol, "algorithm": algorithm}
        self.method = method
        self.rollback = bool(rollback) and on_unstable == "cap_lr"
        self._snapshot: Snapshot | None = None  # the state at the dense phase's start, while it lasts
        try:
            self.lr_cap = LrCap(safety_factor)
            self.schedule = ProbeSchedule(every_n_steps, growth=dense_growth)
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        # Lightning reads state_key on every hook call (profiler names): build the string once.
        self._state_key = self._generate_state_key(every_n_steps=every_n_steps, on_unstable=on_unstable)
        self.history: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}
        self._vector: Tensor | None = None
        self._last_probe_step: int | None = None
        self._last_step: int | None = None
        self._probe_at: int | None = None  # an unscheduled probe (a detector asked: spike, past the edge)
        self._stop_reason: str | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @property
    def unstable(self) -> bool:
        """Whether a detector holds the run diverging (the last probe found it so, or the loss is not finite)."""
        return any(d.diverging for d in self.detectors)

    @property
    def stop_reason(self) -> str | None:
        """Why this monitor set ``trainer.should_stop`` in the current fit, in its words (``None``: it did not)."""
        return self._stop_reason

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
        self._stop_reason = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            in_metric(trainer.optimizers)
        except ValueError as err:
            raise MisconfigurationException(f"SpectralStabilityMonitor: {err}") from err
        self._last_step = trainer.global_step
        self._snapshot = None
        if self.rollback and self.schedule.dense(trainer.global_step):
            self._snapshot = Snapshot(pl_module, trainer.optimizers, trainer.global_step)

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
        # Every batch: keep this path lean (the overhead budget is a few percent of a 2 ms step).
        loss = _loss_of(outputs)
        if loss is not None and trainer.world_size > 1:
            loss = trainer.strategy.reduce(loss.detach().float(), reduce_op="mean")
        optimizers = trainer.optimizers
        obs = Observation(
            trainer.global_step, self.every_n_steps, loss=None if loss is None else float(loss), optimizers=optimizers
        )
        for detector in self._on_batch:
            if decisions := detector.on_batch(obs):
                self._without_curvature(trainer, obs, decisions)
        if obs.loss is not None and not math.isfinite(obs.loss):  # no step or curvature to read
            return
        if obs.step == self._last_step:  # gradient accumulation: no optimizer step on this batch
            return
        self._last_step = obs.step
        for detector in self._on_step:
            if decisions := detector.on_step(obs):
                self._without_curvature(trainer, obs, decisions)
        lrs = [float(group["lr"]) for opt in optimizers for group in opt.param_groups]
        moved, self._lrs = lrs != self._lrs, lrs
        if moved and self.schedule.observe(obs.step, _lrs_by_group(optimizers)):
            report.info(f"step {obs.step}: the lr rose; probing the curvature densely again.")
            self._snapshot = Snapshot(pl_module, optimizers, obs.step) if self.rollback else None
        elif self._snapshot is not None and not self.schedule.dense(obs.step):
            self._snapshot = None
        due = self.schedule.due(obs.step) or self._last_probe_step is None
        if due or (self._probe_at is not None and obs.step >= self._probe_at):
            self._probe(trainer, pl_module, batch, obs, scheduled=due)

    def _follow(self, obs: Observation, decisions: Sequence[Decision]) -> list[str]:
        """Say what the detectors said and schedule the probes they asked for; return the divergence reasons."""
        diverging = []
        for decision in decisions:
            if decision.action == "inform":
                report.info(f"step {obs.step}: {decision.reason}")
            elif decision.action == "probe":
                at = obs.step + decision.after
                self._probe_at = at if self._probe_at is None else min(self._probe_at, at)
                if decision.reason is not None:
                    when = "now" if decision.after == 0 else f"in {decision.after} steps"
                    report.info(f"step {obs.step}: {decision.reason}; probing the curvature {when}.")
            else:
                diverging.append(decision.reason)
        return diverging

    def _without_curvature(self, trainer: pl.Trainer, obs: Observation, decisions: Sequence[Decision]) -> None:
        """Act on a divergence seen without a curvature (a non-finite loss, a failed probe): warn, maybe stop."""
        for reason in self._follow(obs, decisions):
            params = obs.params
            finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
            stop, words = NonFiniteLossDetector.action(self.on_unstable, finite)
            report.warn(f"step {obs.step}: {reason}; {words}.")
            if stop:
                self._stop(trainer, f"step {obs.step}: {reason}; {words}")

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        trainer.should_stop = True
        self._stop_reason = self._stop_reason or reason

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "vector": None if self._vector is None else self._vector.detach().cpu(),
            "last_probe_step": self._last_probe_step,
            "probe_at": self._probe_at,
            "history": [dict(h) for h in self.history],
            "detectors": {d.name: d.state_dict() for d in self.detectors},
            "lr_cap": self.lr_cap.state_dict(),
            "schedule": self.schedule.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._vector = state_dict["vector"]  # kept on the CPU until the next probe moves it
        self._last_probe_step, self._probe_at = state_dict["last_probe_step"], state_dict["probe_at"]
        self.history = [dict(h) for h in state_dict["history"]]
        states = state_dict.get("detectors", state_dict)  # checkpoints before the detector list kept them flat
        for detector in self.detectors:  # a detector the checkpoint does not know starts fresh
            if detector.name in states:
                detector.load_state_dict(states[detector.name])
        self.lr_cap.load_state_dict(state_dict["lr_cap"])
        if "schedule" in state_dict:  # checkpoints before the dense schedule start it from step 0
            self.schedule.load_state_dict(state_dict["schedule"])

    def _probe(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, obs: Observation, scheduled: bool
    ) -> None:
        self._probe_at = None
        self._impose_caps(trainer)  # the edge is read at the lr the next step takes
        params = obs.params
        if not params:
            return
        sync, step = trainer.world_size > 1, obs.step
        metric = optimizer_metric(trainer.optimizers, params)  # None: the plain Hessian
        try:
            probe = probe_batch(
                pl_module,
                batch,
                params=params,
                method=self.method,
                sync=sync,
                init=self._vector,
                metric=metric,
                **self.solver,
            )
        except NonFiniteCurvatureError as err:
            obs.error = str(err)
            for detector in self.detectors:
                self._without_curvature(trainer, obs, detector.on_probe(obs))
            return
        loss = probe.loss
        if sync:
            loss = float(
                trainer.strategy.reduce(torch.tensor(loss, device=trainer.strategy.root_device), reduce_op="mean")
            )
        self._last_probe_step, self._vector, lam = step, probe.eigen.vector, probe.eigen.eigenvalue
        rows = [group_stability(k, sfx, opt, group, lam) for k, sfx, opt, group in param_groups(trainer.optimizers)]
        obs.lambda_max, obs.rows, obs.loss_after = lam, rows, loss
        obs.edge_ratio = max((r.metrics["edge_ratio"] for r in rows if "edge_ratio" in r.metrics), default=0.0)
        reasons = [reason for detector in self.detectors for reason in self._follow(obs, detector.on_probe(obs))]
        diverging, rolled_back = self.unstable, False
        if self.on_unstable == "cap_lr":
            rolled_back = obs.collapsed and self._roll_back(trainer, pl_module, step)
            may_lift = scheduled and not self.schedule.dense(step)  # see lr_cap: when a reading can lift a cap
            for message in self.lr_cap.update(
                rows, lam, diverging, collapsed=obs.collapsed, rolled_back=rolled_back, may_lift=may_lift
            ):
                report.info(f"step {step}: {message}")
        if reasons:
            reason = "; ".join(reasons)
            table = report.divergence_table(rows, lam, self.lr_cap.caps, self.on_unstable)
            report.warn(f"step {step}: diverging: {reason}.\n{table}")
            if self.on_unstable == "stop":
                self._stop(trainer, f"lambda_max = {lam:.4g} at step {step}: {reason}")
        record = {
            "step": step,
            "lambda_max": lam,
            "batch_sharpness": probe.batch_sharpness,
            "edge_ratio": obs.edge_ratio,
            "in_metric": metric is not None,
        }
        record.update(loss=loss, **obs.notes, hvps=probe.eigen.n_matvecs, converged=probe.eigen.converged)
        record["unstable"] = diverging
        if rolled_back:
            record["rolled_back_to"] = self._snapshot.step
        cosine = obs.update_cosine
        self.history.append(record if cosine is None else {**record, "update_cosine": cosine})
        self.last_metrics = report.log_probe(trainer, probe, cosine, rows)

    def _roll_back(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> bool:
        """Restore the dense phase's snapshot after a collapse (if one is held) and start that phase again."""
        if self._snapshot is None:
            return False
        self._snapshot.restore(pl_module, trainer.optimizers)
        for detector in self.detectors:
            detector.on_rollback()
        self.schedule.restart(step, _lrs_by_group(trainer.optimizers))
        report.info(
            f"step {step}: rolled the module and optimizer state back to step {self._snapshot.step}, before the "
            "collapse; training goes on from there at a lower lr, probing the curvature densely again."
        )
        return True


def _lrs_by_group(optimizers: list[Optimizer]) -> dict[str, float]:
    """Each param group's lr, keyed ``"optimizer_index/group_index"`` (what the schedule reads)."""
    return {key: float(group["lr"]) for key, _, _, group in param_groups(optimizers)}


def _checked_detectors(detectors: Any) -> list[Detector]:
    _check(
        isinstance(detectors, (list, tuple)) and all(isinstance(d, Detector) for d in detectors),
        f"detectors must be a list of Detector instances (naggs_lightning.callbacks.Detector), got {detectors!r}",
    )
    names = [d.name for d in detectors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    _check(
        not duplicates, f"detectors' names must be unique (their state is saved under them), got twice: {duplicates}"
    )
    return list(detectors)


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
