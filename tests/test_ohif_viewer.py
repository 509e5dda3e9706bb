"""OHIF (npm @ohif/app, served by nginx) shows the node's SEG and SR next to the CT, read from a real
Orthanc through DICOMweb, in headless Chromium. Screenshots are kept in artifacts/ohif/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.encode_orthanc_fixtures import encode_siemens_case
from tests.peers.ohif import OhifServer, run_browser_script
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "orthanc", "ohif")]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "ohif"
SCRIPT = Path(__file__).resolve().parent / "browser" / "ohif_smoke.js"
BROWSER_TIMEOUT_S = 420  # the script's own waits give up after 240 s each; this only guards a hang

# Errors on the browser console that say a DICOM object could not be used.
FATAL_CONSOLE_WORDS = (
    "Failed to load",
    "not supported",
    "Unsupported",
    "Error loading",
    "segmentation failed",
    "Error Boundary",
    "Something went wrong",
)


@pytest.mark.slow
def test_ohif_lists_and_loads_seg_and_sr(tmp_path: Path) -> None:
    case = encode_siemens_case(tmp_path / "encoded")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        for path in case.ct_paths + [p for paths in case.outputs.values() for p in paths]:
            assert orthanc.upload(path)["Status"] in ("Success", "AlreadyStored")
        with OhifServer(tmp_path / "ohif", dicomweb_upstream=orthanc.dicomweb_url) as ohif:
            proc = run_browser_script(
                SCRIPT, [ohif.url, case.study_instance_uid, str(ARTIFACTS)], timeout_s=BROWSER_TIMEOUT_S
            )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"browser script gave no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    (ARTIFACTS / "report.json").write_text(json.dumps(report, indent=2))
    assert report["ok"], f"OHIF check failed: {report.get('error')}\n{report.get('failureText', '')[:1500]}"
    assert {"CT", "SEG", "SR", "OT"} <= set(report["modalities"])
    assert "AI nodule SEG AI NOT FOR DIAGNOSTIC USE" in report["descriptions"]
    assert "AI nodule SR AI NOT FOR DIAGNOSTIC USE" in report["descriptions"]
    assert "Nodule 1" in report["segmentPanelText"] and "Nodule 2" in report["segmentPanelText"]
    # The SR's measurements are drawn on the CT with their labels.
    assert "Long axis: 16.00 mm" in report["srText"]
    assert "Probability of cancer: 0.83" in report["srText"]
    assert report["pageErrors"] == [], report["pageErrors"]
    fatal = [e for e in report["consoleErrors"] if any(w.lower() in e.lower() for w in FATAL_CONSOLE_WORDS)]
    assert fatal == [], fatal
    for shot in report["screenshots"]:
        assert Path(shot).stat().st_size > 10_000, f"empty screenshot {shot}"
