"""A small deterministic Lightning setup shared by the scale tests and the scripts they start.

The scripts under ``tests/scripts`` run as real processes (Lightning's ``strategy="ddp"`` starts the
other ranks by re-running ``sys.argv``), so the model and data live here, importable both from those
scripts (their own folder is ``sys.path[0]``) and from the test modules (which put this folder on
``sys.path``).

Everything is seeded and free of hidden state: the data come from a fixed generator, the sampler
draws one permutation per epoch from ``seed + epoch`` (Lightning's own DistributedSampler rule), and
the model has no dropout or BatchNorm, so two runs that see the same batches take the same steps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from naggs_lightning import NAGGS

N_SAMPLES = 64
N_FEATURES = 6
SEED = 1234


def make_dataset(n: int = N_SAMPLES, seed: int = 7) -> TensorDataset:
    """A noisy non-linear regression problem: samples ``(x, y, index)``.

    The index lets a run record which samples it trained on (DDP ranks must split them).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, 1, generator=g)
    y = torch.sin(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y, torch.arange(n))


def epoch_sampler(dataset: TensorDataset, num_replicas: int = 1, rank: int = 0, seed: int = SEED) -> DistributedSampler:
    """One shuffled permutation ``perm`` per epoch, drawn from ``seed + epoch``; rank ``r`` of ``R`` gets
    ``perm[r::R]``.

    This is the sampler Lightning itself injects under DDP. Batch ``k`` of size ``b`` on every rank
    together is therefore exactly ``perm[k R b : (k + 1) R b]``: batch ``k`` of size ``R b`` of the
    single-process sampler (``num_replicas=1``).
    """
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning can resume mid-epoch (its ``state_dict``/``load_state_dict`` protocol).

    It counts the batches it has handed out in the current epoch; after ``load_state_dict`` the next
    iteration skips that many, so a resumed epoch sees exactly the batches the interrupted one had left.
    Lightning does not prefetch from a loader with a length, so "handed out" equals "trained on".
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self._yielded = skip
        batches = super().__iter__()
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_yielded": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._skip = state_dict["batches_yielded"]


class TinyRegression(L.LightningModule):
    """A 6-16-1 tanh MLP on :func:`make_dataset`, trained with NAGGS.

    Args:
        lr, mu, gamma: NAGGS hyper-parameters (gamma_0 != mu, so gamma really evolves).
        batch_size: per-process batch size; batches are drawn through :func:`epoch_sampler`.
        resumable: serve a :class:`ResumableDataLoader` (for mid-epoch checkpoint tests).
        inf_loss_at_step: on this global step, return an infinite loss (a GradScaler overflow test).
    """

    def __init__(
        self,
        lr: float = 0.3,
        mu: float = 0.5,
        gamma: float = 2.0,
        batch_size: int = 8,
        resumable: bool = False,
        inf_loss_at_step: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(SEED)
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
        self.dataset = make_dataset()
        self.seen_indices: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def compute_loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, _ = batch
        return F.mse_loss(self(x), y)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        self.seen_indices.extend(batch[2].tolist())
        loss = self.compute_loss(batch)
        if self.hparams.inf_loss_at_step == self.global_step:
            loss = loss * float("inf")
        self.log("train_loss", loss, on_step=True)
        return loss

    def configure_optimizers(self) -> NAGGS:
        return NAGGS(self.parameters(), lr=self.hparams.lr, mu=self.hparams.mu, gamma=self.hparams.gamma)

    def train_dataloader(self) -> DataLoader:
        cls = ResumableDataLoader if self.hparams.resumable else DataLoader
        sampler = epoch_sampler(self.dataset, self.trainer.world_size, self.trainer.global_rank)
        return cls(self.dataset, batch_size=self.hparams.batch_size, sampler=sampler)


def optimizer_snapshot(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Parameters, every per-parameter optimizer state tensor (by parameter name) and gamma, on CPU.

    The per-parameter state is taken whole, whatever its keys, so the comparisons cover NAGGS's v
    buffer however NAGGS chooses to store it.
    """
    return {
        "params": {n: p.detach().cpu().clone() for n, p in module.named_parameters()},
        "state": {
            f"{n}.{key}": value.detach().cpu().clone()
            for n, p in module.named_parameters()
            for key, value in optimizer.state[p].items()
            if torch.is_tensor(value)
        },
        "gamma": [group["gamma"] for group in optimizer.param_groups],
    }


def exact_top_eigenvalue(module: TinyRegression, x: Tensor, y: Tensor) -> float:
    """The largest eigenvalue of the full Hessian of the mean loss on ``(x, y)``, formed in float64.

    The oracle for the curvature estimates (the model has 129 parameters, so the Hessian is small).
    """
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).double()
    x, y = x.double(), y.double()
    net = copy.deepcopy(module).double()

    def loss(theta: Tensor) -> Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.mse_loss(torch.func.functional_call(net, params, (x,)), y)

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat, vectorize=True))[-1].item()


def train_reference(
    global_batch: int,
    epochs: int,
    *,
    lr: float = 0.3,
    mu: float = 0.5,
    gamma: float = 2.0,
) -> dict[str, Any]:
    """The single-process oracle in float64: a plain PyTorch loop (no Lightning) over :func:`epoch_sampler` batches.

    The loss of a batch is the mean over its samples, which is what DDP's gradient average over equal
    per-rank batches and Lightning's division of the loss by ``accumulate_grad_batches`` both compute.
    """
    module = TinyRegression(lr=lr, mu=mu, gamma=gamma).to(torch.float64)
    x_all, y_all = (t.to(torch.float64) for t in module.dataset.tensors[:2])
    sampler = epoch_sampler(module.dataset)
    optimizer = NAGGS(module.parameters(), lr=lr, mu=mu, gamma=gamma)
    steps = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for start in range(0, len(order), global_batch):
            idx = order[start : start + global_batch]
            optimizer.zero_grad()
            F.mse_loss(module(x_all[idx]), y_all[idx]).backward()
            optimizer.step()
            steps += 1
    return {**optimizer_snapshot(module, optimizer), "steps": steps}
