"""`ainode route-test DIR`: real CT headers plus result objects, grouped by series, routes explained.

Run as a subprocess of ``python -m node`` (the ``ainode`` entry point), so the test sees exactly what an
operator sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from demo.paths import PHILIPS_CT, SIEMENS_CT
from node.cli import _COMMAND_MODULES
from tests.result_objects import ct_files, make_secondary_capture

pytestmark = [pytest.mark.unit, pytest.mark.needs("siemens-ct", "philips-ct")]

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
dicom: {ae_title: AINODE}
destinations:
  pacs: {type: dimse, ae_title: PACS, host: 127.0.0.1, port: 104}
routes:
  - name: thin-chest-ct
    when:
      all:
        - {tag: Modality, equals: CT}
        - {tag: SliceThickness, range: {max: 3.0}}
        - calling_ae: {equals: ORTHANC}
    pipelines: [lung-nodule]
    destinations: [pacs]
  - name: rest
    fallback: true
    pipelines: [series-summary]
"""


def route_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "route-test", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    (folder / "siemens").mkdir(parents=True)
    (folder / "philips").mkdir()
    for p in ct_files(SIEMENS_CT)[:6]:
        shutil.copy(p, folder / "siemens" / p.name)
    for p in ct_files(PHILIPS_CT)[:4]:
        shutil.copy(p, folder / "philips" / p.name)
    make_secondary_capture(folder / "sc.dcm")
    (folder / "README.txt").write_text("not DICOM")
    return folder


def test_route_test_groups_by_series_and_explains(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text(CONFIG)

    result = route_test(str(folder), "--config", str(config), "--calling-ae", "ORTHANC", "--json")
    assert result.returncode == 0, result.stderr
    records = {r["series_instance_uid"]: r for r in json.loads(result.stdout)}
    siemens_uid = str(pydicom.dcmread(ct_files(SIEMENS_CT)[0], stop_before_pixels=True).SeriesInstanceUID)
    philips_uid = str(pydicom.dcmread(ct_files(PHILIPS_CT)[0], stop_before_pixels=True).SeriesInstanceUID)
    assert len(records) == 3
    assert records[siemens_uid]["instances"] == 6
    assert records[siemens_uid]["routes"] == ["thin-chest-ct"]  # 3 mm slices
    assert records[siemens_uid]["jobs"] == {"lung-nodule": ["pacs"]}
    assert records[philips_uid]["instances"] == 4
    assert records[philips_uid]["routes"] == ["rest"]  # 5 mm: too thick
    assert "✗ SliceThickness 5 is not within [-inf, 3]" in records[philips_uid]["explanation"]
    sc = next(r for uid, r in records.items() if uid not in (siemens_uid, philips_uid))
    assert sc["modality"] == "OT" and sc["fallback"] is True

    text = route_test(str(folder), "--config", str(config), "--calling-ae", "CT01")
    assert text.returncode == 0, text.stderr
    assert f"series {siemens_uid}  CT  6 instance(s)" in text.stdout
    assert "✗ calling AE 'CT01' does not equal 'ORTHANC'" in text.stdout
    assert "route_decision" not in text.stdout  # logs stay off the report
    assert "C3N" not in text.stdout  # the test data's patient ID never reaches the output


def test_route_test_reports_a_bad_config(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text(CONFIG.replace("range: {max: 3.0}", "regex: '(unclosed'"))
    result = route_test(str(folder), "--config", str(config))
    assert result.returncode == 2
    assert "route 'thin-chest-ct': invalid regex '(unclosed'" in result.stderr

    unindexed = tmp_path / "unindexed.yaml"
    unindexed.write_text(
        CONFIG.replace("tag: SliceThickness, range: {max: 3.0}", "tag: AcquisitionNumber, range: {max: 120}")
    )
    refused = route_test(str(folder), "--config", str(unindexed))
    assert refused.returncode == 2  # the node would not start with it either (same loader)
    assert "route 'thin-chest-ct' tests AcquisitionNumber, which the node does not index" in refused.stderr

    missing = route_test(str(folder), "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_route_test_is_registered_with_ainode() -> None:
    assert "node.cli.route_cmd" in _COMMAND_MODULES


def test_route_test_sees_the_attributes_the_store_indexes(tmp_path: Path) -> None:
    """One normaliser: a series' routing attributes from route-test equal, value for value and type for type
    (SeriesNumber 2 is not 2.0), those the store writes to the index, which the running node routes on."""
    from node.index import queries
    from node.index.db import Database
    from node.store.ingest import InstanceStore
    from node.store.spool import Spool

    folder = make_folder(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text(CONFIG)
    result = route_test(str(folder), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    seen_by_route_test = {r["series_instance_uid"]: r["attributes"] for r in json.loads(result.stdout)}

    db = Database(tmp_path / "data" / "index.sqlite")
    store = InstanceStore(db, Spool(tmp_path / "data"), min_free_bytes=0)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt"):
        store.store_part10(path.read_bytes(), calling_ae="ORTHANC", called_ae="AINODE")
    assert store.flush(timeout_s=30)
    store.close()
    assert len(seen_by_route_test) == 3  # Siemens, Philips, the secondary capture
    for series_uid, attributes in seen_by_route_test.items():
        row = queries.series_row(db, series_uid)
        assert row is not None
        if attributes["Modality"] == "CT":  # the IS, DS and multi-valued attributes are compared too
            assert {"SeriesNumber", "SliceThickness", "ImageType"} <= attributes.keys()
        assert json.dumps(attributes, sort_keys=True) == json.dumps(json.loads(row["attributes"]), sort_keys=True)
