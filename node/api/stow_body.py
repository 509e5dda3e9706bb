"""The STOW-RS request body (PS3.18 §10.5.1.1), read from the ASGI stream chunk by chunk into spooled parts.

python-multipart's streaming ``MultipartParser`` finds the boundaries. A request's parts stay in memory
while together they fit :data:`PARTS_IN_MEMORY_BYTES`; past that budget, each part's content is appended
to one temporary file per request in the spool's temp folder (``Spool.incoming``, the spool's file
system), and read back one part at a time when it is stored. So the node's memory for a request is
bounded by a chunk, that budget and one part, never by the body (up to ``http.max_stow_bytes``, 2 GiB by
default). The temporary file is unnamed (``tempfile.TemporaryFile``): it goes when closed, and with the
process if it dies.

The whole body is read before any part is stored, as when the body was read into memory: a body that
turns out too large (413) or malformed (400) stores nothing, earlier complete parts included.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

# Parts held in memory per request, together; every part past this budget is written to a temp file.
PARTS_IN_MEMORY_BYTES = 8 * 1024 * 1024
# RFC 2046 allows a preamble before the first delimiter; one longer than this is not a STOW-RS body.
PREAMBLE_MAX_BYTES = 64 * 1024
# Chunks (uvicorn's are up to 64 KiB) are handed to the parser's thread this many bytes at a time.
FEED_BATCH_BYTES = 1024 * 1024
MAX_BOUNDARY_CHARS = 200  # RFC 2046 allows 70; python-multipart refuses more than 256
MAX_PART_HEADERS = 32  # python-multipart's default (8) is tighter than what DICOMweb clients may send


class StowError(Exception):
    """The request as a whole cannot be read: nothing is stored. ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class SpooledPart:
    """One part of the body: its headers (lower-case names) and where its content is — in memory, or at
    ``offset`` in the request's spool file."""

    index: int  # 1-based position in the request
    headers: dict[str, str]
    size: int
    in_memory: bytes | None
    spool_file: IO[bytes] | None
    offset: int

    def read(self) -> bytes:
        if self.in_memory is not None:
            return self.in_memory
        assert self.spool_file is not None
        return os.pread(self.spool_file.fileno(), self.size, self.offset)


@dataclass
class StowBody:
    """The parts of one request. ``close`` removes its spool file (unnamed: it goes when closed)."""

    parts: list[SpooledPart]
    spool_file: IO[bytes] | None
    size: int  # bytes of the body as received

    def close(self) -> None:
        if self.spool_file is not None:
            self.spool_file.close()


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """(lower-case media type, parameters) of a Content-Type header value."""
    media, params = parse_options_header(value)
    return media.decode("latin-1"), {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()}


