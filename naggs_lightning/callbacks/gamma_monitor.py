"""GammaMonitor: log NAG-GS's gamma and mu per parameter group, beside LearningRateMonitor's ``lr-NAGGS``.

NAG-GS has no ``momentum`` or ``betas`` key, so ``LearningRateMonitor(log_momentum=True)`` logs 0 for it;
its second state variable is gamma, which relaxes geometrically to mu
(:math:`\\gamma_k = \\mu + (\\gamma_0 - \\mu)(1 + \\alpha)^{-k}`). This callback logs both, with keys in
LearningRateMonitor's style: ``lr-NAGGS-gamma`` and ``lr-NAGGS-mu`` for one parameter group,
``lr-NAGGS/pg1-gamma``, ``lr-NAGGS/pg2-gamma`` (or the groups' ``name``) for several, ``lr-NAGGS-1-gamma``
and ``lr-NAGGS-2-gamma`` for two NAG-GS optimizers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer

from naggs_lightning.optim import is_naggs

__all__ = ["GammaMonitor"]


class GammaMonitor(Callback):
    """Log gamma (and mu) of every optimizer whose parameter groups have a ``gamma`` (NAGGS).

    Args:
        logging_interval: as ``LearningRateMonitor``'s: ``"step"`` (every ``trainer.log_every_n_steps``
            optimizer steps), ``"epoch"`` (at the start of each training epoch) or ``None`` (both, its default).
            The values are logged on the same steps, with the same step number, as ``LearningRateMonitor``
            with the same ``logging_interval`` logs the lr of an optimizer without a scheduler.
        log_mu: also log mu (it is constant unless something changes it, e.g. a tuner or a schedule).

    Example::

        trainer = Trainer(callbacks=[LearningRateMonitor(), GammaMonitor()])
    """

    def __init__(self, logging_interval: Literal["step", "epoch"] | None = None, log_mu: bool = True) -> None:
        if logging_interval not in ("step", "epoch", None):
            raise MisconfigurationException(
                f"GammaMonitor: logging_interval must be 'step', 'epoch' or None, got {logging_interval!r}"
            )
        self.logging_interval = logging_interval
        self.log_mu = log_mu

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationException("Cannot use GammaMonitor callback with a Trainer that has no logger.")
        if not self.stats(trainer.optimizers):
            rank_zero_warn("GammaMonitor: no optimizer has a 'gamma' in its parameter groups; nothing will be logged")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        # LearningRateMonitor's condition (Lightning's own for logging a step's metrics).
        if self.logging_interval != "epoch" and trainer._logger_connector.should_update_logs:
            self._log(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.logging_interval != "step":
            self._log(trainer)

    def stats(self, optimizers: list[Optimizer]) -> dict[str, float]:
        """The values to log, keyed as LearningRateMonitor names its ``lr`` (plus ``-gamma`` / ``-mu``)."""
        with_gamma = [opt for opt in optimizers if is_naggs(opt)]
        kinds = Counter(type(opt).__name__ for opt in with_gamma)
        seen: Counter[str] = Counter()
        out: dict[str, float] = {}
        for opt in with_gamma:
            kind = type(opt).__name__
            seen[kind] += 1
            name = f"lr-{kind}" + (f"-{seen[kind]}" if kinds[kind] > 1 else "")
            groups = opt.param_groups
            for i, group in enumerate(groups):
                key = f"{name}/{group.get('name', f'pg{i + 1}')}" if len(groups) > 1 else name
                out[f"{key}-gamma"] = float(group["gamma"])
                if self.log_mu and "mu" in group:
                    out[f"{key}-mu"] = float(group["mu"])
        return out

    def _log(self, trainer: Trainer) -> None:
        stats = self.stats(trainer.optimizers)
        if stats:
            # LearningRateMonitor's step: optimizer steps taken so far, counted once under gradient accumulation
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=step)
