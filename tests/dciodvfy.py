"""dicom3tools' dciodvfy as the judge of validity: run it, split its output into errors and warnings."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DCIODVFY = "dciodvfy"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dciodvfy"


def dciodvfy_available() -> bool:
    return shutil.which(DCIODVFY) is not None


@dataclass(frozen=True)
class Verdict:
    iod: str
    errors: list[str]
    warnings: list[str]
    output: str


def dciodvfy(path: Path) -> Verdict:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    iods = [line for line in lines if not line.startswith(("Error", "Warning"))]
    return Verdict(iod=iods[0] if iods else "", errors=errors, warnings=warnings, output=output)


def judge(path: Path, label: str, accepted_warnings: Sequence[str]) -> Verdict:
    """Assert dciodvfy finds no errors and only accepted warnings; keep its output in artifacts/dciodvfy/."""
    verdict = dciodvfy(path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{label}.txt").write_text(verdict.output)
    summary = {"iod": verdict.iod, "errors": len(verdict.errors), "warnings": verdict.warnings}
    (ARTIFACTS / f"{label}.json").write_text(json.dumps(summary, indent=2))
    assert verdict.errors == [], f"dciodvfy errors for {label}:\n{verdict.output}"
    unexplained = [w for w in verdict.warnings if not any(a in w for a in accepted_warnings)]
    assert unexplained == [], f"unexplained dciodvfy warnings for {label}:\n{verdict.output}"
    return verdict
