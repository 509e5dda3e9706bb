"""The index owns its tables: no SQL, no sqlite3 outside node/index/, and the schema's states are the Enums.

Static checks of the source tree, and the import layering of ARCHITECTURE.md (import-linter's contracts in
pyproject.toml, also run by scripts/test.sh).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node.index.db import Database
from node.index.states import DeliveryState, HealthState, JobState, SeriesState, WithdrawalState

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "node" / "index"
# What only node/index/ may contain: the sqlite3 module, statements run on a connection, SQL text.
FORBIDDEN = {
    "imports sqlite3": re.compile(r"^\s*(import sqlite3|from sqlite3 )", re.MULTILINE),
    "runs a statement": re.compile(r"\.(execute|executemany|executescript)\(|\bdb\(?\)?\.query\("),
    "holds SQL": re.compile(
        r"\b(SELECT\s+[\w*(),. ]+\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b"
    ),
}


def _sources_outside_the_index() -> list[Path]:
    files = [p for folder in ("node", "demo") for p in sorted((ROOT / folder).rglob("*.py"))]
    return [p for p in files if INDEX not in p.parents]


def test_no_sql_outside_node_index() -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1} {what}: {match.group(0)!r}"
        for path in _sources_outside_the_index()
        for text in [path.read_text(encoding="utf-8")]
        for what, pattern in FORBIDDEN.items()
        for match in pattern.finditer(text)
    ]
    assert not offences, "SQL belongs in node/index/ (add a query function there):\n" + "\n".join(offences)


def test_the_check_sees_sql_where_it_is() -> None:
    """The patterns find what they look for (a check that can never fail proves nothing)."""
    text = (INDEX / "jobs.py").read_text(encoding="utf-8")
    assert FORBIDDEN["imports sqlite3"].search((INDEX / "db.py").read_text(encoding="utf-8"))
    assert FORBIDDEN["runs a statement"].search(text)
    assert FORBIDDEN["holds SQL"].search(text)


@pytest.mark.parametrize(
    ("table", "states"),
    [
        ("series", SeriesState),
        ("jobs", JobState),
        ("deliveries", DeliveryState),
        ("destination_health", HealthState),
        ("withdrawals", WithdrawalState),
    ],
)
def test_each_state_column_checks_exactly_its_enum_values(
    tmp_path: Path, table: str, states: type[SeriesState | JobState | DeliveryState | HealthState | WithdrawalState]
) -> None:
    """The CHECK constraint of each state column in a new index lists exactly its Enum's values, in order."""
    db = Database(tmp_path / "index.sqlite")
    columns = db.query(f"SELECT sql FROM sqlite_master WHERE name = '{table}'")[0]["sql"]
    allowed = re.search(r"state TEXT NOT NULL CHECK \(state IN \(([^)]*)\)\)", columns)
    assert allowed is not None
    assert [v.strip().strip("'") for v in allowed.group(1).split(",")] == [s.value for s in states]


def test_the_import_layering_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint_imports is not None, "import-linter is missing: it is in the test extra (pip install -e '.[test]')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's modules, not an installed copy's
    done = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
