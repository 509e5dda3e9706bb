"""Time and peak memory of `ainode analyze` on a 300-slice 512x512 chest CT (CPU, 2 threads). Not a test.

The series is generated from the real Siemens series (99 slices, 3 mm) by resampling to 300 slices at
1 mm, written as DICOM into a temp folder, then analysed in a child process so that its peak RSS is its own.

    python -m benchmarks.bench_analyze [--threads 2] [--slices 300]
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

from demo.ct_factory import make_resampled_series
from demo.paths import REPO_ROOT as REPO


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "series"
        make_resampled_series(series, args.slices)
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
