"""The theory's step for a Lightning model in one call.

Lightning's ``Tuner.lr_find`` trains a few hundred steps at growing learning rates and suggests the lr
where the loss fell fastest; it knows nothing of NAG-GS's mu and gamma. :func:`suggest_lr` measures
the top Hessian eigenvalue of the training loss the run will meet, after a short, safe warm-up on a copy
of the model (the same measurement as ``naggs-tune``'s seed: :func:`~naggs_lightning.lr.measure.measured_seed`),
and returns the step the theory recommends for the mu and gamma the model's own NAGGS optimizer uses
(AdaNAGGS: the warm-up and the bracket train with it, with its beta2 and eps, and the curvature is the
preconditioned sharpness in its metric)
(:class:`~naggs_lightning.lr.seed.TheorySeed`; the suggested lr is its ``alpha``). The model itself takes
no step and is left as it was.

:class:`~naggs_lightning.callbacks.lr_finder.TheoryLRFinder` does the same inside ``Trainer.fit`` and sets
the lr, as ``LearningRateFinder`` does. docs/tuner.md compares both on the shipped tasks.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule

from naggs_lightning.lr.defaults import BRACKET_STEPS, CURVATURE_BATCHES, WARMUP_STEPS
from naggs_lightning.lr.errors import LRError
from naggs_lightning.lr.measure import NaggsHyperparameters, measured_seed, naggs_hyperparameters
from naggs_lightning.lr.seed import TheorySeed

__all__ = ["suggest_lr"]


def _hyperparameters(model: LightningModule, mu: float | None, gamma: float | None) -> NaggsHyperparameters:
    found = naggs_hyperparameters(model)
    if found is None and (mu is None or gamma is None):
        raise LRError(
            f"{type(model).__name__}.configure_optimizers() does not return NAGGS: pass mu= and gamma= to suggest_lr"
        )
    if found is None:  # a model without NAG-GS: plain NAGGS at the given mu and gamma
        return NaggsHyperparameters(float(mu), float(gamma), False)
    return found._replace(
        mu=float(mu) if mu is not None else found.mu, gamma=float(gamma) if gamma is not None else found.gamma
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
    bracket_steps: int = BRACKET_STEPS,
) -> TheorySeed:
    """The NAG-GS step (lr) the theory recommends for ``model`` on its training data.

    Args:
        model: the LightningModule; mu and gamma come from the NAGGS (or AdaNAGGS) its ``configure_optimizers``
            returns unless given, and the warm-up trains with that optimizer's class.
        datamodule: where the training batches come from; ``None`` uses the model's own ``train_dataloader``.
        mu, gamma: override the optimizer's values.
        safety: factor in (0, 1] on the theory's step (it sits a hair under the stability edge).
        warmup_steps: NAG-GS steps of the warm-up on a copy of the model before the curvature is read
            (0: read at initialisation, which underestimates a network's curvature 10-30x).
        curvature_batches: training batches read after the warm-up; the largest top Hessian eigenvalue is used.
        bracket_steps: steps of each short run of the bracket above the theory's step
            (:mod:`~naggs_lightning.lr.bracket`: 1, 2 and 4 times it, from the initialisation, on copies of the
            model); 0 returns the theory's step itself.

    Returns:
        A :class:`~naggs_lightning.lr.seed.TheorySeed`: ``alpha`` is the suggested lr; ``lambda_max``,
        ``alpha_crit``, ``regime`` and the warm-up's record say why (``describe()`` in one line).

    Example::

        seed = naggs_lightning.suggest_lr(model, datamodule)
        print(seed.describe())
        model.lr = seed.alpha
    """
    hyper = _hyperparameters(model, mu, gamma)
    return measured_seed(
        model,
        datamodule,
        hyper.mu,
        hyper.gamma,
        fixed_gamma=hyper.fixed_gamma,
        optimizer=hyper.kind,
        safety=safety,
        warmup_steps=warmup_steps,
        curvature_batches=curvature_batches,
        bracket_steps=bracket_steps,
        device=next(model.parameters()).device,
    )
