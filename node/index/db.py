"""The SQLite index (WAL): one schema for every stage, one transaction per state change.

Each thread gets its own connection (sqlite3 connections are not shared across threads);
worker processes open their own :class:`Database` on the same file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from node.errors import StoreError
from node.index.states import (
    DeliveryState,
    HealthState,
    JobState,
    SeriesState,
    WithdrawalMethod,
    WithdrawalState,
    sql_choices,
)


# The stages type their arguments with these names and never import sqlite3 (or psycopg) themselves.
# Both backends hand out objects of this shape: sqlite3's own, or node/index/postgres.py's adapters.
class Row(Protocol):
    """A result row: by column name (``row["state"]``) or position (``row[0]``); ``dict(row)``."""

    def keys(self) -> Any: ...
    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What a stage may do with the connection of a transaction: run the index's statements."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...


class IndexUnavailable(StoreError):
    """The index server cannot be reached (PostgreSQL down, the network between): worth another try later."""


# "database is locked", a lost PostgreSQL connection and the like: worth another try after a pause.
TransientIndexError: tuple[type[Exception], ...] = (sqlite3.OperationalError, IndexUnavailable)

SCHEMA_VERSION = 2

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- Patient/study identity is kept for the worklist (shown only when the operator enables it)
-- and is never written to logs.
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_name TEXT, patient_id TEXT, accession_number TEXT,
    study_date TEXT, study_description TEXT,
    first_received_at REAL NOT NULL, last_received_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT, body_part_examined TEXT, series_description TEXT, series_number INTEGER,
    -- Tags for routing rules, as JSON {{keyword: value}}.
    attributes TEXT NOT NULL DEFAULT '{{}}',
    calling_ae TEXT, called_ae TEXT,
    state TEXT NOT NULL CHECK (state IN ({sql_choices(SeriesState)})),
    -- Incremented each time an instance re-opens a complete series; jobs carry the generation
    -- they ran on so that results of an older generation are known to be superseded.
    generation INTEGER NOT NULL DEFAULT 1,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL, last_received_at REAL NOT NULL,
    completed_at REAL, completion_reason TEXT
);
CREATE INDEX IF NOT EXISTS series_state ON series(state, last_received_at);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);

CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    instance_number INTEGER,
    image_position TEXT,        -- JSON [x, y, z] or NULL
    image_orientation TEXT,     -- JSON [6 floats] or NULL
    slice_thickness REAL,
    number_of_frames INTEGER,
    images_in_acquisition INTEGER,
    calling_ae TEXT,
    received_at REAL NOT NULL,
    replaced_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);

CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    route TEXT NOT NULL,
    destinations TEXT NOT NULL DEFAULT '[]',   -- JSON list of destination names
    state TEXT NOT NULL CHECK (state IN ({sql_choices(JobState)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT, lease_expires_at REAL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    reason TEXT,
    result_summary TEXT                        -- JSON PipelineResult.summary()
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_uid);

-- The trail of every job transition.
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    from_state TEXT, to_state TEXT NOT NULL, at REAL NOT NULL, detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id);

-- DICOM objects a job produced (SEG, SR, SC), stored in the spool's results folder.
CREATE TABLE IF NOT EXISTS results (
    sop_instance_uid TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_job ON results(job_id);

-- One row per (result object, destination).
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    result_sop_instance_uid TEXT NOT NULL REFERENCES results(sop_instance_uid),
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({sql_choices(DeliveryState)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, sent_at REAL,
    -- First transient failure of the current wait (NULL: not waiting); the dead letter goes by its age.
    waiting_since REAL,
    UNIQUE (result_sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id, destination);

CREATE TABLE IF NOT EXISTS delivery_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    from_state TEXT, to_state TEXT NOT NULL, at REAL NOT NULL, detail TEXT
);

-- One row per configured destination, kept by the outbox: is it answering? While it is down, one probe
-- (C-ECHO / HTTP GET) on a capped backoff decides when it is back; its deliveries wait for that.
CREATE TABLE IF NOT EXISTS destination_health (
    destination TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ({sql_choices(HealthState)})),
    since REAL NOT NULL,             -- when it entered this state
    failed_probes INTEGER NOT NULL DEFAULT 0,
    next_probe_at REAL,              -- while down
    last_error TEXT,
    updated_at REAL NOT NULL
);

-- One row per (superseded result object, destination) that the destination's `superseded` policy
-- withdraws once the newer run's results are delivered there (node/export/superseded.py).
-- method 'reject': listed in the rejection note `note_sop_instance_uid`, itself a result of the newer
-- job delivered through `deliveries` (state 'noted'). method 'delete': deleted through the destination's
-- REST API, with its own retries (pending -> deleted | retry | dead).
CREATE TABLE IF NOT EXISTS withdrawals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_sop_instance_uid TEXT NOT NULL REFERENCES results(sop_instance_uid),
    destination TEXT NOT NULL,
    superseding_job_id INTEGER NOT NULL REFERENCES jobs(id),
    method TEXT NOT NULL CHECK (method IN ({sql_choices(WithdrawalMethod)})),
    note_sop_instance_uid TEXT,
    state TEXT NOT NULL CHECK (state IN ({sql_choices(WithdrawalState)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (result_sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS withdrawals_due ON withdrawals(state, next_attempt_at);
"""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    # Schema 2 (issue 16): deliveries wait by age (waiting_since); destination_health and the
    # deliveries_job index come from SCHEMA itself (CREATE ... IF NOT EXISTS).
    columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    if "waiting_since" not in columns:
        conn.execute("ALTER TABLE deliveries ADD COLUMN waiting_since REAL")
        # Deliveries waiting at the upgrade start their wait now.
        conn.execute("UPDATE deliveries SET waiting_since = updated_at WHERE state = 'retry' AND waiting_since IS NULL")


