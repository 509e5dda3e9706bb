"""STOW-RS receive: throughput and the receiver's peak memory, node vs Orthanc (DICOMweb plugin) in the same run,
and optionally vs an older node from git (the in-memory body reader, e.g. ``--baseline deded64``).

    python -m benchmarks.bench_stow [--slices 100] [--repeat 3] [--baseline REF]

One request per run: ``--slices`` CT slices of 512 x 512 x 16 bit (about 512 KiB each) of a new series,
uploaded chunked by httpx from parts made before the clock starts. The node runs as in production
(``ainode serve``, every instance fsynced, renamed and indexed before the answer), no workers. Throughput is
body MB / wall time of the request; peak memory is the receiver's VmHWM (reset just before the request) minus
its RSS before it. Best of ``--repeat`` for the time, worst for the memory. Not a test: prints figures.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from demo.local_pacs import LocalOrthanc
from demo.node_process import REPO_ROOT, NodeProcess
from demo.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from demo.stow_stream import SliceStream
from node.api.secret_hash import token_digest

MB = 1e6
MiB = 1024 * 1024
TOKEN = {"name": "bench", "secret": "bench-secret-1", "role": "sender", "ae_title": "BENCH"}


def _post(url: str, pid: int, slices: int, headers: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, body bytes, peak RSS growth) of one STOW-RS request of ``slices`` new slices."""
    stream = SliceStream(slices)
    chunks = list(stream)  # made before the clock starts: the client's pydicom is not what is measured
    size = sum(len(c) for c in chunks)
    reset_peak_rss(pid)
    before = rss_bytes(pid)
    t0 = time.perf_counter()
    response = httpx.post(
        url,
        content=iter(chunks),
        headers={**headers, "Content-Type": stream.content_type, "Accept": "application/dicom+json"},
        timeout=600,
    )
    elapsed = time.perf_counter() - t0
    growth = peak_rss_bytes(pid) - before
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:500]}")
    return elapsed, size, growth


def _node_runs(work: Path, slices: int, repeat: int, source_root: Path | None = None) -> list[tuple[float, int, int]]:
    root = source_root or REPO_ROOT
    # A baseline tree from before hashed secrets (issue 15) wants the token itself in its config.
    hashed = "secret_hash" in (root / "node" / "config" / "__init__.py").read_text()
    credential = {**TOKEN, "secret_hash": token_digest(TOKEN["secret"])} if hashed else dict(TOKEN)
    if hashed:
        del credential["secret"]
    http = {"auth": {"mode": "token", "credentials": [credential]}}
    config = {"workers": {"processes": 0}, "logging": {"level": "INFO"}}
    with NodeProcess(work, config, http=http, source_root=source_root or REPO_ROOT) as node:
        assert node.process is not None
        headers = {"Authorization": f"Bearer {TOKEN['secret']}"}
        return [_post(f"{node.http_url}/dicom-web/studies", node.process.pid, slices, headers) for _ in range(repeat)]


def _orthanc_runs(work: Path, slices: int, repeat: int) -> list[tuple[float, int, int]]:
    with LocalOrthanc(work) as orthanc:
        assert orthanc.process is not None
        url = f"{orthanc.dicomweb_url}/studies"
        return [_post(url, orthanc.process.pid, slices, {}) for _ in range(repeat)]


def _summary(name: str, runs: list[tuple[float, int, int]]) -> tuple[float, int]:
    best = min(t for t, _, _ in runs)
    size = runs[0][1]
    worst_growth = max(g for _, _, g in runs)
    print(
        f"{name:<28} {size / MB:6.0f} MB in {best:6.2f} s = {size / MB / best:6.1f} MB/s | "
        f"peak RSS growth {worst_growth / MiB:6.0f} MiB ({worst_growth / size:.2f} x body)"
    )
    return size / best, worst_growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="a git ref of this repository whose node to measure too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
        work = Path(tmp)
        print(f"{args.slices} slices of 512x512 per request; best time / worst memory of {args.repeat} runs")
        node = _summary("node (this tree)", _node_runs(work / "node", args.slices, args.repeat))
        orthanc = _summary("Orthanc (DICOMweb plugin)", _orthanc_runs(work / "orthanc", args.slices, args.repeat))
        print(f"node/Orthanc throughput ratio {node[0] / orthanc[0]:.2f}")
        if args.baseline:
            tree = work / "baseline"
            tree.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            old = _summary(
                f"node ({args.baseline})", _node_runs(work / "node-baseline", args.slices, args.repeat, tree)
            )
            print(
                f"this tree / {args.baseline}: throughput {node[0] / old[0]:.2f}x, "
                f"peak RSS growth {node[1] / max(old[1], 1):.2f}x"
            )


if __name__ == "__main__":
    main()
