"""Where the real CT series used for training backgrounds and real-data checks live by default.

The repository is expected to sit beside `shared/` (as in development and CI); the training and evaluation
commands take `--shared-ct` to point elsewhere. Inference never reads this.
"""

from __future__ import annotations

from pathlib import Path

SHARED_CT = Path(__file__).resolve().parents[4] / "shared" / "data" / "ct"
