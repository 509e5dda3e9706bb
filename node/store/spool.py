"""The spool: received instances as DICOM Part-10 files, written so that a crash never leaves a
half-written file where a complete one is expected.

Layout (every path component is a validated UID)::

    DATA_DIR/spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    DATA_DIR/spool/.incoming/             temp files, removed at start-up
    DATA_DIR/results/<job id>/<SOPInstanceUID>.dcm
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from node.uids import validate_uid


class Spool:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "spool"
        self.incoming = self.root / ".incoming"
        self.results_root = data_dir / "results"
        self.data_dir = data_dir
        for folder in (self.root, self.incoming, self.results_root):
            folder.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        # Validated again here so that no caller can build a path from an unchecked UID.
        return (
            self.root
            / validate_uid(study_uid, "StudyInstanceUID")
            / validate_uid(series_uid, "SeriesInstanceUID")
            / f"{validate_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        )

    def write_atomically(self, final_path: Path, chunks: list[bytes]) -> None:
        """temp file → fsync → rename → fsync(directory). Returns only once the file is durable."""
        write_durably(final_path, chunks, temp_dir=self.incoming)

    def clear_incoming(self, older_than_s: float = 0.0) -> int:
        """Remove temp files left by a crash (never acknowledged, so never promised to anyone); only those
        older than ``older_than_s`` when other receivers write into the same spool (cluster mode)."""
        removed = 0
        cutoff = time.time() - older_than_s
        for leftover in self.incoming.glob("*.part"):
            try:
                if older_than_s and leftover.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def iter_instance_files(self) -> list[Path]:
        return [p for p in self.root.glob("*/*/*.dcm") if p.is_file()]


def write_durably(final_path: Path, chunks: list[bytes], *, temp_dir: Path) -> None:
    """The one way the node writes a file it promises to keep: temp file in ``temp_dir`` (same file
    system) → fsync → rename → fsync(directory). A crash leaves either the old file or the new one."""
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=temp_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, final_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(final_path.parent)


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the directory entry is data too)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
