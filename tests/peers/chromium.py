"""Headless Debian Chromium driven by playwright-core (a node script), for page tests.

``scripts/install-peers.sh`` puts playwright-core in ``.peers/node_modules``; the browser is
``/usr/bin/chromium`` (``npx playwright install`` cannot download browsers here). Scripts read
``CHROMIUM_BIN`` and ``CHROMIUM_ARGS`` (JSON) from their environment and launch with a fresh
profile. The same interface as the OHIF peer's ``run_browser_script`` (encode branch), so the two
can become one module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / ".peers" / "node_modules"
CHROMIUM_BIN = "/usr/bin/chromium"
NODE_BIN = "node"

# The recipe's flags (../shared/REAL-PEERS.md): no GPU, no network chatter, no first-run work.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]


def missing_browser_parts() -> list[str]:
    """What is not installed (empty when a page test can run)."""
    missing = []
    if not (NODE_MODULES / "playwright-core").is_dir():
        missing.append(f"{NODE_MODULES}/playwright-core (run scripts/install-peers.sh)")
    if not Path(CHROMIUM_BIN).exists():
        missing.append(CHROMIUM_BIN)
    if shutil.which(NODE_BIN) is None:
        missing.append("node")
    return missing


def run_browser_script(script: Path, args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a playwright-core node script; it gets CHROMIUM_BIN and CHROMIUM_ARGS in its environment."""
    env = {
        **os.environ,
        "NODE_PATH": str(NODE_MODULES),
        "CHROMIUM_BIN": CHROMIUM_BIN,
        "CHROMIUM_ARGS": json.dumps(CHROMIUM_ARGS),
    }
    return subprocess.run([NODE_BIN, str(script), *args], capture_output=True, text=True, timeout=timeout_s, env=env)
