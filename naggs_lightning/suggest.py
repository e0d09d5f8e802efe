"""The theory's step for a Lightning model in one call, and a callback shaped like Lightning's ``LearningRateFinder``.

Lightning's ``Tuner.lr_find`` trains a few hundred steps at growing learning rates and suggests the lr
where the loss fell fastest; it knows nothing of NAG-GS's mu and gamma. :func:`suggest_lr` measures
the top Hessian eigenvalue of the training loss the run will meet, after a short, safe warm-up on a copy
of the model (the same measurement as ``naggs-tune``'s seed: :func:`naggs_lightning.tune.seed.measure_curvature`,
:func:`~naggs_lightning.tune.seed.warmed_up_seed`), and returns the step the theory recommends for the mu
and gamma the model's own NAGGS optimizer uses (:class:`~naggs_lightning.tune.seed.TheorySeed`; the
suggested lr is its ``alpha``). The model itself takes no step and is left as it was.

:class:`TheoryLRFinder` does the same inside ``Trainer.fit`` and sets the lr, as
``LearningRateFinder`` does. docs/tuner.md compares both on the shipped tasks.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from naggs_lightning.tune.seed import TheorySeed, measured_seed, naggs_hyperparameters
from naggs_lightning.tune.warmup import CURVATURE_BATCHES, WARMUP_STEPS

__all__ = ["suggest_lr", "TheoryLRFinder"]


def _hyperparameters(model: LightningModule, mu: float | None, gamma: float | None) -> tuple[float, float, bool]:
    found = naggs_hyperparameters(model) if mu is None or gamma is None else None
    if found is None and (mu is None or gamma is None):
        raise ValueError(
            f"{type(model).__name__}.configure_optimizers() does not return NAGGS: pass mu= and gamma= to suggest_lr"
        )
    fixed_gamma = found[2] if found is not None else False
    return (
        float(mu) if mu is not None else found[0],
        float(gamma) if gamma is not None else found[1],
        fixed_gamma,
    )


def suggest_lr(
    model: LightningModule,
    datamodule: LightningDataModule | None = None,
    *,
    mu: float | None = None,
    gamma: float | None = None,
    safety: float = 0.9,
    warmup_steps: int = WARMUP_STEPS,
    curvature_batches: int = CURVATURE_BATCHES,
) -> TheorySeed:
    """The NAG-GS step (lr) the theory recommends for ``model`` on its training data.

    Args:
        model: the LightningModule; mu and gamma come from the NAGGS its ``configure_optimizers`` returns
            unless given.
        datamodule: where the training batches come from; ``None`` uses the model's own ``train_dataloader``.
        mu, gamma: override the optimizer's values.
        safety: factor in (0, 1] on the theory's step (it sits a hair under the stability edge).
        warmup_steps: NAG-GS steps of the warm-up on a copy of the model before the curvature is read
            (0: read at initialisation, which underestimates a network's curvature 10-30x).
        curvature_batches: training batches read after the warm-up; the largest top Hessian eigenvalue is used.

    Returns:
        A :class:`~naggs_lightning.tune.seed.TheorySeed`: ``alpha`` is the suggested lr; ``lambda_max``,
        ``alpha_crit``, ``regime`` and the warm-up's record say why (``describe()`` in one line).

    Example::

        seed = naggs_lightning.suggest_lr(model, datamodule)
        print(seed.describe())
        model.lr = seed.alpha
    """
    mu, gamma, fixed_gamma = _hyperparameters(model, mu, gamma)
    return measured_seed(
        model,
        datamodule,
        mu,
        gamma,
        fixed_gamma=fixed_gamma,
        safety=safety,
        warmup_steps=warmup_steps,
        n_batches=curvature_batches,
        device=next(model.parameters()).device,
    )


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

    At ``on_train_start`` (the first moment the trainer's training batches exist) it measures the top
    Hessian eigenvalue after :func:`suggest_lr`'s warm-up (on a copy of the model) and computes its step for the
    optimizer's mu and gamma; with ``update_attr`` it writes it to the model's ``lr`` / ``learning_rate``
    attribute (or ``attr_name``), and always to every NAGGS parameter group (and the base lr of
    schedulers on those optimizers), so the run trains with it. Under DDP rank 0's measurement is
    broadcast so every rank uses the same step. The result is kept in :attr:`optimal_lr`.

    Args:
        safety: factor in (0, 1] on the theory's step.
        warmup_steps: steps of the warm-up on a copy of the model (0: read at initialisation).
        curvature_batches: training batches read after the warm-up.
        update_attr: also set the model's lr attribute.
        attr_name: that attribute's name; ``""`` looks for ``lr`` then ``learning_rate``.
    """

    def __init__(
        self,
        safety: float = 0.9,
        warmup_steps: int = WARMUP_STEPS,
        curvature_batches: int = CURVATURE_BATCHES,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        if not 0.0 < safety <= 1.0:
            raise ValueError(f"TheoryLRFinder: safety must be in (0, 1], got {safety}")
        if warmup_steps < 0:
            raise ValueError(f"TheoryLRFinder: warmup_steps must be >= 0, got {warmup_steps}")
        if curvature_batches < 1:
            raise ValueError(f"TheoryLRFinder: curvature_batches must be >= 1, got {curvature_batches}")
        self.safety = safety
        self.warmup_steps = warmup_steps
        self.curvature_batches = curvature_batches
        self.update_attr = update_attr
        self.attr_name = attr_name
        self.optimal_lr: TheorySeed | None = None

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> TheorySeed:
        """Measure, compute the step, apply it; returns the :class:`~naggs_lightning.tune.seed.TheorySeed`."""
        mu, gamma, fixed_gamma = _hyperparameters_of(trainer)
        seed = measured_seed(
            pl_module,
            _TrainerBatches(trainer),
            mu,
            gamma,
            fixed_gamma=fixed_gamma,
            safety=self.safety,
            warmup_steps=self.warmup_steps,
            n_batches=self.curvature_batches,
            device=trainer.strategy.root_device,
        )
        seed = trainer.strategy.broadcast(seed)  # every rank trains with rank 0's step
        self.optimal_lr = seed
        if self.update_attr:
            name = self.attr_name or next((n for n in ("lr", "learning_rate") if lightning_hasattr(pl_module, n)), "")
            if name:
                lightning_setattr(pl_module, name, seed.alpha)
        for opt in filter(_is_naggs, trainer.optimizers):
            for group in opt.param_groups:
                group["lr"] = seed.alpha
                if "initial_lr" in group:
                    group["initial_lr"] = seed.alpha
        for config in trainer.lr_scheduler_configs:
            if _is_naggs(config.scheduler.optimizer):
                config.scheduler.base_lrs = [seed.alpha] * len(config.scheduler.base_lrs)
        rank_zero_info(f"TheoryLRFinder: {seed.describe()}; learning rate set to {seed.alpha:.4g}")
        return seed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.lr_find(trainer, pl_module)


def _is_naggs(optimizer: Any) -> bool:
    """Whether ``optimizer`` is NAG-GS-like: its parameter groups hold a ``gamma`` (and ``mu``)."""
    return any("gamma" in group for group in optimizer.param_groups)


def _hyperparameters_of(trainer: Trainer) -> tuple[float, float, bool]:
    for opt in filter(_is_naggs, trainer.optimizers):
        group = next(g for g in opt.param_groups if "gamma" in g)
        return float(group["mu"]), float(group["gamma"]), bool(group.get("fixed_gamma", False))
    raise ValueError("TheoryLRFinder: no NAGGS optimizer (no parameter group with mu and gamma) in the trainer")
