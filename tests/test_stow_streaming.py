"""STOW-RS bodies as streams, against a real node process (``python -m node serve``, uvicorn):

- a body of several hundred MB, made part by part as httpx uploads it (chunked, never whole in the test's
  memory), is stored while the node process's peak resident memory grows by far less than the body;
- a body over ``http.max_stow_bytes`` is refused (413) while it is still arriving, and nothing of it is
  stored, not even the complete parts before the one that crossed the limit;
- a part without Content-Type is taken as application/dicom, a part of another type fails on its own;
- a client that goes away in the middle of its body leaves nothing stored, no temp file and no traceback.

The memory figure is a bound, not a timing: /proc/<pid>/status VmHWM (reset just before the request)."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from demo.ct_factory import make_ct_series
from demo.node_process import NodeProcess
from demo.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from demo.stow_stream import SliceStream
from tests.api_support import CREDENTIALS, SENDER, bearer, multipart_related, spool_files, token_credentials
from tests.peers.net import wait_until

pytestmark = [pytest.mark.peers, pytest.mark.slow]

MiB = 1024 * 1024
SLICES = 600  # 512 x 512 x 16 bit each: a body of about 300 MiB
AUTH = {"auth": {"mode": "token", "credentials": token_credentials(CREDENTIALS)}}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    # No workers: the series completes and its job is queued, nothing runs it (this is about receiving).
    config = {"workers": {"processes": 0}, "logging": {"level": "INFO"}}
    with NodeProcess(tmp_path_factory.mktemp("stow-stream"), config, http=AUTH) as n:
        yield n


def _instance_count(node: NodeProcess) -> int:
    return int(node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"])


def test_a_large_body_is_stored_with_memory_far_below_its_size(node: NodeProcess) -> None:
    assert node.process is not None
    pid = node.process.pid
    body = SliceStream(SLICES)
    reset_peak_rss(pid)
    rss_before = rss_bytes(pid)
    with httpx.Client(base_url=node.http_url, timeout=600) as client:
        response = client.post(
            "/dicom-web/studies",
            content=iter(body),
            headers={**bearer(SENDER), "Content-Type": body.content_type, "Accept": "application/dicom+json"},
        )
    peak_growth = peak_rss_bytes(pid) - rss_before

    assert response.status_code == 200, response.text[:1000]
    assert body.bytes_sent > 256 * MiB
    stored = {item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]}
    assert stored == set(body.sop_instance_uids) and len(stored) == SLICES
    rows = node.db().query("SELECT COUNT(*) AS n FROM instances WHERE series_uid = ?", (body.series_uid,))
    assert rows[0]["n"] == SLICES
    # The body in memory (the old reader) grows the process by at least the body's size.
    assert peak_growth < body.bytes_sent / 4, (
        f"peak RSS grew by {peak_growth / MiB:.0f} MiB for a {body.bytes_sent / MiB:.0f} MiB body"
    )
    assert not list((node.data_dir / "spool" / ".incoming").iterdir())


def _post_without_finishing(port: int, headers: dict[str, str], body: bytes | None) -> http.client.HTTPResponse:
    """POST whose body never ends: ``body`` as one chunk of a chunked body and no last chunk (or, with
    ``body`` None, only the headers), then read the answer. Only a server that judges the body while it
    arrives can answer; one that waits for the end of the body leaves the read to its deadline."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    lines = ["POST /dicom-web/studies HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    if body is not None:
        lines.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if body is not None:
        sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n")
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_a_body_over_the_limit_is_refused_while_it_arrives_and_nothing_is_stored(
    tmp_path: Path, declared: bool
) -> None:
    limit = 1 * MiB
    files = make_ct_series(tmp_path / "ct", slices=3, rows=64, columns=64)
    good, boundary_type = multipart_related([f.read_bytes() for f in files[:2]])
    closing = good.rindex(b"--ainode-test-")  # the close delimiter: the third part starts there instead
    boundary = boundary_type.rsplit("boundary=", 1)[1]
    head = good[:closing] + f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = head + files[2].read_bytes() + b"\0" * (limit + 1 - len(head) - files[2].stat().st_size)
    assert len(body) == limit + 1  # its last byte crosses the limit: the server has read all that was sent

    with NodeProcess(tmp_path / "node", http={**AUTH, "max_stow_bytes": limit}) as node:
        assert node.http_port is not None
        headers = {**bearer(SENDER), "Content-Type": boundary_type}
        if declared:
            response = _post_without_finishing(node.http_port, {**headers, "Content-Length": str(len(body))}, None)
        else:
            response = _post_without_finishing(node.http_port, headers, body)
        answer = response.read().decode()
        assert response.status == 413, answer
        assert "http.max_stow_bytes" in answer and response.getheader("Warning", "").startswith("299 ")
        # The two complete parts before the limit are not stored either: a refused body stores nothing.
        assert _instance_count(node) == 0
        assert not spool_files(node.data_dir)
        assert not list((node.data_dir / "spool" / ".incoming").iterdir())


def test_a_part_without_content_type_is_dicom_a_part_of_another_type_fails_alone(
    node: NodeProcess, tmp_path: Path
) -> None:
    [slice_file] = make_ct_series(tmp_path / "ct", slices=1, rows=64, columns=64, seed=5)
    boundary = "typed-parts"
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n".encode()
        + f"--{boundary}\r\n\r\n".encode()
        + slice_file.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with httpx.Client(base_url=node.http_url, timeout=60) as client:
        response = client.post(
            "/dicom-web/studies", content=body, headers={**bearer(SENDER), "Content-Type": content_type}
        )
    assert response.status_code == 202, response.text
    [failed] = response.json()["00081198"]["Value"]
    assert "part 1" in failed["00000902"]["Value"][0] and "application/json" in failed["00000902"]["Value"][0]
    [stored] = response.json()["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [str(pydicom.dcmread(slice_file, stop_before_pixels=True).SOPInstanceUID)]


def test_a_client_gone_mid_body_leaves_nothing_stored_and_no_temp_file(node: NodeProcess, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "ct", slices=2, rows=64, columns=64, seed=9)
    body, content_type = multipart_related([f.read_bytes() for f in files])
    count_before, spool_before = _instance_count(node), spool_files(node.data_dir)
    assert node.http_port is not None
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=30) as sock:
        head = [
            "POST /dicom-web/studies HTTP/1.1",
            f"Host: 127.0.0.1:{node.http_port}",
            f"Authorization: Bearer {SENDER['secret']}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[: len(body) - 100])  # then it goes away
    wait_until(lambda: "disconnected before the end of the body" in node.log_text(), 30, "the refusal in the log")
    assert _instance_count(node) == count_before and spool_files(node.data_dir) == spool_before
    assert not list((node.data_dir / "spool" / ".incoming").iterdir())
    assert "Traceback" not in node.log_text()
    with httpx.Client(base_url=node.http_url, timeout=30) as client:  # and the node goes on serving
        assert client.get("/healthz").status_code == 200
