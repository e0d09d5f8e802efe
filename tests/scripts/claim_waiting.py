"""One of several processes asking a shared SQLite study for its enqueued trials at the same instant.

Usage: python claim_waiting.py URL START_FILE ASKS [plain]. Waits for START_FILE, asks ASKS times and
prints the numbers of the trials it got, one per line (``plain``: Optuna's own RDBStorage, for comparison).
"""

import sys
import time
from pathlib import Path

import optuna

from naggs_lightning.tune.storage import open_storage

url, start, asks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
storage = optuna.storages.RDBStorage(url) if sys.argv[4:] == ["plain"] else open_storage(url)
study = optuna.load_study(study_name="claims", storage=storage)
while not start.exists():
    time.sleep(0.001)
print("\n".join(str(study.ask().number) for _ in range(asks)), flush=True)
