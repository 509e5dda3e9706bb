"""What the audit trail costs: receive with the audit trail off vs on (file + TLS to a real rsyslog), and the
trail itself (``record`` per call; messages/s its writer drains to the file alone and to file + rsyslog).

    python -m benchmarks.bench_audit [--slices 200] [--repeat 3] [--messages 20000]

Needs DCMTK and rsyslog with rsyslog-gnutls (scripts/install-peers.sh). Not a test: prints figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.ct_factory import make_thin_slice_series
from demo.dcmtk import storescu
from demo.node_process import NodeProcess
from node.audit import AuditTrail, Source
from node.audit import messages as m
from node.audit.syslog import TlsTransport
from tests.peers.rsyslog import Rsyslog
from tests.tls_certs import TlsFiles, make_tls_files


def _receive_s(workdir: Path, series: Path, audit: dict[str, Any] | None) -> float:
    config: dict[str, Any] = {"workers": {"processes": 0}}
    if audit is not None:
        config["audit"] = audit
    with NodeProcess(workdir, config) as node:
        t0 = time.perf_counter()
        done = storescu(node.port, [series], called=node.ae_title)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-500:])
    return elapsed


def _drain_per_s(trail: AuditTrail, count: int) -> tuple[float, float]:
    """(microseconds per record() call, messages per second written and sent, start to stop)."""
    source = trail.source
    message = m.instances_received(
        source, "AINODE", sender=m.Participant("PACS", True, ae_title="PACS", address="10.0.0.5"),
        studies={"1.2.3.4": {"1.2.840.10008.5.1.4.1.1.2": 300}},
    )  # fmt: skip
    trail.start()
    t0 = time.perf_counter()
    for _ in range(count):
        trail.record(message)
    record_us = (time.perf_counter() - t0) / count * 1e6
    trail.stop(timeout_s=600)
    return record_us, count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tls: TlsFiles = make_tls_files(tmp / "tls")
        series = tmp / "series"
        make_thin_slice_series(series, slices=args.slices)
        with Rsyslog(tmp / "rsyslog", tls) as collector:
            audit_on = {
                "enabled": True,
                "syslog": {"transport": "tls", "host": "127.0.0.1", "port": collector.tls_port,
                           "ca_file": str(tls.ca_cert)},
            }  # fmt: skip
            off, on = [], []
            for i in range(args.repeat):
                off.append(_receive_s(tmp / f"off-{i}", series, None))
                on.append(_receive_s(tmp / f"on-{i}", series, audit_on))
            source = Source("BENCH")
            file_only = AuditTrail(source, file=tmp / "file-only.log", transport=None, queue_size=args.messages)
            record_us_file, file_per_s = _drain_per_s(file_only, args.messages)
            transport = TlsTransport("127.0.0.1", collector.tls_port, ca_file=tls.ca_cert, server_name=None,
                                     cert_file=None, key_file=None)  # fmt: skip
            with_tls = AuditTrail(source, file=tmp / "with-tls.log", transport=transport, queue_size=args.messages)
            record_us_tls, tls_per_s = _drain_per_s(with_tls, args.messages)
        print(
            json.dumps(
                {
                    "slices": args.slices,
                    "receive_s_audit_off_best": round(min(off), 3),
                    "receive_s_audit_on_tls_best": round(min(on), 3),
                    "receive_ratio_on_over_off": round(min(on) / min(off), 3),
                    "record_us_per_call": round(max(record_us_file, record_us_tls), 2),
                    "writer_messages_per_s_file_only": round(file_per_s),
                    "writer_messages_per_s_file_and_tls_rsyslog": round(tls_per_s),
                    "writer_ratio_tls_over_file_only": round(tls_per_s / file_per_s, 3),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
