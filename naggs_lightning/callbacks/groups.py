r"""The stability edge of each optimizer param group, from :mod:`naggs_lightning.theory`.

* NAG-GS (a group with ``mu`` and ``gamma``): :math:`\lambda_{stab}(\alpha)` at the group's lr, mu and gamma;
  its stable limit is :math:`\alpha_{crit}` of the curvature. The same holds, unchanged, for
  :class:`~naggs_lightning.AdaNAGGS` (NAG-GS in a diagonal metric P), read against the *preconditioned*
  sharpness :math:`\lambda_{\max}(P^{-1/2} H P^{-1/2})` (THEORY.md 2d): the curvature passed to
  :func:`group_stability` is the one in the optimizer's metric (:func:`in_metric` says which), and the
  monitor measures it there.
* ``torch.optim.SGD``: the classic edge :math:`2(1 + \beta)/\eta` (Nesterov :math:`(2 + 2\beta)/((1 + 2\beta)\eta)`,
  :math:`\eta` the lr times ``1 - dampening``), read against :math:`\lambda_{max}` plus the L2
  ``weight_decay`` (which shifts every curvature).
* Other optimizers (Adam, AdamW, ...): no edge; their edge bounds the *preconditioned* Hessian.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from naggs_lightning import theory
from naggs_lightning.curvature import has_metric
from naggs_lightning.optim import is_naggs

__all__ = ["GroupStability", "curvature_edge", "group_stability", "in_metric", "param_groups", "trained_params"]


class GroupStability(NamedTuple):
    """One param group at the measured curvature."""

    key: str
    """``"optimizer_index/group_index"``."""
    suffix: str
    """Log-key suffix: ``""`` for a single group, else ``"/pgN"`` or ``"/<name>"``."""
    optimizer: Optimizer
    group: dict[str, Any]
    edge: float
    """The largest stable curvature at the group's lr, read on lambda_max in the optimizer's metric (inf: no edge)."""
    limit: float
    """The largest stable lr at the measured curvature (inf: none)."""
    metrics: dict[str, float]


def in_metric(optimizers: list[Optimizer]) -> bool:
    """Whether the edges of ``optimizers`` are read on the preconditioned sharpness (every one of them runs in a
    metric of its own, as AdaNAGGS) rather than on the Hessian's.

    Raises:
        ValueError: some optimizers run in a metric and others do not: one curvature cannot be read against
            both (a group's edge in the metric bounds :math:`P^{-1/2} H P^{-1/2}`, another's bounds H).
    """
    kinds = {has_metric(opt) for opt in optimizers}
    if len(kinds) > 1:
        names = ", ".join(f"{type(opt).__name__} ({'metric' if has_metric(opt) else 'plain'})" for opt in optimizers)
        raise ValueError(
            f"the optimizers mix a metric of their own with plain steps ({names}): their edges bound different "
            "curvatures (the preconditioned and the plain Hessian); monitor a run with one kind only"
        )
    return kinds == {True}


def curvature_edge(opt: Optimizer, group: Mapping[str, Any], lr: float) -> float:
    """The largest stable curvature for this group at step ``lr`` (inf where the optimizer has no edge): for a
    NAG-GS group (NAGGS, or AdaNAGGS in its metric) :math:`\lambda_{stab}(\alpha)`, the same closed form either
    way; for AdaNAGGS it bounds the preconditioned sharpness."""
    if is_naggs(group):
        return theory.lambda_stab(lr, float(group["mu"]), float(group["gamma"]))
    if isinstance(opt, torch.optim.SGD):
        scale = 1.0 - float(group["dampening"])  # dampening scales the gradient into the buffer
        unit = theory.classic_edge(1.0, float(group["momentum"]), bool(group["nesterov"]))
        classic = unit / (lr * scale) if lr > 0 and scale > 0 else math.inf
        return classic - float(group["weight_decay"])  # L2 adds wd to every curvature
    return math.inf


def group_stability(key: str, suffix: str, opt: Optimizer, group: dict[str, Any], lam: float) -> GroupStability:
    """The logged metrics, edge and stable limit of one group at curvature ``lam``, measured in the optimizer's
    metric (:func:`in_metric`: the preconditioned sharpness for AdaNAGGS, the plain one otherwise)."""
    lr = float(group["lr"])
    edge = curvature_edge(opt, group, lr)
    metrics: dict[str, float] = {"lr": lr}
    limit = math.inf
    if is_naggs(group):
        mu, gamma = float(group["mu"]), float(group["gamma"])
        limit = theory.alpha_crit(mu, gamma, lam)
        metrics.update(
            gamma=gamma,
            rho=theory.spectral_radius(lr, mu, gamma, lam),
            lambda_stab=edge,
            margin=edge - lam,
            alpha_crit=limit,
        )
        if mu > 0 and lam > mu:
            metrics["alpha_opt"] = theory.alpha_opt(mu, lam)
    elif isinstance(opt, torch.optim.SGD):
        wd, scale = float(group["weight_decay"]), 1.0 - float(group["dampening"])
        unit = theory.classic_edge(1.0, float(group["momentum"]), bool(group["nesterov"]))
        lam_eff = lam + wd
        limit = unit / (scale * lam_eff) if lam_eff > 0 and scale > 0 else math.inf
        metrics.update(edge=edge + wd, margin=edge - lam, lr_crit=limit)
    if math.isfinite(edge) and edge > 0:
        metrics["edge_ratio"] = lam / edge
    return GroupStability(key, suffix, opt, group, edge, limit, metrics)


def param_groups(optimizers: list[Optimizer]) -> list[tuple[str, str, Optimizer, dict[str, Any]]]:
    """(state key, log-key suffix, optimizer, group) for every param group of every optimizer."""
    entries = [(f"{j}/{i}", opt, group) for j, opt in enumerate(optimizers) for i, group in enumerate(opt.param_groups)]
    if len(entries) == 1:
        key, opt, group = entries[0]
        return [(key, "", opt, group)]
    return [
        (key, f"/{group['name']}" if isinstance(group.get("name"), str) else f"/pg{n + 1}", opt, group)
        for n, (key, opt, group) in enumerate(entries)
    ]


def trained_params(optimizers: list[Optimizer]) -> list[Tensor]:
    """Every parameter with ``requires_grad`` that some optimizer trains, each once."""
    seen: set[int] = set()
    params = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params
