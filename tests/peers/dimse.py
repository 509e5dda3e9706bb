"""A pynetdicom C-STORE SCU that proposes exactly the SOP classes of the files it sends.

DCMTK's storescu does not propose SEG or SR SOP classes by default; this sender does, the way the
node's exporter must.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
from pynetdicom import AE

STATUS_SUCCESS = 0x0000


def cstore(port: int, paths: list[Path], *, called: str, calling: str = "AINODE", timeout_s: float = 60) -> list[int]:
    """Send ``paths`` over one association; returns the DIMSE status of each C-STORE."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called} on port {port} was not established")
    try:
        # pynetdicom leaves Nagle on; small PDUs would then wait for delayed ACKs.
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()
