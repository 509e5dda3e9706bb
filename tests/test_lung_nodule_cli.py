"""`ainode analyze` end to end on files (same path as the node's worker), and the CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

from node.cli import build_parser, main
from tests.ct_series_factory import numbered_phantom, write_series


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
