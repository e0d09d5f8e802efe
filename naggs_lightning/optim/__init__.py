"""Optimizers: NAG-GS and the baselines it is compared with, and :func:`is_naggs`, the test of a NAG-GS
optimizer or parameter group."""

from naggs_lightning.optim._common import is_naggs
from naggs_lightning.optim.accsgd import AccSGD, accsgd
from naggs_lightning.optim.adanaggs import AdaNAGGS
from naggs_lightning.optim.naggs import NAGGS, naggs

__all__ = ["AccSGD", "AdaNAGGS", "NAGGS", "accsgd", "is_naggs", "naggs"]
