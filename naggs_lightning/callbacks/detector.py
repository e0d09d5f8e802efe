r"""The interface every detector of :class:`~naggs_lightning.callbacks.SpectralStabilityMonitor` shares.

A detector watches the run and decides; the monitor measures and acts. For each training batch the monitor
fills one :class:`Observation` and hands it to its detectors, in list order, at up to three moments:

* :meth:`Detector.on_batch`: every training batch; ``obs.loss`` is the batch's loss (``None`` when the
  training step returned none). A non-finite loss ends the batch here: it has no step or curvature to read.
* :meth:`Detector.on_step`: once per optimizer step (not on the batches a gradient accumulation skips);
  ``obs.params`` holds the trained parameters after the step.
* :meth:`Detector.on_probe`: at a curvature probe; ``obs.lambda_max``, ``obs.edge_ratio`` (the largest over the
  param groups), ``obs.rows`` (:class:`~naggs_lightning.callbacks.groups.GroupStability`, one per group) and
  ``obs.loss_after`` (the probed batch's loss after the step; ``obs.loss`` is the one before it) are set, or
  ``obs.error`` says why the probe failed (the curvature fields are then ``None``).

Each hook returns a list of :class:`Decision` (empty: nothing to do), the way Lightning's
``EarlyStopping._evaluate_stopping_criteria`` returns ``(should_stop, reason)``: the decision and its reason in
words, no side effect on the trainer. The monitor acts on them:

* ``"inform"``: one line through Lightning's logger (rank zero), never a warning.
* ``"probe"``: probe the curvature ``after`` steps from now (0: at this step); said in words if a reason is given.
* ``"diverging"``: a :class:`~naggs_lightning.callbacks.StabilityWarning`, then what ``on_unstable`` asks
  (warn, cap the lr, stop). A detector returns it once per divergence episode; its :attr:`Detector.diverging`
  says whether the episode still holds (that is :attr:`SpectralStabilityMonitor.unstable`).

Detectors later in the list read what earlier ones left in the observation's scratch fields (``signs``, the
divergence signs in words, ``spiking`` and ``collapsed``), as optax's chained transforms pass their updates along: the
default list is ordered non-finite, spike, oscillation, edge, collapse, and the edge detector reads the spike
and oscillation detectors' findings. Each detector keeps its own state behind :meth:`Detector.state_dict`, saved
under its :attr:`Detector.name` in the monitor's checkpoint state.

The lr cap is not a detector: it is the monitor's *action* for ``on_unstable="cap_lr"``
(:class:`~naggs_lightning.callbacks.lr_cap.LrCap`), applied after all detectors have seen a probe, to the param
groups at or past their edge while any detector holds the run diverging. Keeping it out of the list keeps
every detector's output a decision (the list can be reordered or replaced without moving the lr), and the cap
an effect of those decisions.

The default list is built by :func:`~naggs_lightning.callbacks.monitor.default_detectors`; a new rule is a
module with a :class:`Detector` subclass, its test, and one line there.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from naggs_lightning.callbacks.groups import trained_params

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer

    from naggs_lightning.callbacks.groups import GroupStability

__all__ = ["Action", "Decision", "Detector", "Observation"]

Action = Literal["inform", "probe", "diverging"]
_ACTIONS = ("inform", "probe", "diverging")


@dataclass
class Observation:
    """What the monitor saw at one training batch, filled as the batch's hooks run (see the module docstring)."""

    step: int
    """The optimizer steps taken so far (``trainer.global_step``)."""
    every_n_steps: int
    """The monitor's probe interval (scheduled probes fall on its multiples, and after step 1)."""
    loss: float | None = None
    """The batch's training loss (averaged across DDP ranks); before the step on a probed batch."""
    optimizers: Sequence[Optimizer] = field(default=(), repr=False)
    """The trainer's optimizers (:attr:`params` is read from them)."""
    update_cosine: float | None = None
    """The cosine between the last two parameter updates, when measured (the oscillation detector sets it)."""
    lambda_max: float | None = None
    """The probed batch's top Hessian eigenvalue (probe only)."""
    edge_ratio: float | None = None
    """``lambda_max`` over the edge, the largest over the param groups; 0 when no group has an edge (probe only)."""
    rows: Sequence[GroupStability] = ()
    """Each param group at the measured curvature (probe only)."""
    loss_after: float | None = None
    """The probed batch's loss after the step (probe only)."""
    error: str | None = None
    """Why the probe failed (a model whose loss or parameters are not finite has no curvature)."""
    signs: list[str] = field(default_factory=list)
    """Scratch: divergence signs in words, appended by detectors for those later in the list."""
    spiking: bool = False
    """Scratch: a loss spike is in progress (set by the spike detector, read by the edge detector)."""
    collapsed: bool = False
    """Scratch: a collapse was decided at this probe (set by the collapse detector; ``cap_lr`` then caps the lr
    without the curvature, :mod:`~naggs_lightning.callbacks.lr_cap`)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What detectors add to the probe's record in :attr:`SpectralStabilityMonitor.history` (the edge's zone)."""

    @cached_property
    def params(self) -> list[Tensor]:
        """The trained parameters, gathered from :attr:`optimizers` when first read (most batches never do)."""
        return trained_params(self.optimizers)

    @property
    def probed(self) -> bool:
        """Whether a probe measured the curvature at this batch."""
        return self.lambda_max is not None


