"""The index: the one owner of the SQLite schema, its state Enums and every query.

Stages talk to each other only through these tables (and the spool's files); each module here owns
the statements for its tables: ``series`` (studies, series, instances), ``jobs`` (jobs, job_events),
``results``, ``deliveries`` (deliveries, delivery_events) and ``queries`` (read-only views for the API,
the CLI and the demo). No SQL lives outside this package (tests/test_layering.py checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from node.index.db import Database


def open_index(*, backend: Literal["sqlite", "postgresql"], sqlite_path: Path, postgresql_dsn: str) -> Database:
    """The index the config names: the embedded SQLite file (default) or a PostgreSQL server (cluster mode).

    psycopg is imported only when PostgreSQL is configured."""
    if backend == "postgresql":
        from node.index.postgres import PostgresDatabase

        return PostgresDatabase(postgresql_dsn)
    from node.index.db import Database

    return Database(sqlite_path)
