"""The HTTP API of a real node process (``python -m node serve``): health, auth and roles, JSON paging
and filters, metrics after real C-STORE (DCMTK storescu) and STOW-RS ingest, malformed STOW-RS,
operator actions, and patient identity kept out of the log and (by default) out of the API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from demo.ct_factory import CANARIES, CANARY_PATIENT_ID, make_ct_series
from demo.node_process import REPO_ROOT, NodeProcess
from tests.api_support import (
    ACTION,
    CREDENTIALS,
    OPERATOR,
    SENDER,
    VIEWER,
    add_dead_delivery,
    add_findings_job,
    bearer,
    metric,
    scrape,
    spool_files,
    stow,
    token_credentials,
)
from tests.dicom_files import dataset_bytes
from tests.peers.dcmtk import storescu
from tests.peers.net import free_port, port_open, wait_until

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk")]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    workdir = tmp_path_factory.mktemp("api-node")
    with NodeProcess(workdir, http={"auth": {"mode": "token", "credentials": token_credentials(CREDENTIALS)}}) as n:
        yield n


@pytest.fixture
def client(node: NodeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.http_url, timeout=60) as c:
        yield c


def _series(tmp: Path, name: str, slices: int = 6, **kwargs: object) -> tuple[list[Path], str, str]:
    files = make_ct_series(tmp / name, slices=slices, rows=32, columns=32, **kwargs)  # type: ignore[arg-type]
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return files, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _wait_job_done(node: NodeProcess, series_uid: str) -> None:
    wait_until(
        lambda: any(j["state"] == "done" for j in node.jobs(series_uid)), 60, "the series-summary job", interval_s=0.1
    )


# --- health, auth, roles --------------------------------------------------------------------------------
def test_health_and_readiness_open_on_loopback(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["index_writable"]["ok"] and checks["disk_above_watermark"]["ok"]
    assert checks["workers_alive"] == {"ok": True, "alive": 1, "configured": 1}
    assert "ainode_instances_received_total" in client.get("/metrics").text


def test_api_and_page_refuse_missing_or_wrong_credentials(client: httpx.Client) -> None:
    for path in ("/api/studies", "/api/jobs", "/api/series", "/api/deliveries", "/api/me"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get(path, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        assert client.get(path, headers=bearer(VIEWER)).status_code == 200
    page = client.get("/worklist")
    assert page.status_code == 401
    assert 'name="token"' in page.text  # the login form, no worklist
    assert client.post("/dicom-web/studies", content=b"x").status_code == 401


def test_roles_viewer_cannot_act_sender_can_only_store(client: httpx.Client, node: NodeProcess) -> None:
    db = node.db()
    assert client.post("/api/studies/1.2.3/rerun", headers={**bearer(VIEWER), **ACTION}).status_code == 403
    assert client.post("/api/deliveries/1/retry", headers={**bearer(VIEWER), **ACTION}).status_code == 403
    viewer_stow = stow(client, [b"whatever"], bearer(VIEWER))
    assert viewer_stow.status_code == 403
    assert client.get("/api/studies", headers=bearer(SENDER)).status_code == 403
    assert client.get("/worklist", headers=bearer(SENDER)).status_code == 403
    # An operator's action without the anti-CSRF header is refused, and changes nothing.
    before = db.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"]
    missing_header = client.post("/api/studies/1.2.3/rerun", headers=bearer(OPERATOR))
    assert missing_header.status_code == 403 and "X-AINode-Action" in missing_header.json()["detail"]
    assert db.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == before
    assert client.post("/api/studies/1.2.3/rerun", headers={**bearer(OPERATOR), **ACTION}).status_code == 404


def test_token_login_form_gives_a_session_cookie(node: NodeProcess) -> None:
    with httpx.Client(base_url=node.http_url) as browser:
        assert browser.post("/login", data={"token": "wrong-token-123"}).status_code == 401
        signed_in = browser.post("/login", data={"token": VIEWER["secret"]})
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/worklist").status_code == 200
        assert browser.get("/api/me").json()["role"] == "viewer"
        browser.cookies.set("ainode_session", "rad|9999999999|forged")
        assert browser.get("/api/me").status_code == 401


# --- metrics after real ingest -----------------------------------------------------------------------------
def test_metrics_move_after_storescu_ingest(client: httpx.Client, node: NodeProcess, tmp_path: Path) -> None:
    files, _, series_uid = _series(tmp_path, "dimse", slices=8)
    before = scrape(client)
    sent = storescu(node.port, [tmp_path / "dimse"], called=node.ae_title)
    assert sent.returncode == 0, sent.stderr
    node.wait_series_state(series_uid, "complete", 30)
    _wait_job_done(node, series_uid)
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ainode_instances_received_total", source="dimse", result="new") == len(files)
    # Dataset bytes (what the node counts) are the files less their File Meta headers.
    assert 0.95 * sum(len(dataset_bytes(f)) for f in files) <= delta("ainode_bytes_received_total", source="dimse")
    assert delta("ainode_bytes_received_total", source="dimse") < sum(f.stat().st_size for f in files)
    assert delta("ainode_associations_total", outcome="accepted") == 1
    assert delta("ainode_series_completed_total", reason="geometry") == 1
    assert delta("ainode_jobs", state="done") == 1
    assert metric(after, "ainode_series", state="complete") >= 1
    assert delta("ainode_job_duration_seconds_count", pipeline="series-summary", outcome="done") == 1
    assert metric(after, "ainode_job_queue_depth") == 0


# --- STOW-RS -------------------------------------------------------------------------------------------------
def test_stow_upload_is_stored_durably_routed_and_counted(
    client: httpx.Client, node: NodeProcess, tmp_path: Path
) -> None:
    files, study_uid, series_uid = _series(tmp_path, "stow", slices=6)
    before = scrape(client)
    response = stow(client, [f.read_bytes() for f in files], bearer(SENDER))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    stored = response.json()["00081199"]["Value"]
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {item["00081155"]["Value"][0] for item in stored} == expected
    # Answered only after store_part10 returned: every instance is indexed, on disk, with the
    # sender's AE label from its credential (what routing rules see).
    rows = node.db().query(
        "SELECT sop_instance_uid, path, calling_ae FROM instances WHERE series_uid = ?", (series_uid,)
    )
    assert {r["sop_instance_uid"] for r in rows} == expected
    assert all(Path(r["path"]).exists() and r["calling_ae"] == "PACSWEB" for r in rows)
    after = scrape(client)
    assert metric(after, "ainode_instances_received_total", source="stowrs", result="new") - metric(
        before, "ainode_instances_received_total", source="stowrs", result="new"
    ) == len(files)
    assert metric(after, "ainode_bytes_received_total", source="stowrs") > metric(
        before, "ainode_bytes_received_total", source="stowrs"
    )
    assert (
        metric(after, "ainode_stow_requests_total", status="200")
        == metric(before, "ainode_stow_requests_total", status="200") + 1
    )
    # The same path onwards as C-STORE: complete by geometry, routed, the job runs.
    node.wait_series_state(series_uid, "complete", 30)
    _wait_job_done(node, series_uid)
    listed = client.get("/api/studies", headers=bearer(VIEWER)).json()["items"]
    assert study_uid in {s["study_uid"] for s in listed}


def test_stow_malformed_parts_fail_with_reasons_good_parts_stored(
    client: httpx.Client, node: NodeProcess, tmp_path: Path
) -> None:
    files, _, series_uid = _series(tmp_path, "mixed", slices=3)
    good = [f.read_bytes() for f in files[:2]]
    truncated = files[2].read_bytes()[:-500]  # pixel data cut short
    garbage = b"this is not DICOM at all" * 10
    data_dir = node.data_dir
    spool_before = spool_files(data_dir)
    count_before = node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"]

    response = stow(client, [good[0], garbage, good[1], truncated], bearer(OPERATOR))
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["00081199"]["Value"]) == 2
    failed = body["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xC000, 0xC000]
    # The truncated part's File Meta was readable: its failure names the instance.
    truncated_uid = str(pydicom.dcmread(files[2], stop_before_pixels=True).SOPInstanceUID)
    assert "00081155" not in failed[0] and failed[1]["00081155"]["Value"] == [truncated_uid]
    # One summarised Warning header, however many parts failed; each reason in its failed item.
    [warning] = response.headers.get_list("warning")
    assert warning.startswith("299 ") and "2 part(s) failed" in warning and "part 2" in warning, warning
    comments = [item["00000902"]["Value"][0] for item in failed]
    assert "part 2" in comments[0] and "not a DICOM Part-10 file" in comments[0], comments
    assert "part 4" in comments[1] and "truncated" in comments[1], comments

    # Exactly the two good instances were added; nothing of the bad parts, nothing half-written.
    assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == count_before + 2
    new_files = spool_files(data_dir) - spool_before
    assert {p.stem for p in new_files} == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:2]
    }
    assert not list((data_dir / "spool" / ".incoming").iterdir())
    assert node.series_row(series_uid)["instance_count"] == 2  # type: ignore[index]


def test_stow_many_failed_parts_get_one_warning_header(client: httpx.Client) -> None:
    response = stow(client, [b"not DICOM %d" % i for i in range(150)], bearer(OPERATOR))
    assert response.status_code == 409, response.text
    assert len(response.headers.get_list("warning")) == 1
    assert len(response.json()["00081198"]["Value"]) == 150


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        ("application/dicom", b"DICM", 415, "multipart/related"),
        ('multipart/related; type="application/dicom"', b"--x\r\n\r\nabc\r\n--x--", 400, "boundary"),
        ('multipart/related; type="application/dicom"; boundary=abc', b"no parts here", 400, "boundary"),
        ('multipart/related; type="application/dicom"; boundary=abc', b"--abc\r\n\r\nunterminated", 400, "closing"),
        ('multipart/related; type="application/dicom+json"; boundary=abc', b"--abc--", 415, "application/dicom"),
    ],
    ids=["not-multipart", "no-boundary", "boundary-missing-in-body", "unterminated", "metadata-type"],
)
def test_stow_malformed_body_is_refused_with_a_reason_and_stores_nothing(
    client: httpx.Client, node: NodeProcess, content_type: str, body: bytes, status: int, reason: str
) -> None:
    spool_before = spool_files(node.data_dir)
    count_before = node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
    response = client.post("/dicom-web/studies", content=body, headers={**bearer(SENDER), "Content-Type": content_type})
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert response.headers["warning"].startswith("299 ")
    assert spool_files(node.data_dir) == spool_before
    assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == count_before


def test_stow_with_only_bad_parts_is_409(client: httpx.Client, node: NodeProcess) -> None:
    count_before = node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
    response = stow(client, [b"garbage one", b"\x00" * 200], bearer(SENDER))
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 2
    assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == count_before


# --- JSON API, worklist data, actions ---------------------------------------------------------------------------
def test_json_paging_filters_and_worklist_flag(client: httpx.Client, node: NodeProcess, tmp_path: Path) -> None:
    uploaded = []
    for i in range(3):
        files, study_uid, series_uid = _series(tmp_path, f"paging{i}", slices=4, seed=i)
        assert stow(client, [f.read_bytes() for f in files], bearer(SENDER)).status_code == 200
        uploaded.append((study_uid, series_uid))
    for _, series_uid in uploaded:
        node.wait_series_state(series_uid, "complete", 30)
        _wait_job_done(node, series_uid)
    v = bearer(VIEWER)
    everything = client.get("/api/studies", params={"limit": 500}, headers=v).json()
    first = client.get("/api/studies", params={"limit": 2}, headers=v).json()
    second = client.get("/api/studies", params={"limit": 2, "offset": 2}, headers=v).json()
    assert first["total"] == everything["total"] >= 3 and len(first["items"]) == 2
    assert [s["study_uid"] for s in first["items"] + second["items"]] == [s["study_uid"] for s in everything["items"]][
        :4
    ]
    # Newest first: the last upload leads.
    assert everything["items"][0]["study_uid"] == uploaded[-1][0]
    assert client.get("/api/studies", params={"status": "bogus"}, headers=v).status_code == 422
    assert client.get("/api/studies", params={"limit": 0}, headers=v).status_code == 422

    # A lung-nodule result with a high-probability finding flags its study; the others are not flagged.
    flagged_study, flagged_series = uploaded[0]
    add_findings_job(node.db(), flagged_series, [0.12, 0.83])
    flagged = client.get("/api/studies", params={"flagged": "true", "limit": 500}, headers=v).json()["items"]
    row = next(s for s in flagged if s["study_uid"] == flagged_study)
    assert row["nodule_count"] == 2 and row["max_malignancy_probability"] == 0.83 and row["status"] == "done"
    assert flagged_study in row["viewer_url"]
    unflagged = client.get("/api/studies", params={"flagged": "false", "limit": 500}, headers=v).json()["items"]
    assert flagged_study not in {s["study_uid"] for s in unflagged}
    others = [s for s in unflagged if s["study_uid"] in {u[0] for u in uploaded[1:]}]
    assert len(others) == 2 and all(s["nodule_count"] is None for s in others)  # only series-summary ran

    jobs = client.get("/api/jobs", params={"state": "done", "pipeline": "series-summary", "limit": 2}, headers=v).json()
    assert len(jobs["items"]) == 2 and jobs["total"] >= 3
    assert all(j["state"] == "done" and j["result_summary"]["pipeline"] == "series-summary" for j in jobs["items"])
    series = client.get("/api/series", params={"study_uid": uploaded[1][0]}, headers=v).json()
    assert [s["series_uid"] for s in series["items"]] == [uploaded[1][1]]
    detail = client.get(f"/api/studies/{flagged_study}", headers=v).json()
    assert {j["pipeline"] for j in detail["jobs"]} == {"series-summary", "lung-nodule"}
    assert client.get("/api/studies/not-a-uid", headers=v).status_code == 422


def test_rerun_study_and_retry_dead_delivery(client: httpx.Client, node: NodeProcess, tmp_path: Path) -> None:
    files, study_uid, series_uid = _series(tmp_path, "rerun", slices=4, seed=7)
    assert stow(client, [f.read_bytes() for f in files], bearer(OPERATOR)).status_code == 200
    node.wait_series_state(series_uid, "complete", 30)
    _wait_job_done(node, series_uid)
    op = {**bearer(OPERATOR), **ACTION}
    response = client.post(f"/api/studies/{study_uid}/rerun", headers=op)
    assert response.status_code == 202, response.text
    (job_id,) = response.json()["queued_jobs"]
    events = client.get(f"/api/jobs/{job_id}", headers=bearer(VIEWER)).json()["events"]
    assert events[0]["to_state"] == "queued" and "re-run requested by op" in events[1]["detail"]
    wait_until(lambda: node.jobs(series_uid)[-1]["state"] == "done", 60, "the re-run job")

    first_job = node.jobs(series_uid)[0]["id"]
    delivery_id = add_dead_delivery(node.db(), first_job)
    dead = client.get("/api/deliveries", params={"state": "dead"}, headers=bearer(VIEWER)).json()["items"]
    assert delivery_id in {d["id"] for d in dead}
    row = next(
        s for s in client.get("/api/studies", headers=bearer(VIEWER)).json()["items"] if s["study_uid"] == study_uid
    )
    assert row["status"] == "failed"
    assert {
        "kind": "delivery",
        "delivery_id": delivery_id,
        "destination": "pacs",
        "reason": "association rejected by the PACS",
    } in row["failures"]
    assert client.post(f"/api/deliveries/{delivery_id}/retry", headers=op).status_code == 200
    trail = client.get(f"/api/deliveries/{delivery_id}", headers=bearer(VIEWER)).json()["events"]
    assert any(e["to_state"] == "pending" and "operator asked for a retry" in e["detail"] for e in trail)
    assert client.post("/api/deliveries/999999/retry", headers=op).status_code == 404


# --- patient identity -----------------------------------------------------------------------------------------
def test_patient_identity_hidden_by_default_and_never_logged(
    client: httpx.Client, node: NodeProcess, tmp_path: Path
) -> None:
    files, study_uid, _ = _series(tmp_path, "phi", slices=3, seed=11)
    assert stow(client, [f.read_bytes() for f in files] + [b"bad part"], bearer(SENDER)).status_code == 202
    v = bearer(VIEWER)
    for path in ("/api/studies", f"/api/studies/{study_uid}", "/api/series", "/api/jobs", "/worklist", "/metrics"):
        response = client.get(path, headers=v)
        assert response.status_code == 200, path
        assert CANARY_PATIENT_ID not in response.text, path
    study = client.get(f"/api/studies/{study_uid}", headers=v).json()
    assert "patient_name" not in study and "patient_id" not in study
    # ... but the index keeps it for the operator who turns the page's identity column on.
    assert (
        node.db().query("SELECT patient_id FROM studies WHERE study_uid = ?", (study_uid,))[0][0] == CANARY_PATIENT_ID
    )
    log = node.log_text()
    assert '"stow_request"' in log and "/worklist" in log
    for canary in CANARIES:
        assert canary not in log, f"{canary} reached the node's log"
    assert all(json.loads(line) for line in log.splitlines() if line.startswith("{"))


def test_serve_http_port_flag_turns_the_api_on(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    args = [sys.executable, "-m", "node", "serve", "--data-dir", str(tmp_path / "data"), "--bind", "127.0.0.1"]
    args += ["--port", str(dicom_port), "--workers", "0", "--allow", "STORESCU", "--http-port", str(http_port)]
    with (tmp_path / "node.log").open("wb") as log:
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or port_open(http_port), 30, "the HTTP port")
        assert process.poll() is None, (tmp_path / "node.log").read_text()
        ready = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["workers_alive"]["configured"] == 0
        assert httpx.get(f"http://127.0.0.1:{http_port}/api/studies", timeout=10).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "http.auth.credentials is empty" in (tmp_path / "node.log").read_text()


def test_stow_from_dicomweb_client(client: httpx.Client, node: NodeProcess, tmp_path: Path) -> None:
    """A real DICOMweb client library (dicomweb-client, requests underneath) builds its own body."""
    from dicomweb_client.api import DICOMwebClient

    files, _, series_uid = _series(tmp_path, "dwc", slices=4, seed=21)
    web = DICOMwebClient(url=f"{node.http_url}/dicom-web", headers=bearer(SENDER))
    response = web.store_instances([pydicom.dcmread(f) for f in files])
    referenced = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert referenced == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert "FailedSOPSequence" not in response
    stored = node.db().query("SELECT COUNT(*) AS n FROM instances WHERE series_uid = ?", (series_uid,))
    assert stored[0]["n"] == len(files)


@pytest.mark.needs("orthanc")
def test_orthanc_pushes_a_study_over_stow_rs(node: NodeProcess, tmp_path: Path) -> None:
    """The PACS stand-in as the STOW-RS client: Orthanc's DICOMweb plugin sends a study to the node."""
    from demo.local_pacs import LocalOrthanc

    files, study_uid, series_uid = _series(tmp_path, "orthanc", slices=5, seed=31)
    web = {
        "Enable": True,
        "Root": "/dicom-web/",
        "Servers": {"node": {"Url": f"{node.http_url}/dicom-web/", "HttpHeaders": bearer(SENDER)}},
    }
    with LocalOrthanc(tmp_path / "orthanc", extra_config={"DicomWeb": web}) as orthanc:
        for f in files:
            orthanc.upload(f)
        (study,) = orthanc.get("/studies")
        orthanc.post("/dicom-web/servers/node/stow", {"Resources": [study], "Synchronous": True})
    node.wait_series_state(series_uid, "complete", 30)
    rows = node.db().query("SELECT calling_ae FROM instances WHERE study_uid = ?", (study_uid,))
    assert len(rows) == len(files) and {r["calling_ae"] for r in rows} == {"PACSWEB"}


def test_disk_below_watermark_makes_the_node_unready_and_stow_refuse(tmp_path: Path) -> None:
    http = {"auth": {"mode": "token", "credentials": token_credentials(CREDENTIALS)}}
    full_disk = {"storage": {"min_free_disk_mb": 1 << 40}}  # more than any disk here: "full"
    with NodeProcess(tmp_path / "node", full_disk, http=http) as full:
        ready = httpx.get(f"{full.http_url}/readyz", timeout=10)
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert not checks["disk_above_watermark"]["ok"] and checks["index_writable"]["ok"]
        files, _, _ = _series(tmp_path, "full", slices=2, seed=41)
        with httpx.Client(base_url=full.http_url, timeout=30) as c:
            response = stow(c, [f.read_bytes() for f in files], bearer(SENDER))
        assert response.status_code == 409
        reasons = [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]]
        assert reasons == [0xA700, 0xA700]
        assert "watermark" in response.headers["warning"]
        assert full.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
        assert not spool_files(full.data_dir)
