"""Reference receiver for bench_receive: a bare pynetdicom SCP that writes each dataset to a file
(no fsync, no parsing, no index) — what pynetdicom itself costs, as ../shared/REAL-PEERS.md measured it.

    python -m benchmarks.bare_pynetdicom_scp PORT OUT_DIR
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt


def main() -> None:
    port, out_dir = int(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)

    def on_open(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event: evt.Event) -> int:
        (out_dir / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE("BARE")
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.start_server(("127.0.0.1", port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])  # fmt: skip


if __name__ == "__main__":
    main()
