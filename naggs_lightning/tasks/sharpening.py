"""Networks whose curvature grows during training (progressive sharpening), for testing the tuner's seed.

The top Hessian eigenvalue of these models at initialisation is a fraction of what the run meets a
hundred steps later (THEORY.md section 2c), so a step computed at initialisation is computed for a
model the run soon leaves. Each trains in a few seconds on one CPU core.

* :class:`DeepDigitsCNN` on :class:`~naggs_lightning.tasks.DigitsDataModule`: four 3x3 convolutions
  without normalisation, cross-entropy.
* :class:`SignalCNN` on :class:`SignalDataModule`: a 1-D CNN classifying generated noisy waveforms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from naggs_lightning.tasks.base import ClassificationTask, GeneratedDataModule

__all__ = ["DeepDigitsCNN", "SignalCNN", "SignalDataModule"]


class DeepDigitsCNN(ClassificationTask):
    """Four 3x3 convolutions (ReLU, no normalisation) and a linear head on the 8x8 digit images.

    Takes the 64 flat features of :class:`~naggs_lightning.tasks.DigitsDataModule`.

    Args:
        channels: output channels of the four convolutions; a 2x2 max-pooling follows the second.
        lr, mu, gamma: the fallback NAG-GS optimizer's hyper-parameters.
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int] = (8, 16, 16, 32),
        lr: float = 0.5,
        mu: float = 1.0,
        gamma: float = 1.0,
    ) -> None:
        super().__init__(num_classes=10, lr=lr, mu=mu, gamma=gamma)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels must be four positive widths, got {channels}")
        self.save_hyperparameters()
        c1, c2, c3, c4 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(c4 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x.view(-1, 1, 8, 8)).flatten(1))


class SignalDataModule(GeneratedDataModule):
    """Noisy 1-D waveforms of ``length`` samples in five classes (sine, square, triangle, sawtooth, chirp).

    Each signal has a random frequency (1.5 to 6 periods per window), phase and amplitude (0.5 to 1.5),
    plus Gaussian noise of standard deviation ``noise``; the classes are balanced. Generated from
    ``seed``, each split from its own stream, so nothing is downloaded.

    Args:
        length: samples per signal (>= 8).
        noise: standard deviation of the added noise (>= 0).
        n_train, n_val, n_test: signals per split.
        batch_size: signals per batch.
        seed: seed of the generation.
        num_workers: DataLoader workers.
    """

    num_classes = 5

    def __init__(
        self,
        length: int = 48,
        noise: float = 0.4,
        n_train: int = 2000,
        n_val: int = 500,
        n_test: int = 500,
        batch_size: int = 100,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if length < 8:
            raise ValueError(f"length must be >= 8, got {length}")
        if not (noise >= 0.0 and math.isfinite(noise)):
            raise ValueError(f"noise must be finite and >= 0, got {noise}")
        self.save_hyperparameters()
        self.length = length
        self.noise = noise
        self._generate_splits(n_train, n_val, n_test, batch_size, seed, num_workers)

    def _generate(self, n: int, seed: int) -> TensorDataset:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % self.num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        t = torch.linspace(0.0, 1.0, self.length).expand(n, -1)
        freq = 1.5 + 4.5 * torch.rand(n, 1, generator=gen)
        phase = torch.rand(n, 1, generator=gen)
        amplitude = 0.5 + torch.rand(n, 1, generator=gen)
        cycles = freq * t + phase
        frac = cycles - cycles.floor()
        waves = torch.stack(
            [
                torch.sin(2 * math.pi * cycles),
                torch.sign(torch.sin(2 * math.pi * cycles)),
                4 * (frac - 0.5).abs() - 1,
                2 * frac - 1,
                torch.sin(2 * math.pi * (phase + freq * t * (0.5 + t))),
            ]
        )
        x = amplitude * waves[labels, torch.arange(n)] + self.noise * torch.randn(n, self.length, generator=gen)
        return TensorDataset(x.unsqueeze(1), labels)


class SignalCNN(ClassificationTask):
    """Three 1-D convolutions (kernel 5, ReLU, no normalisation), global average pooling and a linear head.

    Args:
        channels: width of every convolution.
        num_classes: number of classes (5 for :class:`SignalDataModule`).
        lr, mu, gamma: the fallback NAG-GS optimizer's hyper-parameters.
    """

    def __init__(
        self, channels: int = 16, num_classes: int = 5, lr: float = 0.5, mu: float = 1.0, gamma: float = 1.0
    ) -> None:
        super().__init__(num_classes=num_classes, lr=lr, mu=mu, gamma=gamma)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(-1))
