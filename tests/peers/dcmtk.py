"""DCMTK for the tests: the harness's DCMTK peers (demo.dcmtk), under the test name."""

from __future__ import annotations

from demo.dcmtk import ECHOSCU, STORESCP, STORESCU, StoreSCP, echoscu, storescu

__all__ = ["ECHOSCU", "STORESCP", "STORESCU", "StoreSCP", "echoscu", "storescu"]
