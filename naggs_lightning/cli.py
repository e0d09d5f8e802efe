"""``naggs-train``: a LightningCLI that trains the shipped tasks (or any LightningModule) with NAG-GS or a baseline.

Usage::

    naggs-train fit --config recipes/digits_mlp_naggs.yaml
    naggs-train fit --config recipes/digits_mlp_naggs.yaml --optimizer.lr 0.8 --trainer.max_epochs 5
    naggs-train fit --model MLP --data DigitsDataModule --optimizer NAGGS --optimizer.mu 0.1
    naggs-train fit --optimizer.help NAGGS        # the optimizer's arguments (lr, mu, gamma, ...)

Models and data are chosen by ``class_path`` (``naggs_lightning.tasks.MLP`` or the short ``MLP``; any
importable LightningModule / LightningDataModule works). The optimizer comes from the ``optimizer:``
section (``NAGGS``, ``AccSGD`` or any ``torch.optim`` class), the scheduler from ``lr_scheduler:``;
without an ``optimizer:`` section the model's own ``configure_optimizers`` is used (NAG-GS from the
model's ``lr``, ``mu``, ``gamma`` for the shipped tasks). Callbacks such as
:class:`~naggs_lightning.callbacks.SpectralStabilityMonitor` go under ``trainer.callbacks``.

The working directory is importable, as with ``python -m``: ``class_path: mymod.MyNet`` finds
``mymod.py`` next to where the command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch.cli import ArgsType

from naggs_lightning.lightning_cli import build_cli, import_from_working_directory, unimportable_class_path

__all__ = ["main"]


def _config_files(argv: Sequence[str]) -> list[str]:
    """The files given with ``--config FILE`` / ``--config=FILE`` / ``-c FILE``."""
    files = [value for flag, value in zip(argv, argv[1:]) if flag in ("--config", "-c")]
    return files + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def _exit_if_unimportable(argv: Sequence[str]) -> None:
    """A config naming a module that does not import ends the command with one line and status 2."""
    for path in _config_files(argv):
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports an unreadable config itself
        problem = unimportable_class_path(config)
        if problem is not None:
            print(f"naggs-train: error: {problem}", file=sys.stderr)
            sys.exit(2)


def main(args: ArgsType = None) -> None:
    """Console entry point ``naggs-train``."""
    import_from_working_directory()
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)):
        _exit_if_unimportable([str(a) for a in argv])
    build_cli(args, run=True)


if __name__ == "__main__":
    main()
