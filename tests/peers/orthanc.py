"""Orthanc for the tests: the node's own LocalOrthanc (also the demo's PACS), under the test name."""

from __future__ import annotations

from node.local_pacs import DICOMWEB_PLUGIN, ORTHANC_BIN, LocalOrthanc, orthanc_available

OrthancPeer = LocalOrthanc

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC_BIN", "OrthancPeer", "orthanc_available"]
