"""TheoryLRFinder: the theory's NAG-GS step, set when training starts, shaped like Lightning's ``LearningRateFinder``.

It runs the measurement of :func:`naggs_lightning.lr.suggest_lr` (a short warm-up on a copy of the model,
then the seed for the curvature it met) on the trainer's own training batches, and applies the step.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from naggs_lightning.lr.defaults import BRACKET_STEPS, CURVATURE_BATCHES, WARMUP_STEPS
from naggs_lightning.lr.measure import NaggsHyperparameters, hyperparameters_of, measured_seed
from naggs_lightning.lr.seed import TheorySeed
from naggs_lightning.optim import is_naggs

__all__ = ["TheoryLRFinder"]


class _TrainerBatches:
    """The training batches of a running trainer, in the shape :func:`measure_curvature` reads a datamodule."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def prepare_data(self) -> None:  # the trainer has prepared and set up its data already
        pass

    def setup(self, stage: str) -> None:
        pass

    def train_dataloader(self) -> Any:
        return self.trainer.train_dataloader


class TheoryLRFinder(Callback):
    """Sets the NAG-GS step from the theory when training starts, in the shape of Lightning's ``LearningRateFinder``.

    At ``on_train_start`` (the first moment the trainer's training batches exist) it measures the top Hessian
    eigenvalue after :func:`~naggs_lightning.lr.suggest_lr`'s warm-up (on a copy of the model) and computes its
    step for the optimizer's mu and gamma; with ``update_attr`` it writes it to the model's ``lr`` /
    ``learning_rate`` attribute (or ``attr_name``), and always to every NAGGS parameter group (and the base lr
    of schedulers on those optimizers), so the run trains with it. Under DDP rank 0's measurement is broadcast
    so every rank uses the same step. The result is kept in :attr:`optimal_lr`.

    Args:
        safety: factor in (0, 1] on the theory's step.
        warmup_steps: steps of the warm-up on a copy of the model (0: read at initialisation).
        curvature_batches: training batches read after the warm-up.
        bracket_steps: steps of each short run above the theory's step (:mod:`naggs_lightning.lr.bracket`);
            0 sets the theory's step itself.
        update_attr: also set the model's lr attribute.
        attr_name: that attribute's name; ``""`` looks for ``lr`` then ``learning_rate``.
    """

    def __init__(
        self,
        safety: float = 0.9,
        warmup_steps: int = WARMUP_STEPS,
        curvature_batches: int = CURVATURE_BATCHES,
        bracket_steps: int = BRACKET_STEPS,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        if not 0.0 < safety <= 1.0:
            raise ValueError(f"TheoryLRFinder: safety must be in (0, 1], got {safety}")
        if warmup_steps < 0:
            raise ValueError(f"TheoryLRFinder: warmup_steps must be >= 0, got {warmup_steps}")
        if curvature_batches < 1:
            raise ValueError(f"TheoryLRFinder: curvature_batches must be >= 1, got {curvature_batches}")
        if bracket_steps != 0 and bracket_steps < 4:
            raise ValueError(f"TheoryLRFinder: bracket_steps must be 0 (no bracket) or >= 4, got {bracket_steps}")
        self.safety = safety
        self.warmup_steps = warmup_steps
        self.curvature_batches = curvature_batches
        self.bracket_steps = bracket_steps
        self.update_attr = update_attr
        self.attr_name = attr_name
        self.optimal_lr: TheorySeed | None = None

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> TheorySeed:
        """Measure, compute the step, apply it; returns the :class:`~naggs_lightning.lr.seed.TheorySeed`."""
        hyper = _hyperparameters_of(trainer)
        seed = measured_seed(
            pl_module,
            _TrainerBatches(trainer),
            hyper.mu,
            hyper.gamma,
            fixed_gamma=hyper.fixed_gamma,
            optimizer=hyper.kind,
            safety=self.safety,
            warmup_steps=self.warmup_steps,
            curvature_batches=self.curvature_batches,
            bracket_steps=self.bracket_steps,
            device=trainer.strategy.root_device,
        )
        seed = trainer.strategy.broadcast(seed)  # every rank trains with rank 0's step
        self.optimal_lr = seed
        if self.update_attr:
            name = self.attr_name or next((n for n in ("lr", "learning_rate") if lightning_hasattr(pl_module, n)), "")
            if name:
                lightning_setattr(pl_module, name, seed.alpha)
        for opt in filter(is_naggs, trainer.optimizers):
            for group in opt.param_groups:
                group["lr"] = seed.alpha
                if "initial_lr" in group:
                    group["initial_lr"] = seed.alpha
        for config in trainer.lr_scheduler_configs:
            if is_naggs(config.scheduler.optimizer):
                config.scheduler.base_lrs = [seed.alpha] * len(config.scheduler.base_lrs)
        rank_zero_info(f"TheoryLRFinder: {seed.describe()}; learning rate set to {seed.alpha:.4g}")
        return seed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.lr_find(trainer, pl_module)


def _hyperparameters_of(trainer: Trainer) -> NaggsHyperparameters:
    for opt in filter(is_naggs, trainer.optimizers):
        return hyperparameters_of(opt)
    raise ValueError("TheoryLRFinder: no NAGGS optimizer (no parameter group with mu and gamma) in the trainer")