# version -> the step that brings an index of that version to the next one.
MIGRATIONS = {1: _migrate_1_to_2}


class Database:
    """Thread-safe access to the index: one sqlite3 connection per thread.

    The embedded default. :class:`node.index.postgres.PostgresDatabase` is the same API on PostgreSQL
    (cluster mode); :func:`node.index.open_index` picks one from the config."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        # executescript manages its own transaction (CREATE ... IF NOT EXISTS is idempotent).
        conn = self._sqlite_connection()
        self._migrate(conn)
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        # Random, created once with the index: job ids and series generations restart with a new index,
        # so result UIDs derive from this too (the PACS keeps the first object stored under a UID).
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('installation_id', ?)", (uuid.uuid4().hex,))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an index written by an older version up to SCHEMA_VERSION (each step one transaction)."""
        has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            return  # a new index: SCHEMA creates the current version
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = int(row[0]) if row else SCHEMA_VERSION
                if version >= SCHEMA_VERSION:
                    conn.execute("COMMIT")
                    return
                if version not in MIGRATIONS:
                    raise StoreError(f"index schema version {version} is unknown to this node ({SCHEMA_VERSION})")
                MIGRATIONS[version](conn)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def installation_id(self) -> str:
        """This index's random identity (see the schema set-up above)."""
        return str(self.query("SELECT value FROM meta WHERE key = 'installation_id'")[0]["value"])

    def connection(self) -> Connection:
        return self._sqlite_connection()

    def _sqlite_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); after a power loss the
            # newest index rows may be missing, which start-up reconciliation repairs from the
            # spool files, which are fsynced before Success is answered.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one state change, all or nothing."""
        conn = self._sqlite_connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"index unavailable: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] | dict[str, object] = ()) -> list[Row]:
        return list(self._sqlite_connection().execute(sql, params).fetchall())

    def writable_problem(self, timeout_s: float = 2) -> str | None:
        """None when the index takes a write within ``timeout_s``, else the reason (the health check)."""
        return index_writable(self.path, timeout_s)

    def describe(self) -> str:
        """Where the index is, for logs (no credentials)."""
        return str(self.path)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def index_writable(path: Path, timeout_s: float = 2) -> str | None:
    """None when the index at ``path`` takes the write lock within ``timeout_s``, else the reason.

    A separate short-timeout connection, so a probe never waits the 30 s busy timeout behind a long
    transaction."""
    try:
        conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None


def now() -> float:
    """Wall-clock seconds, the one clock every row uses."""
    return time.time()
