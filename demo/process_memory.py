"""A process's resident memory from ``/proc/<pid>/status`` (Linux): now, and its peak since start or since
the last reset. Memory bounds in tests and the benchmarks' peak-memory figures read it."""

from __future__ import annotations

from pathlib import Path


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])  # "VmHWM:   123456 kB"
    raise LookupError(f"/proc/{pid}/status has no {field}")


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set size since start or since :func:`reset_peak_rss` (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (writing 5 to clear_refs, Linux >= 4.0; own processes only)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
