#!/usr/bin/env bash
# Installs the node and its Python dependencies into the current Python (a venv is recommended).
# torch is pinned to the CPU build first: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --upgrade pip
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
