"""The layers below naggs-tune do not import Optuna: the theory's step (lr/), the lr finder, and naggs-train."""

from __future__ import annotations

import os
import subprocess
import sys

OPTUNA_FREE = (
    "naggs_lightning.lr",
    "naggs_lightning.lr.suggest",
    "naggs_lightning.callbacks.lr_finder",
    "naggs_lightning.lightning_cli",
    "naggs_lightning.cli",
)

# Checked after each import, in a fresh interpreter (this test process imported optuna long ago); the lazy
# names of naggs_lightning.lr are read too, so the modules behind them count.
_CHECK = """
import importlib, sys
for name in {modules!r}:
    module = importlib.import_module(name)
    if name == "naggs_lightning.lr":
        [getattr(module, attr) for attr in module.__all__]
    loaded = sorted(m for m in sys.modules if m == "optuna" or m.startswith("optuna."))
    assert not loaded, f"importing {{name}} imported {{loaded[:3]}}"
"""


def test_the_layers_below_the_tuner_do_not_import_optuna():
    code = _CHECK.format(modules=OPTUNA_FREE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