@dataclass(frozen=True)
class Decision:
    """What a detector asks the monitor to do, and why (in words, completing ``"step N: ..."``)."""

    action: Action
    reason: str | None = None
    after: int = 0
    """``"probe"``: the steps from now to the probe (0: this step)."""

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"Decision action must be one of {_ACTIONS}, got {self.action!r}")
        if not (isinstance(self.after, int) and self.after >= 0):
            raise ValueError(f"Decision after must be an integer >= 0, got {self.after!r}")

    @classmethod
    def inform(cls, reason: str) -> Decision:
        return cls("inform", reason)

    @classmethod
    def probe(cls, reason: str | None = None, after: int = 0) -> Decision:
        return cls("probe", reason, after)

    @classmethod
    def diverging(cls, reason: str) -> Decision:
        return cls("diverging", reason)


class Detector:
    """A rule of the monitor: observes batches, steps and probes, returns decisions, keeps its own state.

    Subclasses override the hooks they need (the others return nothing) and, if they keep state,
    :meth:`state_dict` / :meth:`load_state_dict`. Settings are constructor arguments with defaults, checked
    there (``ValueError`` naming the argument), so that a LightningCLI config can give them as ``init_args``.
    :attr:`name` (default: the class name) keys the state in the monitor's checkpoint and must be unique in
    a monitor's list.
    """

    name: ClassVar[str] = "detector"
    diverging: bool = False
    """Whether this detector holds the run diverging now (a divergence episode it started is in progress)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def on_batch(self, obs: Observation) -> Sequence[Decision]:
        """Every training batch (``obs.loss``)."""
        return []

    def on_step(self, obs: Observation) -> Sequence[Decision]:
        """Every optimizer step whose loss is finite or unknown (``obs.params``)."""
        return []

    def on_probe(self, obs: Observation) -> Sequence[Decision]:
        """Every curvature probe (``obs.lambda_max``, ``obs.edge_ratio``, ``obs.rows``, or ``obs.error``)."""
        return []

    def on_rollback(self) -> None:
        """The monitor restored the weights from before a collapse (:mod:`~naggs_lightning.callbacks.rollback`):
        forget what describes the run that was undone (loss windows, an episode in progress)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        """The class and the constructor arguments kept as attributes of the same name."""
        params = inspect.signature(type(self).__init__).parameters
        args = [f"{p}={getattr(self, p)!r}" for p in list(params)[1:] if hasattr(self, p)]
        return f"{type(self).__name__}({', '.join(args)})"
