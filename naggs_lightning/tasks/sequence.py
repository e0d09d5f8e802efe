"""A small Transformer encoder on a generated sequence-to-sequence task (reverse or sort a token sequence).

Inputs are uniformly random sequences of ``seq_len`` tokens from ``vocab_size`` symbols; the target at
every position is the token the reversed (or sorted) sequence holds there, so an encoder predicts all
positions at once and accuracy is per token.

The attention is written out (softmax of scaled scores) instead of calling PyTorch's fused attention,
whose CPU and CUDA kernels have no double backward: exact Hessian-vector products, and so
``SpectralStabilityMonitor``, work on this model.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from naggs_lightning.tasks.base import Batch, ClassificationTask, GeneratedDataModule

__all__ = ["SequenceDataModule", "SequenceTransformer"]


class SequenceDataModule(GeneratedDataModule):
    """Random token sequences and their reversal (``task="reverse"``) or sorted order (``task="sort"``).

    Args:
        task: ``"reverse"`` or ``"sort"``.
        vocab_size: number of token symbols (>= 2).
        seq_len: tokens per sequence (>= 2).
        n_train, n_val, n_test: number of sequences per split, each generated from its own seed.
        batch_size: sequences per batch.
        seed: seed of the generation.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        task: Literal["reverse", "sort"] = "reverse",
        vocab_size: int = 10,
        seq_len: int = 8,
        n_train: int = 8192,
        n_val: int = 1024,
        n_test: int = 1024,
        batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if task not in ("reverse", "sort"):
            raise ValueError(f"task must be 'reverse' or 'sort', got {task!r}")
        if vocab_size < 2 or seq_len < 2:
            raise ValueError(f"vocab_size and seq_len must be >= 2, got {vocab_size} and {seq_len}")
        self.save_hyperparameters()
        self.task = task
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self._generate_splits(n_train, n_val, n_test, batch_size, seed, num_workers)

    def _generate(self, n: int, seed: int) -> TensorDataset:
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randint(self.vocab_size, (n, self.seq_len), generator=gen)
        targets = inputs.flip(1) if self.task == "reverse" else inputs.sort(dim=1).values
        return TensorDataset(inputs, targets)


class _SelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.num_heads), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-norm Transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = _SelfAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Linear(dim_feedforward, d_model))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SequenceTransformer(ClassificationTask):
    """A pre-norm Transformer encoder with learned positional embeddings, predicting a token per position.

    ``val_acc`` / ``test_acc`` are per-token accuracies.

    Args:
        vocab_size: number of token symbols; must equal the data's.
        seq_len: sequence length; must equal the data's.
        d_model: embedding width (divisible by ``num_heads``).
        num_heads: attention heads.
        num_layers: Transformer blocks.
        dim_feedforward: hidden width of each block's MLP.
        lr, mu, gamma: the fallback NAG-GS optimizer's hyper-parameters. mu = 1 caps the effective step
            at 1, too small for this model; mu = 0.1 (cap 10) learns reversal in a few epochs.
    """

    def __init__(
        self,
        vocab_size: int = 10,
        seq_len: int = 8,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        lr: float = 0.3,
        mu: float = 0.1,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes=vocab_size, lr=lr, mu=mu, gamma=gamma)
        if d_model % num_heads != 0:
            raise ValueError(f"d_model must be divisible by num_heads, got d_model={d_model}, num_heads={num_heads}")
        self.save_hyperparameters()
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        self.blocks = nn.Sequential(*(_Block(d_model, num_heads, dim_feedforward) for _ in range(num_layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of shape ``(batch, seq_len, vocab_size)``."""
        if tokens.shape[-1] != self.seq_len:
            raise ValueError(
                f"the data have sequences of {tokens.shape[-1]} tokens but the model's seq_len is {self.seq_len}"
            )
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.pos)))

    def logits_and_targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        tokens, targets = batch
        logits = self(tokens)
        return logits.flatten(0, 1), targets.flatten()
