"""Orthanc for the tests: the harness's LocalOrthanc (also the demo's PACS), under the test name."""

from __future__ import annotations

from demo.local_pacs import DICOMWEB_PLUGIN, ORTHANC_BIN, LocalOrthanc, orthanc_available

OrthancPeer = LocalOrthanc

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC_BIN", "OrthancPeer", "orthanc_available"]
