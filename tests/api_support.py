"""Helpers for the HTTP API tests: credentials, STOW-RS bodies, /metrics parsing, findings job rows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from node.api.secret_hash import hash_password, token_digest
from node.index.db import Database, now

# What the clients hold ("secret": the token or password they send); the node's config gets hashes of them.
OPERATOR = {"name": "op", "secret": "operator-secret-1", "role": "operator", "ae_title": "STOWOP"}
VIEWER = {"name": "rad", "secret": "viewer-secret-1", "role": "viewer"}
SENDER = {"name": "pacs", "secret": "sender-secret-1", "role": "sender", "ae_title": "PACSWEB"}
CREDENTIALS = [OPERATOR, VIEWER, SENDER]
ACTION = {"X-AINode-Action": "1"}


def token_credentials(creds: list[dict[str, str]]) -> list[dict[str, str]]:
    """``http.auth.credentials`` for token mode: each client's token as its sha256 digest."""
    return [{**_without_secret(c), "secret_hash": token_digest(c["secret"])} for c in creds]


def password_credentials(creds: list[dict[str, str]]) -> list[dict[str, str]]:
    """``http.auth.credentials`` for basic mode: each client's password as an argon2id hash."""
    return [{**_without_secret(c), "secret_hash": hash_password(c["secret"])} for c in creds]


def _without_secret(cred: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in cred.items() if k != "secret"}


def bearer(cred: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {cred['secret']}"}


def multipart_related(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS request body (PS3.18 §10.5.1.1) and its Content-Type."""
    boundary = f"ainode-test-{uuid.uuid4().hex}"
    chunks = []
    for content in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: httpx.Client, parts: list[bytes], headers: dict[str, str]) -> httpx.Response:
    body, content_type = multipart_related(parts)
    return client.post(
        "/dicom-web/studies",
        content=body,
        headers={**headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
    )


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def add_findings_job(db: Database, series_uid: str, probabilities: list[float], pipeline: str = "lung-nodule") -> int:
    """A finished lung-nodule job with these findings, written as the worker would (the real AI
    pipeline is another team's; these tests are about what the worklist makes of its summary)."""
    findings: list[dict[str, Any]] = [
        {"number": i + 1, "malignancy_probability": p, "long_axis_mm": 8.0 + i, "volume_mm3": 250.0 + 10 * i}
        for i, p in enumerate(probabilities)
    ]
    summary = {
        "pipeline": pipeline,
        "status": "completed",
        "reason": "",
        "model": {"name": pipeline, "version": "test", "weights_sha256": ""},
        "findings": findings,
    }
    t = now()
    with db.transaction() as conn:
        series = conn.execute("SELECT study_uid, generation FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        cur = conn.execute(
            """INSERT INTO jobs (series_uid, study_uid, generation, pipeline, route, destinations, state, attempts,
                   created_at, started_at, finished_at, result_summary)
               VALUES (?, ?, ?, ?, 'test', '[]', 'done', 1, ?, ?, ?, ?)""",
            (series_uid, series["study_uid"], series["generation"], pipeline, t - 5, t - 4, t, json.dumps(summary)),
        )
        job_id = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO job_events (job_id, from_state, to_state, at, detail) VALUES (?, NULL, 'done', ?, 'test')",
            (job_id, t),
        )
    return job_id


def add_dead_delivery(db: Database, job_id: int, destination: str = "pacs") -> int:
    """A result object of ``job_id`` whose delivery died (the outbox is the route team's; this is its row)."""
    t = now()
    sop_uid = f"2.25.{uuid.uuid4().int}"
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO results (sop_instance_uid, job_id, kind, path, created_at) VALUES (?, ?, 'SEG', ?, ?)",
            (sop_uid, job_id, "/nonexistent/result.dcm", t),
        )
        cur = conn.execute(
            """INSERT INTO deliveries (job_id, result_sop_instance_uid, destination, state, attempts,
                   next_attempt_at, last_error, created_at, updated_at)
               VALUES (?, ?, ?, 'dead', 5, ?, 'association rejected by the PACS', ?, ?)""",
            (job_id, sop_uid, destination, t, t, t),
        )
    return int(cur.lastrowid or 0)


def add_pending_delivery(db: Database, job_id: int, path: Path, destination: str = "pacs") -> int:
    """A result object of ``job_id`` (any DICOM file) waiting to be sent to ``destination``."""
    t = now()
    sop_uid = f"2.25.{uuid.uuid4().int}"
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO results (sop_instance_uid, job_id, kind, path, created_at) VALUES (?, ?, 'SEG', ?, ?)",
            (sop_uid, job_id, str(path), t),
        )
        cur = conn.execute(
            """INSERT INTO deliveries (job_id, result_sop_instance_uid, destination, state, next_attempt_at,
                   created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)""",
            (job_id, sop_uid, destination, t, t, t),
        )
    return int(cur.lastrowid or 0)


def spool_files(data_dir: Path) -> set[Path]:
    return {p for p in (data_dir / "spool").glob("*/*/*.dcm")}
