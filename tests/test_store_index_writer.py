"""The index writer keeps one bad row from keeping the rest of its batch out of the index.

Rows are written many per transaction; before this, one failing row rolled back the whole batch and
up to 255 acknowledged instances stayed invisible until the next start-up (their series could even
look complete without them). The failure is injected (a monkeypatched row writer raising for one SOP
Instance UID) because no real dataset that passes the store's checks is known to break the index.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest

from demo.ct_factory import make_ct_series
from node import metrics
from node.index.db import Database
from node.store import ingest
from node.store.ingest import InstanceStore
from node.store.spool import Spool

pytestmark = pytest.mark.unit


def test_a_row_that_cannot_be_indexed_does_not_take_its_batch_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_ct_series(tmp_path / "series", slices=6)
    poisoned_uid = str(pydicom.dcmread(files[2], stop_before_pixels=True).SOPInstanceUID)
    real_index_row = ingest._index_row

    def index_row(conn: sqlite3.Connection, row: ingest._PendingRow) -> None:
        if str(row.ds.SOPInstanceUID) == poisoned_uid:
            raise ValueError("injected: this row cannot be indexed")
        real_index_row(conn, row)

    monkeypatch.setattr(ingest, "_index_row", index_row)
    db = Database(tmp_path / "data" / "index.sqlite")
    store = InstanceStore(db, Spool(tmp_path / "data"), min_free_bytes=0)
    failures_before = metrics.REGISTRY.get_sample_value("ainode_index_write_failures_total") or 0.0

    # Hold the index's write lock while storing, so the writer thread queues the rows up and writes
    # the poisoned one in the same transaction as good ones.
    blocker = sqlite3.connect(db.path, timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    stored = [store.store_part10(f.read_bytes(), calling_ae="SENDER", called_ae="AINODE") for f in files]
    blocker.execute("COMMIT")
    blocker.close()
    assert store.flush(timeout_s=30)

    indexed = {r["sop_instance_uid"] for r in db.query("SELECT sop_instance_uid FROM instances")}
    assert indexed == {s.sop_instance_uid for s in stored} - {poisoned_uid}
    assert db.query("SELECT instance_count FROM series")[0]["instance_count"] == len(files) - 1
    assert store.indexer.failed_rows == 1
    assert metrics.REGISTRY.get_sample_value("ainode_index_write_failures_total") == failures_before + 1
    # The poisoned instance is still durable in the spool (start-up reconciliation indexes it).
    assert all(s.path.exists() for s in stored)
    store.close()
