"""The LightningCLI that ``naggs-train`` (:mod:`naggs_lightning.cli`) and ``naggs-tune``'s trials build on.

:func:`build_cli` makes :class:`NaggsCLI`: model and data chosen by ``class_path`` (``naggs_lightning.tasks.MLP``
or the short ``MLP``; any importable LightningModule / LightningDataModule works), the optimizer from the
``optimizer:`` section (``NAGGS``, ``AdaNAGGS``, ``AccSGD`` or any ``torch.optim`` class), the scheduler from
``lr_scheduler:`` (OneCycleLR and CyclicLR stepped per batch). Without an ``optimizer:`` section the model's own
``configure_optimizers`` is used. It sits below both commands, so neither imports the other.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI, LRSchedulerTypeUnion, SaveConfigCallback
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

# LightningCLI resolves the short forms (``--optimizer NAGGS``, ``--model MLP``) among the subclasses
# imported when the parser is built: import the optimizers and tasks before any parsing.
import naggs_lightning.optim  # noqa: F401
import naggs_lightning.tasks  # noqa: F401

__all__ = [
    "NaggsCLI",
    "SaveConfigUnlessLogless",
    "build_cli",
    "import_from_working_directory",
    "unimportable_class_path",
]

# Schedulers that torch documents as stepped after every batch; Lightning's default interval is the epoch.
_PER_STEP_SCHEDULERS: tuple[type, ...] = (OneCycleLR, CyclicLR)

_EPILOG = (
    "Optimizer, scheduler and task arguments are listed per class: --optimizer.help NAGGS (or AdaNAGGS, AccSGD, SGD, "
    "AdamW), --lr_scheduler.help OneCycleLR, --model.help MLP, --data.help DigitsDataModule. OneCycleLR and "
    "CyclicLR step every batch and need cycle_momentum: false with NAGGS (it has no momentum key)."
)


class NaggsCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with the per-batch schedulers stepped per batch."""

    @staticmethod
    def configure_optimizers(
        lightning_module: LightningModule, optimizer: Optimizer, lr_scheduler: LRSchedulerTypeUnion | None = None
    ) -> Any:
        """As LightningCLI's, except that OneCycleLR and CyclicLR step every training step (their ``total_steps`` /
        ``step_size_up`` count batches)."""
        if isinstance(lr_scheduler, _PER_STEP_SCHEDULERS):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}
        return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)

    def instantiate_classes(self) -> None:
        # The shipped tasks define configure_optimizers as the plain-Python fallback; the config's optimizer
        # replacing it is the intended behaviour, so Lightning's warning about it is noise here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by")
            super().instantiate_classes()


class SaveConfigUnlessLogless(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer, which overwrites the file when the trainer has no logger.

    With a logger every run writes into a fresh ``version_N`` folder; with ``logger: false`` every run
    of a folder shares ``default_root_dir``, and Lightning's refusal to overwrite would fail the second
    ``naggs-train fit`` there. The file then describes the latest run, as the checkpoints next to it do.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is None:
            self.overwrite = True
        super().setup(trainer, pl_module, stage)


def import_from_working_directory() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does.

    A console script's ``sys.path`` starts with the script's own folder, so without this a recipe's
    ``class_path: mymod.MyNet`` would not find ``mymod.py`` in the folder the user runs from.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def unimportable_class_path(config: Any) -> str | None:
    """One line naming the first ``class_path`` in ``config`` (a config mapping, at any depth) whose module
    cannot be imported, and why; ``None`` when every named module imports.

    LightningCLI reports such a path under a long usage dump; the commands check their configs first.
    A short name (``MLP``, ``CSVLogger``) has no module to import and is left to LightningCLI.
    """
    if isinstance(config, dict):
        path = config.get("class_path")
        module = path.rpartition(".")[0] if isinstance(path, str) else ""
        if module:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                # A missing submodule of an importable package may be a nested class's path: LightningCLI decides.
                nested = isinstance(exc, ModuleNotFoundError) and exc.name != module.split(".")[0]
                if not (nested and (module + ".").startswith(f"{exc.name}.")):
                    return (
                        f"class_path {path}: cannot import {module!r} ({exc}); run the command from the folder "
                        "that holds it, or install it"
                    )
        values = config.values()
    elif isinstance(config, list):
        values = config
    else:
        return None
    return next((problem for v in values if (problem := unimportable_class_path(v)) is not None), None)


def build_cli(args: ArgsType = None, run: bool = True, **kwargs: Any) -> NaggsCLI:
    """Build (and with ``run=True`` run) the ``naggs-train`` LightningCLI.

    Args:
        args: command-line style arguments (``["fit", "--config", "recipes/x.yaml"]``), a config dict (with
            ``run=False``: ``{"model": {...}, "data": {...}, "optimizer": {...}, "trainer": {...}}``), or
            ``None`` for ``sys.argv``.
        run: run the subcommand (``fit``, ``validate``, ``test``, ``predict``). With ``False`` the config has no
            subcommand and only ``cli.model``, ``cli.datamodule`` and ``cli.trainer`` are built.
        **kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI` (e.g. ``save_config_callback=None``,
            ``trainer_defaults``); they override the defaults chosen here.

    Returns:
        The CLI object, with ``model``, ``datamodule`` and ``trainer`` attributes.
    """
    parser_kwargs = {"description": "Train with NAG-GS and its baselines. " + _EPILOG}
    if run:
        parser_kwargs.update({cmd: {"epilog": _EPILOG} for cmd in NaggsCLI.subcommands()})
    options: dict[str, Any] = dict(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs=parser_kwargs,
        args=args,
        run=run,
        save_config_callback=SaveConfigUnlessLogless,
    )
    options.update(kwargs)
    return NaggsCLI(**options)
