"""Receive throughput: DCMTK storescu → DCMTK storescp vs → the node, in the same run.

    python -m benchmarks.bench_receive [--slices 300] [--repeat 3]

The node runs as in production (`ainode serve`): every instance fsynced, renamed and indexed
before Success; completeness monitor on; no worker processes (the AI is benchmarked elsewhere).
storescp writes files without fsync and keeps no index. TCP_NODELAY=1 for the DCMTK tools.
Reports the wall-time ratio node/storescp and images per second, for one sender and for 4
concurrent senders (each its own 300-slice series). Not a test: prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from demo.ct_factory import make_thin_slice_series
from demo.dcmtk import STORESCP, STORESCU
from demo.netutil import free_port, nodelay_env, port_open, wait_until
from demo.node_process import NodeProcess


def _send_concurrently(port: int, called: str, folders: list[Path]) -> float:
    t0 = time.perf_counter()
    senders = [
        subprocess.Popen([STORESCU, "-aet", "STORESCU", "-aec", called, "+sd", "127.0.0.1", str(port), str(f)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=nodelay_env())
        for f in folders
    ]  # fmt: skip
    for s in senders:
        _, err = s.communicate(timeout=600)
        if s.returncode != 0 or b"E: " in err:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def _time_storescp(work: Path, folders: list[Path], repeat: int, bare_pynetdicom: bool = False) -> list[float]:
    """DCMTK storescp, or (bare_pynetdicom) a pynetdicom SCP writing files without fsync or index."""
    times = []
    for i in range(repeat):
        out = work / f"{'bare' if bare_pynetdicom else 'storescp'}-{len(folders)}-{i}"
        out.mkdir()
        port = free_port()
        command = (
            [sys.executable, "-m", "benchmarks.bare_pynetdicom_scp", str(port), str(out)]
            if bare_pynetdicom
            else [STORESCP, "-aet", "STORESCP", "-od", str(out), str(port)]
        )
        scp = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=nodelay_env())
        wait_until(lambda p=port: port_open(p), 10, "storescp")
        try:
            times.append(_send_concurrently(port, "STORESCP", folders))
        finally:
            scp.terminate()
            scp.wait()
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return times


def _time_node(work: Path, folders: list[Path], repeat: int) -> list[float]:
    times = []
    for i in range(repeat):
        node = NodeProcess(work / f"node-{len(folders)}-{i}", {"workers": {"processes": 0},
                                                             "logging": {"level": "INFO"}})  # fmt: skip
        with node:
            times.append(_send_concurrently(node.port, node.ae_title, folders))
            stored = node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
            expected = sum(len(list(f.iterdir())) for f in folders)
            if stored != expected:
                raise RuntimeError(f"node indexed {stored} of {expected} instances")
        subprocess.run(["rm", "-rf", str(node.workdir)], check=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp:
        work = Path(tmp)
        folders = [work / f"series{i}" for i in range(4)]
        for f in folders:
            make_thin_slice_series(f, args.slices)
        size_mb = sum(p.stat().st_size for p in folders[0].iterdir()) / 1e6
        print(f"series: {args.slices} slices 512x512, {size_mb:.0f} MB; best of {args.repeat} runs each")
        results = {}
        for senders in (1, 4):
            chosen = folders[:senders]
            scp = min(_time_storescp(work, chosen, args.repeat))
            bare = min(_time_storescp(work, chosen, args.repeat, bare_pynetdicom=True))
            node = min(_time_node(work, chosen, args.repeat))
            images = args.slices * senders
            results[senders] = (scp, node, images)
            print(
                f"{senders} sender(s): storescp {scp:.2f} s ({images / scp:.0f} img/s) | bare pynetdicom "
                f"{bare:.2f} s ({bare / scp:.2f}x storescp) | node {node:.2f} s ({images / node:.0f} img/s) | "
                f"node/storescp wall-time ratio {node / scp:.2f}"
            )
        one, four = results[1], results[4]
        gain = (four[2] / four[1]) / (one[2] / one[1])
        print(
            f"node throughput with 4 concurrent senders / with 1 sender: {gain:.2f}x "
            f"(storescp: {(four[2] / four[0]) / (one[2] / one[0]):.2f}x)"
        )


if __name__ == "__main__":
    main()
