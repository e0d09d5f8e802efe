"""naggs-tune: an Optuna study over NAG-GS hyper-parameters whose first trial comes from the theory.

:func:`run` is the Python API; ``naggs-tune`` (:mod:`naggs_lightning.tune.cli`) the console script
over it, its flags generated from :class:`TuneOptions`. The parts: :mod:`~naggs_lightning.tune.options`
(the options, validated once), :mod:`~naggs_lightning.tune.space` (search space),
:mod:`~naggs_lightning.tune.seed` (theory seed from the estimated curvature),
:mod:`~naggs_lightning.tune.objective` (one trial), :mod:`~naggs_lightning.tune.storage` (Optuna RDB
storage), :mod:`~naggs_lightning.tune.interrupts` (Ctrl-C), :mod:`~naggs_lightning.tune.keys` (the
names of the study's and trials' attributes), :mod:`~naggs_lightning.tune.report` (progress, table,
best.yaml, plots) and :mod:`~naggs_lightning.tune.study` (the driver).
"""

from naggs_lightning.tune import keys
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.options import TuneOptions
from naggs_lightning.tune.seed import TheorySeed, theory_seed
from naggs_lightning.tune.space import SearchSpace
from naggs_lightning.tune.study import run

__all__ = ["run", "TuneOptions", "SearchSpace", "TheorySeed", "theory_seed", "TuneError", "keys"]
