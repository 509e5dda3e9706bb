"""Time and peak memory of `ainode analyze` on a 300-slice 512x512 chest CT (CPU, 2 threads). Not a test.

The series is generated from the real Siemens series (99 slices, 3 mm) by resampling to 300 slices at
1 mm, written as DICOM into a temp folder, then analysed in a child process so that its peak RSS is its own.

    python benchmarks/bench_analyze.py [--threads 2] [--slices 300]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
SIEMENS = REPO.parent / "shared" / "data" / "ct" / "siemens-chest-99"


def build_series(out: Path, n_slices: int = 300) -> None:
    files = sorted(SIEMENS.glob("*.dcm"))
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    stack = np.stack([d.pixel_array.astype(np.float32) for d in datasets])
    z0 = float(datasets[0].ImagePositionPatient[2])
    z1 = float(datasets[-1].ImagePositionPatient[2])
    spacing = (z1 - z0) / (n_slices - 1)
    resampled = ndimage.zoom(stack, (n_slices / len(datasets), 1, 1), order=1)
    series_uid = generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n_slices):
        ds = datasets[0].copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [
            ds.ImagePositionPatient[0],
            ds.ImagePositionPatient[1],
            round(z0 + k * spacing, 3),
        ]
        ds.SliceThickness = round(spacing, 3)
        ds.PixelData = np.round(resampled[k]).astype(datasets[0].pixel_array.dtype).tobytes()
        ds.save_as(out / f"{k:04d}.dcm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "series"
        build_series(series, args.slices)
        result = Path(tmp) / "result.json"
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "node",
                "analyze",
                str(series),
                "--json",
                str(result),
                "--threads",
                str(args.threads),
            ],
            cwd=REPO,
            check=True,
        )
        wall = time.perf_counter() - t
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary = json.loads(result.read_text())
    print(
        json.dumps(
            {
                "slices": args.slices,
                "threads": args.threads,
                "wall_s_including_model_load_and_python_start": round(wall, 2),
                "pipeline_timings_s": summary["timings_s"],
                "peak_rss_gib": round(peak_kib / 1024**2, 2),
                "status": summary["status"],
                "findings": len(summary["findings"]),
                "goal": "<= 12 s and <= 3 GiB on CPU (2 threads)",
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
