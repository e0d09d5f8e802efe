"""A panel of user models: small networks written the way a Lightning user writes them, not for NAG-GS.

Each is a plain ``LightningModule`` whose ``configure_optimizers`` builds the optimizer a caller chose
(``optimizer_factory``, a callable of ``(params, lr)``; the model's ``lr`` attribute is what Lightning's
``lr_find`` sets), logs ``train_loss`` and ``val_acc``, and has no ``compute_loss``: the package must read the
loss from ``training_step`` as it would for any user's module. Under ``naggs-tune`` the config's
``optimizer:`` replaces ``configure_optimizers``.

=================  ===============================================  ==========================================
name               model                                            data
=================  ===============================================  ==========================================
``mlp``            3-layer ReLU MLP (64-128-64-10)                  scikit-learn digits, batch 64, 8 epochs
``cnn``            plain 2-D CNN (two conv + max-pool + linear)     digits as 1x8x8 images, batch 64, 8 epochs
``resnet``         CNN with BatchNorm and two residual blocks       digits as 1x8x8 images, batch 64, 6 epochs
``transformer``    ``nn.TransformerEncoder`` (2 layers, d 32)       generated token sequences (which symbol
                   with a learned position embedding                occurs most often), batch 64, 8 epochs
``gru``            one-layer GRU (hidden 48) on the raw waveform    generated 1-D signals (5 shapes), batch
                   (held out while the package's defaults and       100, 6 epochs
                   ``suggest_lr``'s probe were designed)
=================  ===============================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

OptimizerFactory = Callable[[Iterable[Tensor], float], torch.optim.Optimizer]


def _naggs(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    from naggs_lightning import NAGGS

    return NAGGS(params, lr=lr)


class PanelModule(pl.LightningModule):
    """Cross-entropy classifier; the optimizer comes from ``optimizer_factory(params, lr)``."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.optimizer_factory: OptimizerFactory = _naggs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters(), self.lr)


class PanelMLP(PanelModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class PanelCNN(PanelModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class PanelResNet(PanelModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.blocks = nn.Sequential(_Residual(24), _Residual(24))
        self.head = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x.view(-1, 1, 8, 8))).mean((2, 3)))


class PanelTransformer(PanelModule):
    def __init__(self, lr: float = 0.1, vocab: int = 8, length: int = 16, d_model: int = 32) -> None:
        super().__init__(lr)
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.randn(length, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


class PanelGRU(PanelModule):
    def __init__(self, lr: float = 0.1, hidden: int = 48) -> None:
        super().__init__(lr)
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 5)

    def forward(self, x: Tensor) -> Tensor:
        # Signals come as (batch, 1, 64); the GRU reads them as 32 steps of two samples.
        _, h = self.gru(x.reshape(x.shape[0], 32, 2))
        return self.head(h[-1])


class _TensorData(pl.LightningDataModule):
    """Train / validation tensors made once, from a fixed generator seed (the data never changes with the run)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self._splits: tuple[TensorDataset, TensorDataset] | None = None

    def _make(self) -> tuple[TensorDataset, TensorDataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self._make()

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._splits[0], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._splits[1], batch_size=512)


class DigitsData(_TensorData):
    """scikit-learn digits scaled to [0, 1]; 1,297 training and 500 validation images."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__(batch_size)

    def _make(self) -> tuple[TensorDataset, TensorDataset]:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        return TensorDataset(x[500:], y[500:]), TensorDataset(x[:500], y[:500])


class MajorityData(_TensorData):
    """Sequences of 16 tokens over 8 symbols; the label is the symbol that occurs most often (ties: the smallest)."""

    def __init__(self, batch_size: int = 64, n_train: int = 2048, n_val: int = 512) -> None:
        super().__init__(batch_size)
        self.n_train, self.n_val = n_train, n_val

    def _make(self) -> tuple[TensorDataset, TensorDataset]:
        g = torch.Generator().manual_seed(1)
        n = self.n_train + self.n_val
        # A skewed draw per sequence makes the majority learnable but not trivial.
        weights = torch.rand(n, 8, generator=g) ** 3
        x = torch.multinomial(weights, 16, replacement=True, generator=g)
        counts = F.one_hot(x, 8).sum(1)
        y = counts.argmax(1)
        return TensorDataset(x[: self.n_train], y[: self.n_train]), TensorDataset(x[self.n_train :], y[self.n_train :])


class WaveData(_TensorData):
    """Noisy 1-D waveforms of 64 samples: sine, square, triangle, sawtooth, or chirp, random frequency and phase."""

    def __init__(self, batch_size: int = 100, n_train: int = 3000, n_val: int = 600) -> None:
        super().__init__(batch_size)
        self.n_train, self.n_val = n_train, n_val

    def _make(self) -> tuple[TensorDataset, TensorDataset]:
        g = torch.Generator().manual_seed(2)
        n = self.n_train + self.n_val
        t = torch.linspace(0, 1, 64)
        freq = 2 + 4 * torch.rand(n, 1, generator=g)
        phase = torch.rand(n, 1, generator=g)
        y = torch.randint(0, 5, (n,), generator=g)
        u = (freq * t + phase) % 1.0
        shapes = torch.stack(
            [
                torch.sin(2 * torch.pi * u),
                torch.sign(torch.sin(2 * torch.pi * u)),
                4 * (u - 0.5).abs() - 1,
                2 * u - 1,
                torch.sin(2 * torch.pi * (freq * t + 3 * t**2) + 2 * torch.pi * phase),
            ]
        )
        x = shapes[y, torch.arange(n)] + 0.6 * torch.randn(n, 64, generator=g)
        x = x.unsqueeze(1)
        return TensorDataset(x[: self.n_train], y[: self.n_train]), TensorDataset(x[self.n_train :], y[self.n_train :])