def stow_boundary(content_type: str) -> str:
    """The boundary of a STOW-RS request's Content-Type; refuses (415, 400) anything but multipart/related
    of application/dicom parts with a usable boundary, before a byte of the body is read."""
    media, params = media_type(content_type)
    if media != "multipart/related":
        raise StowError(415, f"Content-Type must be multipart/related, not {media or 'missing'}")
    declared_type = params.get("type", "application/dicom").lower()
    if declared_type != "application/dicom":
        raise StowError(415, f"only type=application/dicom parts are supported, not {declared_type}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > MAX_BOUNDARY_CHARS:
        raise StowError(400, "multipart/related Content-Type has no valid boundary parameter")
    return boundary


async def receive_parts(
    chunks: AsyncIterator[bytes],
    content_type: str,
    *,
    declared_length: str | None,
    limit: int,
    temp_dir: Path,
) -> StowBody:
    """Read the body from ``chunks`` (``request.stream()``) into spooled parts. Raises :class:`StowError`
    (nothing kept) for a refused Content-Type, a body over ``limit`` bytes (as soon as it is exceeded) and a
    malformed body. The caller closes the body."""
    boundary = stow_boundary(content_type)
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise StowError(413, f"request body of {declared_length} bytes exceeds http.max_stow_bytes ({limit})")
    reader = _PartReader(boundary, temp_dir)
    try:
        size = 0
        batch: list[bytes] = []  # chunks not yet parsed
        batch_size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise StowError(413, f"request body exceeds http.max_stow_bytes ({limit})")
                batch.append(chunk)
                batch_size += len(chunk)
                if batch_size >= FEED_BATCH_BYTES:
                    # Off the event loop (parts past the memory budget are written to disk), in batches:
                    # one thread hop per ~64 KiB chunk would cost more than the parsing.
                    await run_in_threadpool(reader.feed_all, batch)
                    batch, batch_size = [], 0
            await run_in_threadpool(reader.feed_all, batch)
        except ClientDisconnect:
            raise StowError(400, "the client disconnected before the end of the body") from None
        except OSError as exc:  # the temp file could not be written (disk full, temp folder gone)
            raise StowError(503, f"the node cannot spool the request body: {exc.strerror or exc}") from None
        return StowBody(reader.finish(), reader.spool_file, size)
    except BaseException:
        if reader.spool_file is not None:
            reader.spool_file.close()
        raise


_CHUNK_OFFSET = re.compile(r"\s*(?:\(\d+\)|at (?:index )?\d+)$")


def _first_delimiter(buffer: bytes | bytearray, delimiter: bytes) -> int | None:
    """Where the first delimiter line starts: at the very beginning, or after a preamble line."""
    if buffer.startswith(delimiter):
        return 0
    found = buffer.find(b"\r\n" + delimiter)
    return found + 2 if found >= 0 else None


class _PartReader:
    """Feeds python-multipart and collects each part's headers and content (python-multipart callbacks).

    Parts stay in memory while the request's budget lasts; the first part that would exceed it, and every
    part after it, is appended to one temp file per request (one file descriptor, however many parts)."""

    def __init__(self, boundary: str, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.parser = MultipartParser(
            boundary.encode("latin-1"),
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=MAX_PART_HEADERS,
        )
        self.parts: list[SpooledPart] = []
        self.spool_file: IO[bytes] | None = None  # made when the first part leaves memory
        self.ended = False  # the close delimiter was read
        # python-multipart expects the body to open with the delimiter: a preamble is skipped here first.
        self._preamble: bytearray | None = bytearray()
        self._body_offset = 0  # where the next chunk given to the parser starts in the body
        self._memory_left = PARTS_IN_MEMORY_BYTES
        self._parts_begun = 0
        self._in_headers = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        # The part being read: its bytes while in memory (None once it is in the spool file).
        self._memory: bytearray | None = None
        self._offset = 0  # where it starts in the spool file
        self._size = 0

    # --- the body, chunk by chunk ------------------------------------------------------------------
    def feed_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        if self._preamble is not None:
            self._preamble += chunk
            start = _first_delimiter(self._preamble, self.delimiter)
            if start is None:
                if len(self._preamble) > PREAMBLE_MAX_BYTES:
                    reason = f"body does not contain the multipart boundary in its first {PREAMBLE_MAX_BYTES} bytes"
                    raise StowError(400, reason)
                return
            self._body_offset = start
            chunk = bytes(self._preamble[start:])
            self._preamble = None
        try:  # python-multipart ignores the epilogue after the close delimiter (RFC 2046)
            self.parser.write(chunk)
        except MultipartParseError as exc:
            # The library's message ends with the offset in this chunk; the client is told the one in the body.
            detail = _CHUNK_OFFSET.sub("", str(exc))
            where = f"part {self._parts_begun}, byte {self._body_offset + max(exc.offset, 0)} of the body"
            raise StowError(400, f"malformed multipart body ({where}): {detail}") from None
        self._body_offset += len(chunk)

    def finish(self) -> list[SpooledPart]:
        if self._preamble is not None:
            raise StowError(400, "body does not contain the multipart boundary")
        if not self.ended:
            if self._in_headers:
                raise StowError(400, f"part {self._parts_begun} has no end of headers")
            raise StowError(400, f"multipart body ends inside part {self._parts_begun} (no closing boundary)")
        if not self.parts:
            raise StowError(400, "multipart body has no parts")
        if self.spool_file is not None:
            self.spool_file.flush()  # parts are read back with os.pread, past Python's buffer
        return self.parts

    # --- python-multipart callbacks ------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._parts_begun += 1
        self._in_headers = True
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._in_headers = False
        self._size = 0
        if self._memory_left > 0:
            self._memory = bytearray()
        else:
            self._memory = None
            self._offset = self._spool_end()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        piece = memoryview(data)[start:end]
        if self._memory is not None and len(self._memory) + len(piece) > self._memory_left:
            # Over the budget: this part and every later one go to the spool file.
            self._offset = self._spool_end()
            self._write_spool(self._memory)
            self._memory = None
        if self._memory is not None:
            self._memory += piece
        else:
            self._write_spool(piece)
        self._size += len(piece)

    def _part_end(self) -> None:
        if self._memory is not None:
            self._memory_left -= len(self._memory)
            self.parts.append(SpooledPart(self._parts_begun, self._headers, self._size, bytes(self._memory), None, 0))
            self._memory = None
        else:
            part = SpooledPart(self._parts_begun, self._headers, self._size, None, self.spool_file, self._offset)
            self.parts.append(part)

    def _end(self) -> None:
        self.ended = True

    # --- the spool file ----------------------------------------------------------------------------------
    def _spool_end(self) -> int:
        if self.spool_file is None:
            # Unnamed where the OS allows (O_TMPFILE), else unlinked at once: nothing to clean up after a crash
            # (the suffix: what Spool.clear_incoming removes at start-up, for the instant before the unlink).
            self.spool_file = tempfile.TemporaryFile(  # noqa: SIM115 (StowBody.close closes it)
                dir=self.temp_dir, prefix="stow-", suffix=".part"
            )
        return self.spool_file.seek(0, os.SEEK_END)

    def _write_spool(self, data: bytes | bytearray | memoryview) -> None:
        assert self.spool_file is not None
        self.spool_file.write(data)
