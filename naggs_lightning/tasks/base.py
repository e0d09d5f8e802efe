"""What every shipped task shares: the loss contract, the logged keys, the fallback optimizer, in-memory data.

Contract kept by every task (the curvature code, the callbacks and the tuner rely on it):

* ``compute_loss(batch)`` returns the scalar training loss of a batch, with no logging and no side
  effects; ``training_step`` is ``compute_loss`` plus logging.
* logged keys: ``train_loss`` (every step), ``val_loss`` and, for classification, ``val_acc`` (every
  epoch), ``test_loss`` and ``test_acc`` in test.
* no hard-coded optimizer: under ``naggs-train`` the config's ``optimizer:`` / ``lr_scheduler:`` replace
  :meth:`Task.configure_optimizers`; in plain Python it returns ``NAGGS(lr, mu, gamma)`` from the
  module's own init args.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from naggs_lightning.optim import NAGGS

__all__ = ["Task", "ClassificationTask", "ArrayDataModule"]

Batch = tuple[Tensor, Tensor]


class Task(pl.LightningModule, ABC):
    """Base of the shipped tasks: ``compute_loss`` drives training and evaluation.

    Args:
        lr: NAG-GS step size alpha of the fallback optimizer (unused when the CLI injects one).
        mu: NAG-GS mu of the fallback optimizer.
        gamma: NAG-GS initial gamma of the fallback optimizer.
    """

    def __init__(self, lr: float = 0.1, mu: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        # Plain attributes, so that Lightning's learning-rate finder (which looks for ``lr``) can set it.
        self.lr = lr
        self.mu = mu
        self.gamma = gamma

    @abstractmethod
    def compute_loss(self, batch: Batch) -> Tensor:
        """The scalar training loss of ``batch``; no logging, no side effects."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return NAGGS(self.parameters(), lr=self.lr, mu=self.mu, gamma=self.gamma)


class ClassificationTask(Task):
    """A classifier trained with cross-entropy; logs micro-averaged (plain) accuracy.

    Subclasses implement ``forward`` (inputs to logits); tasks whose batches are not ``(inputs,
    labels)`` override :meth:`logits_and_targets`.

    Args:
        num_classes: number of classes.
        lr, mu, gamma: see :class:`Task`.
    """

    def __init__(self, num_classes: int, lr: float = 0.1, mu: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__(lr=lr, mu=mu, gamma=gamma)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def logits_and_targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits of shape ``(N, num_classes)`` and integer targets of shape ``(N,)``."""
        inputs, targets = batch
        return self(inputs), targets

    def compute_loss(self, batch: Batch) -> Tensor:
        logits, targets = self.logits_and_targets(batch)
        return F.cross_entropy(logits, targets)

    def _evaluate(self, batch: Batch, stage: str) -> None:
        logits, targets = self.logits_and_targets(batch)
        metric = self.val_acc if stage == "val" else self.test_acc
        metric(logits, targets)
        # sync_dist: under DDP every rank must see the same val_loss (checkpointing, early stopping, pruning).
        loss = F.cross_entropy(logits, targets)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")


class SplitDataModule(pl.LightningDataModule):
    """Loaders over ``self.splits`` (``"train"``, ``"val"``, ``"test"`` datasets), which subclasses fill;
    the training split is shuffled (by the global seed), the others are not."""

    splits: dict[str, TensorDataset]
    batch_size: int
    num_workers: int

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class GeneratedDataModule(SplitDataModule, ABC):
    """Splits generated from a seed, each split from its own stream, so nothing is downloaded.

    A subclass sets what :meth:`_generate` needs, then calls :meth:`_generate_splits` from its ``__init__``.
    """

    def _generate_splits(
        self, n_train: int, n_val: int, n_test: int, batch_size: int, seed: int, num_workers: int
    ) -> None:
        if min(n_train, n_val, n_test) < 1 or batch_size < 1:
            raise ValueError(
                f"n_train, n_val, n_test and batch_size must be >= 1, got {n_train}, {n_val}, {n_test}, {batch_size}"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits = {
            name: self._generate(n, seed * 3 + offset)
            for offset, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))
        }

    @abstractmethod
    def _generate(self, n: int, seed: int) -> TensorDataset:
        """``n`` examples from the generator seeded with ``seed``."""


class ArrayDataModule(SplitDataModule, ABC):
    """In-memory features and labels split into train / val / test, deterministic in ``seed``.

    Subclasses implement :meth:`load`. Splits are stratified by label; features are
    standardised with the training split's mean and standard deviation (constant features are left
    centred, not divided by zero).

    Args:
        batch_size: training and evaluation batch size.
        val_fraction: share of the samples held out for validation.
        test_fraction: share of the samples held out for test.
        seed: seed of the split (training order follows the global seed, e.g. ``seed_everything``).
        num_workers: DataLoader workers; 0 loads in the main process, which is fastest for these sizes.
    """

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ValueError(
                "val_fraction and test_fraction must each be in (0, 1) with a sum below 1, "
                f"got {val_fraction} and {test_fraction}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}

    @abstractmethod
    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All features ``(n, d)`` and labels ``(n,)``."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from sklearn.model_selection import train_test_split

        features, labels = self.load()
        held_out = self.val_fraction + self.test_fraction
        x_train, x_rest, y_train, y_rest = train_test_split(
            features, labels, test_size=held_out, random_state=self.seed, stratify=labels
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=self.test_fraction / held_out, random_state=self.seed, stratify=y_rest
        )
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0.0] = 1.0
        for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val), ("test", x_test, y_test)):
            x = torch.as_tensor((x - mean) / std, dtype=torch.float32)
            self.splits[name] = TensorDataset(x, torch.as_tensor(y, dtype=torch.long))
