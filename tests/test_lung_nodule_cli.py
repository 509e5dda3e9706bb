"""`ainode analyze` end to end on files (same path as the node's worker), and the CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.ct_factory import numbered_phantom, write_series
from demo.paths import PHILIPS_CT
from node.cli import build_parser, main

pytestmark = pytest.mark.ai


def test_ai_commands_are_registered() -> None:
    parser = build_parser()
    for command in ("analyze", "train", "evaluate"):
        args = parser.parse_args([command, "x"] if command == "analyze" else [command])
        assert callable(args.func)


def test_analyze_writes_not_applicable_json_for_a_short_series(tmp_path: Path) -> None:
    write_series(tmp_path / "series", numbered_phantom(5))
    out = tmp_path / "result.json"
    assert main(["analyze", str(tmp_path / "series"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "not_applicable"
    assert "too few slices" in result["reason"]
    assert result["disclaimer"] == "NOT FOR DIAGNOSTIC USE"
    assert len(result["model"]["weights_sha256"]) == 64


def test_analyze_reports_loader_refusals(tmp_path: Path) -> None:
    write_series(tmp_path / "series", numbered_phantom(20), modality="MR")
    out = tmp_path / "result.json"
    assert main(["analyze", str(tmp_path / "series"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "not_applicable" and "not CT" in result["reason"]


@pytest.mark.needs("philips-ct", "dciodvfy")
def test_analyze_dicom_out_writes_valid_results_for_the_philips_series(tmp_path: Path) -> None:
    import pydicom

    from tests.dciodvfy import dciodvfy

    series = PHILIPS_CT
    out = tmp_path / "dicom"
    assert main(["analyze", str(series), "--json", str(tmp_path / "r.json"), "--dicom-out", str(out)]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["findings"], "the Philips series' annotated mass is a finding, so SEG and SC must be written"
    files = sorted(out.glob("*.dcm"))
    modalities = sorted(pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files)
    # One SR always; with findings, one SEG and one Grad-CAM SC per nodule.
    expected = ["SR"] + (["SEG"] + ["OT"] * len(result["findings"]) if result["findings"] else [])
    assert modalities == sorted(expected)
    for f in files:
        assert dciodvfy(f).errors == [], f.name
