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

from lightning.pytorch.cli import ArgsType

from naggs_lightning.lightning_cli import build_cli, import_from_working_directory

__all__ = ["main"]


def main(args: ArgsType = None) -> None:
    """Console entry point ``naggs-train``."""
    import_from_working_directory()
    build_cli(args, run=True)


if __name__ == "__main__":
    main()
