"""The index on PostgreSQL (cluster mode) against a real server: same schema as SQLite, versioned
migrations, one claim per job under concurrent workers, the store's upserts, and the server going away."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from demo.ct_factory import make_ct_series
from node.errors import StoreError
from node.index import open_index
from node.index.db import Database, IndexUnavailable
from node.index.jobs import claim_next_job, queue_job
from node.index.postgres import SCHEMA_VERSION, PostgresDatabase
from node.store.ingest import InstanceStore
from node.store.spool import Spool
from tests.peers.postgres import PostgresServer

pytestmark = [pytest.mark.peers, pytest.mark.needs("postgresql")]


def _pg_columns(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """SELECT table_name, column_name FROM information_schema.columns
               WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"""
        ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def test_postgresql_schema_has_the_sqlite_tables_and_columns(tmp_path: Path, postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database()
    PostgresDatabase(dsn).close()
    sqlite = sqlite3.connect(Database(tmp_path / "index.sqlite").path)
    sqlite_tables = {
        name: [c[1] for c in sqlite.execute(f"PRAGMA table_info({name})")]
        for (name,) in sqlite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not name.startswith("sqlite_")
    }
    pg_tables = _pg_columns(dsn)
    # dispatches: cluster mode's own table (which jobs went to the broker).
    assert pg_tables.pop("dispatches") == ["job_id", "queue", "published_at", "publish_count"]
    assert pg_tables == sqlite_tables


def test_migrations_are_versioned_and_run_once(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database()
    first = PostgresDatabase(dsn)
    assert first.schema_version() == SCHEMA_VERSION
    installation = first.installation_id()
    # Another process opening the same index (a second receiver) migrates nothing and keeps the identity.
    second = open_index(backend="postgresql", sqlite_path=Path("/nonexistent"), postgresql_dsn=dsn)
    assert second.installation_id() == installation
    with first.transaction() as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="newer than this node"):
        PostgresDatabase(dsn)


def test_concurrent_workers_claim_each_job_exactly_once(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database()
    db = PostgresDatabase(dsn)
    with db.transaction() as conn:
        conn.execute("INSERT INTO studies VALUES ('1.2', '', '', '', '', '', 0, 0)")
        conn.execute(
            """INSERT INTO series (series_uid, study_uid, state, first_received_at, last_received_at)
               VALUES ('1.2.3', '1.2', 'complete', 0, 0)"""
        )
        for n in range(40):
            queue_job(conn, series_uid="1.2.3", study_uid="1.2", generation=1, pipeline=f"p{n}", route="r",
                      destinations=[])  # fmt: skip
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        own = PostgresDatabase(dsn)  # its own connection, as a worker on another machine
        while (job := claim_next_job(own, name, lease_s=600, max_attempts=1)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(claimed) == 40 and len(set(claimed)) == 40
    owners = db.query("SELECT COUNT(DISTINCT lease_owner) AS n FROM jobs WHERE state = 'running'")[0]["n"]
    assert owners >= 1
    events = db.query("SELECT COUNT(*) AS n FROM job_events WHERE to_state = 'running'")[0]["n"]
    assert events == 40  # no job was taken twice


def test_the_store_indexes_a_series_and_a_replaced_instance(
    tmp_path: Path, open_test_index: Callable[[], Database]
) -> None:
    files = make_ct_series(tmp_path / "series", slices=4)
    db = open_test_index()
    store = InstanceStore(db, Spool(tmp_path / "data"), min_free_bytes=0)
    for f in files:
        store.store_part10(f.read_bytes(), calling_ae="SENDER", called_ae="AINODE")
    # The same SOP Instance UID again with other content: replaced, counted once.
    changed = bytearray(files[0].read_bytes())
    changed[-1] ^= 0xFF
    store.store_part10(bytes(changed), calling_ae="SENDER", called_ae="AINODE")
    assert store.flush(timeout_s=30)
    store.close()
    series = db.query("SELECT instance_count, state FROM series")
    assert [(r["instance_count"], r["state"]) for r in series] == [(4, "receiving")]
    assert sorted(r["replaced_count"] for r in db.query("SELECT replaced_count FROM instances")) == [0, 0, 0, 1]
    study = db.query("SELECT first_received_at, last_received_at FROM studies")[0]
    assert study["last_received_at"] > study["first_received_at"]  # the later instance moved it forward


def test_server_down_is_index_unavailable_then_the_index_reconnects(postgres_server: PostgresServer) -> None:
    # Its own server: stopping the session's would disturb the other tests.
    server = PostgresServer()
    server.start()
    try:
        dsn = server.new_database()
        db = PostgresDatabase(dsn)
        assert db.writable_problem() is None
        server.stop()
        with pytest.raises(IndexUnavailable), db.transaction() as conn:
            conn.execute("SELECT 1")
        assert db.writable_problem() is not None
        server.start()
        with db.transaction() as conn:  # a new connection, no restart of the node
            conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'x')")
        assert db.query("SELECT value FROM meta WHERE key = 'probe'")[0]["value"] == "x"
    finally:
        server.close()
