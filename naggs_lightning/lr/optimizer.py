r"""Which NAG-GS optimizer the warm-up, the bracket and the seed train with: the class of the model's own.

:class:`~naggs_lightning.NAGGS` reads the Hessian's curvature; :class:`~naggs_lightning.AdaNAGGS` runs NAG-GS in
the diagonal metric P of its second moment, and the same closed forms then read the *preconditioned*
sharpness :math:`\lambda_{\max}(P^{-1/2} H P^{-1/2})` (THEORY.md 2d). :class:`OptimizerKind` carries the class
and the hyper-parameters of its metric (``beta2``, ``eps``), so that a copy trained in the warm-up or the
bracket steps in the metric the user's runs will, and :meth:`OptimizerKind.metric` reads the P the
curvature is measured in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from naggs_lightning.curvature import module_loss, optimizer_metric
from naggs_lightning.optim import NAGGS

__all__ = ["NAGGS_KIND", "OptimizerKind"]

#: The group keys of a metric's hyper-parameters (AdaNAGGS's); NAG-GS's own (lr, mu, gamma) are the seed's.
_METRIC_KEYS = ("beta2", "eps")


@dataclass(frozen=True)
class OptimizerKind:
    """A NAG-GS optimizer class and the hyper-parameters of its metric (none for NAGGS)."""

    cls: type[Optimizer] = NAGGS
    options: tuple[tuple[str, Any], ...] = ()
    """``(name, value)`` of the metric's hyper-parameters, e.g. ``(("beta2", 0.999), ("eps", 1e-8))``."""

    @classmethod
    def of(cls, optimizer: Optimizer, group: Mapping[str, Any]) -> OptimizerKind:
        """The kind of ``optimizer``, with the metric's hyper-parameters of its param group ``group``."""
        return cls(type(optimizer), tuple((key, group[key]) for key in _METRIC_KEYS if key in group))

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def preconditioned(self) -> bool:
        """Whether it steps in a metric of its own (``metric(p)``): its curvature is the preconditioned one."""
        return callable(getattr(self.cls, "metric", None))

    def build(
        self, params: Iterable[Tensor], *, lr: float, mu: float, gamma: float, fixed_gamma: bool = False
    ) -> Optimizer:
        """An optimizer of this kind over ``params`` at NAG-GS's ``lr``, ``mu``, ``gamma``."""
        return self.cls(params, lr=lr, mu=mu, gamma=gamma, fixed_gamma=fixed_gamma, **dict(self.options))

    def metric(self, model: nn.Module, optimizer: Optimizer, batch: Any) -> list[Tensor] | None:
        """The diagonal of the metric ``optimizer`` (of this kind, training ``model``) steps in, one tensor per
        trainable parameter; ``None`` for plain NAG-GS.

        Before the optimizer's first step it is the metric that step will take, from the gradient on ``batch``:
        a throwaway optimizer of this kind takes one step at lr 0 (which leaves the parameters as they are) and
        is read (for AdaNAGGS, :math:`|g| + \\epsilon`).
        """
        if not self.preconditioned:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        if all(optimizer.metric(p) is None for p in params):  # type: ignore[attr-defined]
            optimizer = self.build(params, lr=0.0, mu=1.0, gamma=1.0)
            optimizer.zero_grad(set_to_none=True)
            module_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return optimizer_metric([optimizer], params)


#: Plain NAG-GS: the kind the warm-up and the bracket take unless told otherwise.
NAGGS_KIND = OptimizerKind()
