"""STOW-RS request bodies made as they are sent, never whole in memory: many CT slices of one new series
as multipart/related parts (``tests/test_stow_streaming.py``, ``benchmarks/bench_stow.py``).

    body = SliceStream(600)                 # 600 slices of 512 x 512, 16 bit: about 300 MiB
    httpx.post(url, content=body, headers={"Content-Type": body.content_type})   # chunked upload
    body.bytes_sent                         # what went out
"""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from demo.ct_factory import make_ct_series


class SliceStream:
    """``count`` Part-10 CT slices of one new series (``rows`` x ``columns``, 16 bit: 512 x 512 is 512 KiB of
    pixels), each made when the upload reaches it. Iterable once; counts the bytes it yields."""

    def __init__(self, count: int, *, rows: int = 512, columns: int = 512, spacing_mm: float = 2.5) -> None:
        self.count = count
        self.spacing_mm = spacing_mm
        self.boundary = f"ainode-stream-{uuid.uuid4().hex}"
        with tempfile.TemporaryDirectory() as tmp:
            [path] = make_ct_series(Path(tmp), slices=1, rows=rows, columns=columns, spacing_mm=spacing_mm)
            self._template = pydicom.dcmread(path)
        self.series_uid = str(self._template.SeriesInstanceUID)
        self.sop_instance_uids: list[str] = []
        self.bytes_sent = 0

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks():
            self.bytes_sent += len(chunk)
            yield chunk

    def _chunks(self) -> Iterator[bytes]:
        for k in range(self.count):
            yield f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield self._slice(k)
            yield b"\r\n"
        yield f"--{self.boundary}--\r\n".encode()

    def _slice(self, k: int) -> bytes:
        ds = self._template  # changed in place: each slice is written out before the next is made
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, -k * self.spacing_mm]
        self.sop_instance_uids.append(str(ds.SOPInstanceUID))
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
