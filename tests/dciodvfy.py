"""dicom3tools' dciodvfy as the judge of validity: run it, split its output into errors and warnings."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DCIODVFY = "dciodvfy"


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
