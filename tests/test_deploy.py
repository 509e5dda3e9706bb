"""deploy/ stays consistent with what runs here: the example node.yaml validates, and the Orthanc
auto-route Lua script forwards each CT series once (never the AI results) on a real Orthanc to a real
DCMTK storescp standing in for the node."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest

from demo.paths import SIEMENS_CT
from node.config import load_config
from node.route.evaluation import evaluate_routes
from tests.peers.dcmtk import STORESCP
from tests.peers.net import dcmtk_env, free_port, port_open, wait_until
from tests.peers.orthanc import OrthancPeer
from tests.result_objects import ct_files, make_results

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "dcmtk", "orthanc")]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_node_yaml_validates_and_routes_real_ct() -> None:
    config = load_config(DEPLOY / "node.yaml")  # the node's own loader: every section, cross-checks
    assert {c.ae_title for c in config.dicom.allowed_callers} == {"ORTHANC"}
    assert set(config.destinations) == {"pacs", "pacs-web"}
    ds = pydicom.dcmread(ct_files(SIEMENS_CT)[0], stop_before_pixels=True)  # 3 mm chest CT
    decision = evaluate_routes(config.routes, ds, "ORTHANC", "AINODE")
    assert decision.jobs() == {"lung-nodule": ("pacs",), "series-summary": ("pacs",)}


def stable_events(orthanc: OrthancPeer) -> int:
    return orthanc.log_path.read_text().count("ai-node autoroute: study ")


def test_orthanc_autoroute_sends_each_ct_series_once_and_not_results(tmp_path: Path) -> None:
    deployed = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    received = tmp_path / "node-received"
    received.mkdir()
    node_port = free_port()
    storescp = subprocess.Popen(
        [STORESCP, "-aet", "AINODE", "-od", str(received), "+uf", str(node_port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ct = ct_files(SIEMENS_CT)[:5]
    try:
        wait_until(lambda: port_open(node_port), 10, "storescp to listen")
        with OrthancPeer(
            tmp_path / "orthanc",
            modalities={"node": ("AINODE", "127.0.0.1", node_port)},
            lua_script=(DEPLOY / "orthanc" / "autoroute.lua").read_text(),
            stable_age_s=1,
            extra_config={"UserMetadata": deployed["UserMetadata"]},
        ) as orthanc:
            for p in ct:
                orthanc.upload(p)
            wait_until(lambda: len(list(received.iterdir())) == len(ct), 30, "the CT series at the node")
            study_id = orthanc.get("/studies")[0]

            # The node sends its results back into the same study: the study becomes stable again,
            # and the script must neither resend the CT nor forward the results.
            for p in make_results(tmp_path / "results"):
                orthanc.upload(p)
            wait_until(lambda: stable_events(orthanc) == 2, 30, "the second OnStableStudy to finish")
            log = orthanc.log_path.read_text()
            assert f"study {study_id} stable, CT series sent to node: 1" in log
            assert f"study {study_id} stable, CT series sent to node: 0" in log
    finally:
        storescp.terminate()
        storescp.wait(timeout=10)
    files = list(received.iterdir())
    assert len(files) == len(ct)
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).Modality) for f in files} == {"CT"}
