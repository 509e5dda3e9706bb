"""A hostile network for the node, shared by tests/test_receive_hostile.py and benchmarks/outside_campaign.py:
crafted C-STORE requests, C-STORE bodies from datasets, their seeded mutations, connections that never become
associations.

The crafted requests come from a pynetdicom SCU driven below its public API (DCMTK's storescu cannot send an
empty or over-long Affected SOP Instance UID, nor a body that is not a well-formed dataset).
"""

from __future__ import annotations

import random
import socket
import struct
import time
from io import BytesIO

import pydicom
from pydicom.uid import CTImageStorage
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

# Explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
SHORT_LENGTH_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")  # fmt: skip
# What a mutation may put in place of a VR: every real one, and some that are none.
SUBSTITUTE_VRS = (*SHORT_LENGTH_VRS, *sorted(LONG_LENGTH_VRS), b"ZZ", b"\x00\x00", b"ob", b"  ")
MUTATIONS = ("bit_flips", "vr_change", "truncation", "length_field")


def c_store_body(ds: pydicom.Dataset) -> bytes:
    """A C-STORE body: the dataset in Explicit VR Little Endian, no preamble, no File Meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def crafted_store(
    assoc: Association, body: bytes, sop_uid: str, msg_id: int, sop_class: str = CTImageStorage
) -> int | None:
    """One C-STORE-RQ with exactly these parameters; the response status, None when none came."""
    context = assoc.accepted_contexts[0]
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = BytesIO(body)
    # As pynetdicom's own send_* methods do: pause the reactor, or it takes the response off the queue.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, int(context.context_id or 0))
        _cx, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    status = None if rsp is None else rsp.Status
    return None if status is None else int(status)


def element_headers(body: bytes) -> list[tuple[int, bytes]]:
    """(offset, VR) of each top-level element of an Explicit VR Little Endian body (stops at an undefined
    length: what follows is a sequence or encapsulated pixel data the mutations need not walk into)."""
    headers: list[tuple[int, bytes]] = []
    at = 0
    while at + 8 <= len(body):
        vr = body[at + 4 : at + 6]
        if vr in LONG_LENGTH_VRS:
            if at + 12 > len(body):
                break
            (length,) = struct.unpack_from("<I", body, at + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", body, at + 6)
            header = 8
        headers.append((at, vr))
        if length == 0xFFFFFFFF:
            break
        at += header + length
    return headers


def mutate(body: bytes, kind: str, rng: random.Random) -> bytes:
    """One seeded mutation of a C-STORE body: ``bit_flips`` (1-8 random bits), ``vr_change`` (one element's VR
    replaced, real or not), ``truncation`` (cut anywhere), ``length_field`` (one element's length rewritten)."""
    data = bytearray(body)
    if kind == "bit_flips":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "truncation":
        return bytes(data[: rng.randrange(len(data))])
    headers = element_headers(body)
    at, vr = headers[rng.randrange(len(headers))]
    if kind == "vr_change":
        data[at + 4 : at + 6] = rng.choice([v for v in SUBSTITUTE_VRS if v != vr])
        return bytes(data)
    if kind == "length_field":
        if vr in LONG_LENGTH_VRS:
            value = rng.choice([0, 1, 0xFFFFFFFF, 0xFFFFFFFE, len(body), rng.randrange(1 << 32)])
            struct.pack_into("<I", data, at + 8, value)
        else:
            value = rng.choice([0, 1, 0xFFFF, rng.randrange(1 << 16)])
            struct.pack_into("<H", data, at + 6, value)
        return bytes(data)
    raise ValueError(f"unknown mutation {kind!r}; known: {MUTATIONS}")


def hostile_connections(port: int) -> list[socket.socket]:
    """Connections that never complete an A-ASSOCIATE, held open: idle, partial PDU, garbage, 4 GB PDU length
    (8 of them); and 3 that connect and close at once."""
    payloads = [
        b"",  # connect and say nothing
        b"",
        b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 20,  # an A-ASSOCIATE-RQ cut short
        b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 20,
        b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 100,  # a PDU announcing 0xFFFFFFFF bytes
        b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 100,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage
        b"\x01",
    ]
    held = []
    for payload in payloads:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            sock.sendall(payload)
        held.append(sock)
    for _ in range(3):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    return held
