"""The worklist page in headless Chromium (Debian chromium + playwright-core) against a real node:
a study ingested with DCMTK storescu is listed, a high-probability finding flags its study, the
viewer link carries the study UID, the page refuses a visitor without credentials (Basic auth mode
here; the token mode's login form is covered over HTTP in test_api_http.py).

Screenshots: artifacts/worklist/worklist.png and worklist-priority-only.png (git-ignored)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import httpx
import pydicom
import pytest

from demo.ct_factory import CANARY_PATIENT_NAME, make_ct_series
from demo.node_process import NodeProcess
from tests.api_support import SENDER, add_findings_job, add_pending_delivery, password_credentials, stow
from tests.peers.dcmtk import storescu
from tests.peers.net import free_port, wait_until
from tests.peers.ohif import REPO, run_browser_script

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk", "chromium")]

SCRIPT = Path(__file__).parent / "browser" / "worklist_check.js"
ARTIFACTS = REPO / "artifacts" / "worklist"
OPERATOR_BASIC = {"name": "oper", "secret": "basic-operator-pw", "role": "operator"}
VIEWER_TEMPLATE = "http://viewer.example:3000/viewer?StudyInstanceUIDs={study_uid}"


def test_worklist_page_in_chromium(tmp_path: Path) -> None:
    http = {
        # Health and metrics closed even on loopback here: they need credentials like the API.
        "auth": {
            "mode": "basic",
            "credentials": password_credentials([OPERATOR_BASIC, SENDER]),
            "open_health_on_loopback": False,
        },
        "show_patient_identity": True,
        "priority_threshold": 0.7,
        "viewer_url_template": VIEWER_TEMPLATE,
        "refresh_interval_s": 2,
    }
    # A PACS that is down (nothing listens on its port): the flagged study's result waits for it.
    down_pacs = {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "timeout_s": 5}
    with NodeProcess(tmp_path / "node", {"destinations": {"pacs": down_pacs}}, http=http) as node:
        # A real DIMSE ingest (the study to be flagged) and a STOW-RS one (no findings).
        flagged_files = make_ct_series(tmp_path / "flagged", slices=8, rows=48, columns=48)
        first = pydicom.dcmread(flagged_files[0], stop_before_pixels=True)
        flagged_study, flagged_series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        sent = storescu(node.port, [tmp_path / "flagged"], called=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        node.wait_series_state(flagged_series, "complete", 30)
        plain_files = make_ct_series(tmp_path / "plain", slices=5, rows=48, columns=48, seed=3)
        plain = pydicom.dcmread(plain_files[0], stop_before_pixels=True)
        plain_study, plain_series = str(plain.StudyInstanceUID), str(plain.SeriesInstanceUID)
        with httpx.Client(base_url=node.http_url, timeout=60) as client:
            headers = {"Authorization": "Basic " + _basic(SENDER["name"], SENDER["secret"])}
            assert stow(client, [f.read_bytes() for f in plain_files], headers).status_code == 200
            operator = {"Authorization": "Basic " + _basic(OPERATOR_BASIC["name"], OPERATOR_BASIC["secret"])}
            for path in ("/healthz", "/readyz", "/metrics"):
                refused = client.get(path)
                assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic"), path
                assert client.get(path, headers=operator).status_code == 200, path
            wrong_user = {"Authorization": "Basic " + _basic("nobody", OPERATOR_BASIC["secret"])}
            assert client.get("/api/studies", headers=wrong_user).status_code == 401
        node.wait_series_state(plain_series, "complete", 30)
        for series in (flagged_series, plain_series):
            wait_until(lambda s=series: any(j["state"] == "done" for j in node.jobs(s)), 60, "series-summary job")
        # The lung-nodule result the AI would write: one finding above the 0.7 threshold.
        job_id = add_findings_job(node.db(), flagged_series, [0.91, 0.35, 0.2])
        add_pending_delivery(node.db(), job_id, flagged_files[0])

        def waiting_for_pacs() -> bool:
            rows = node.db().query("SELECT state, waiting_since FROM deliveries")
            return bool(rows) and all(r["state"] == "retry" and r["waiting_since"] for r in rows)

        wait_until(waiting_for_pacs, 30, "the result to wait for the PACS that is down")

        out = ARTIFACTS
        done = run_browser_script(
            SCRIPT,
            [node.http_url, OPERATOR_BASIC["name"], OPERATOR_BASIC["secret"], flagged_study, plain_study, str(out)],
            timeout_s=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        # A sample of /metrics after this real run (storescu + STOW-RS + jobs), kept beside the screenshots.
        with httpx.Client(base_url=node.http_url, timeout=60) as client:
            scraped = client.get("/metrics", headers=operator)
        assert scraped.status_code == 200
        (out / "metrics.txt").write_text(scraped.text)
        assert 'ainode_instances_received_total{result="new",source="dimse"} 8.0' in scraped.text
        assert 'ainode_instances_received_total{result="new",source="stowrs"} 5.0' in scraped.text

    assert seen["anonymous_status_seen"] == 401 and seen["anonymous_api_status"] == 401
    assert "ERR_INVALID_AUTH_CREDENTIALS" in seen.get("anonymous_error", "") or seen.get("anonymous_status") == 401
    assert not seen["anonymous_body_has_study"]
    assert seen["status"] == 200
    flagged, plain_row = seen["flagged"], seen["plain"]
    assert flagged["flag"] == "PRIORITY" and plain_row["flag"] is None
    assert flagged["nodules"] == "3" and flagged["probability"] == "91 %"
    assert plain_row["nodules"] == "—" and plain_row["status"] == "done"
    assert flagged["viewer_href"] == VIEWER_TEMPLATE.format(study_uid=flagged_study)
    assert plain_study in plain_row["viewer_href"]
    assert CANARY_PATIENT_NAME in flagged["patient"]  # show_patient_identity is on for this node
    assert flagged["rerun_visible"]
    assert re.fullmatch(r"waiting for PACS pacs since \d\d:\d\d", flagged["waiting"] or ""), flagged["waiting"]
    assert plain_row["waiting"] is None
    assert seen["order"][:2] == [plain_study, flagged_study]  # newest first
    assert seen["filtered"] == [flagged_study]
    assert seen["rerun_message"].startswith("Re-run: accepted")
    assert (out / "worklist.png").stat().st_size > 10_000


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()
