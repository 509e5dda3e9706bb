"""A real PostgreSQL server for the tests (Debian's ``postgresql``): initdb into a temp folder, pg_ctl on an
ephemeral loopback port, run as a non-root user (PostgreSQL refuses to run as root; CI runs as root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.peers.net import free_port, port_open, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists() and shutil.which("runuser") is not None


def _run_as_user() -> str | None:
    """The user the server runs as: ourselves unless we are root (then ``postgres``, else ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither user postgres nor nobody exists")


class PostgresServer:
    """``start()``, ``stop()``, ``restart()``; ``new_database()`` gives each test its own database."""

    def __init__(self) -> None:
        # Not under pytest's basetemp: its folders are 0700 root, which the server's user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="ainode-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = _run_as_user()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._as_user(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "ainode", "-E", "UTF8", "--no-sync"]
        )

    def _as_user(self, argv: list[str]) -> None:
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        # fsync off: a test server's data is thrown away (the node's own durability is not what is tested).
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._as_user(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"]
        )
        wait_until(lambda: port_open(self.port), 30, "PostgreSQL to listen")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=ainode dbname={dbname}"

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
