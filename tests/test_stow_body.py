"""node.api.stow_body on its own (no node process): the parts of a multipart/related body do not depend on
how the body is chunked; parts past the request's memory budget go to one temp file and read back intact;
a body over the limit stops being read at the chunk that crosses it; malformed bodies are refused with
reasons that name the part and the byte of the body (not of a chunk)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from node.api import stow_body
from node.api.stow_body import StowBody, StowError, receive_parts

pytestmark = pytest.mark.unit

CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=b0und'


def _body(contents: Iterable[bytes], *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    parts = b"".join(b"--b0und\r\nContent-Type: application/dicom\r\n\r\n" + c + b"\r\n" for c in contents)
    return preamble + parts + b"--b0und--\r\n" + epilogue


async def _chunks(body: bytes, size: int, sent: list[int] | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        if sent is not None:
            sent.append(start)
        yield body[start : start + size]


def _receive(body: bytes, tmp_path: Path, *, chunk: int = 65536, limit: int = 1 << 30) -> StowBody:
    return asyncio.run(
        receive_parts(_chunks(body, chunk), CONTENT_TYPE, declared_length=None, limit=limit, temp_dir=tmp_path)
    )


def _refusal(body: bytes, tmp_path: Path, **kwargs: int) -> tuple[int, str]:
    with pytest.raises(StowError) as refused:
        _receive(body, tmp_path, **kwargs)
    return refused.value.status, refused.value.reason


@pytest.mark.parametrize("chunk", [1, 7, 64, 65536])
def test_the_parts_do_not_depend_on_the_chunking(tmp_path: Path, chunk: int) -> None:
    # Contents that look like delimiters without being one, an empty part, a preamble and an epilogue.
    contents = [b"DICM" * 10, b"", b"x\r\n--b0undary\r\n--b0un", bytes(range(256)) * 3]
    body = _receive(
        _body(contents, preamble=b"a preamble line\r\n", epilogue=b"ignored --b0und"), tmp_path, chunk=chunk
    )
    try:
        assert [p.read() for p in body.parts] == contents
        assert [p.index for p in body.parts] == [1, 2, 3, 4]
        assert all(p.headers == {"content-type": "application/dicom"} for p in body.parts)
    finally:
        body.close()


def test_parts_past_the_memory_budget_go_to_one_temp_file_and_read_back_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stow_body, "PARTS_IN_MEMORY_BYTES", 10_000)
    contents = [bytes([i]) * (3_000 + i) for i in range(10)]
    body = _receive(_body(contents), tmp_path, chunk=1000)
    try:
        in_memory = [p for p in body.parts if p.in_memory is not None]
        assert [p.index for p in in_memory] == [1, 2, 3]  # 9003 bytes; the fourth would pass 10 000
        assert sum(p.size for p in in_memory) <= 10_000
        assert {id(p.spool_file) for p in body.parts[3:]} == {id(body.spool_file)}
        assert [p.read() for p in body.parts] == contents
        assert not list(tmp_path.iterdir())  # the temp file has no name: nothing to clean up after a crash
    finally:
        body.close()
    assert body.spool_file is not None and body.spool_file.closed


def test_a_body_over_the_limit_stops_being_read_at_the_chunk_that_crosses_it(tmp_path: Path) -> None:
    sent: list[int] = []
    body = _body([b"y" * 10_000] * 5)
    with pytest.raises(StowError) as refused:
        asyncio.run(
            receive_parts(_chunks(body, 1000, sent), CONTENT_TYPE, declared_length=None, limit=4_500, temp_dir=tmp_path)
        )
    assert refused.value.status == 413 and "http.max_stow_bytes (4500)" in refused.value.reason
    assert sent[-1] == 4000  # the fifth chunk (bytes 4000-4999) crossed it; no sixth was asked for
    declared = receive_parts(
        _chunks(body, 1000), CONTENT_TYPE, declared_length=str(len(body)), limit=4_500, temp_dir=tmp_path
    )
    with pytest.raises(StowError, match=f"request body of {len(body)} bytes exceeds"):
        asyncio.run(declared)


@pytest.mark.parametrize("chunk", [1, 5, 65536])
def test_malformed_bodies_are_refused_naming_the_part_and_the_byte_of_the_body(tmp_path: Path, chunk: int) -> None:
    good = b"--b0und\r\nContent-Type: application/dicom\r\n\r\nAAAA\r\n"
    bad_header = good + b"--b0und\r\nBad Header: 1\r\n\r\nBBBB\r\n--b0und--"
    status, reason = _refusal(bad_header, tmp_path, chunk=chunk)
    assert status == 400
    assert reason == (
        f"malformed multipart body (part 2, byte {len(good) + 12} of the body): Found invalid character 32 in header"
    )
    assert _refusal(good, tmp_path, chunk=chunk) == (400, "multipart body ends inside part 1 (no closing boundary)")
    assert _refusal(good[:20], tmp_path, chunk=chunk) == (400, "part 1 has no end of headers")
    assert _refusal(b"--b0und--", tmp_path, chunk=chunk) == (400, "multipart body has no parts")
    assert _refusal(b"x" * 70_000, tmp_path, chunk=chunk)[1].startswith("body does not contain the multipart boundary")


def test_a_body_that_cannot_be_spooled_is_refused_as_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temp folder that is not there stands in for a full disk: writing the temp file fails either way.
    monkeypatch.setattr(stow_body, "PARTS_IN_MEMORY_BYTES", 100)
    status, reason = _refusal(_body([b"z" * 1000]), tmp_path / "gone")
    assert status == 503 and reason.startswith("the node cannot spool the request body"), reason
