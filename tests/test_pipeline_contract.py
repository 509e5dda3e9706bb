"""The pipeline contract as the node uses it: outputs choose the encoders, options come from the config.

- a pipeline's declared ``outputs`` (not its name) decide whether the worker encodes DICOM objects;
- ``workers.device`` reaches the pipeline as an argument: ``cpu`` stays on the CPU even where CUDA is present,
  ``cuda`` without CUDA stops start-up naming the field, ``auto`` picks;
- ``workers.pipeline_options`` reach the pipeline and are checked against what it declares;
- node/api, node/cli, node/encode, node/export (and the worker's modules) import no torch.

CUDA is not on this machine: where a test needs "CUDA present" or "CUDA absent" it patches
``torch.cuda.is_available`` (and says so); the model, the loader, the encoder and the index are real.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from demo.ct_factory import numbered_phantom, write_series
from demo.paths import PHILIPS_CT
from node.cli import main
from node.config import NodeConfig, WorkerConfig, parse_config
from node.errors import ConfigError
from node.index.db import Database, now
from node.index.jobs import queue_job
from node.store.ingest import InstanceStore
from node.store.spool import Spool
from node.work.runner import run_series
from node.work.worker import Worker, WorkerSettings, check_worker_device, index_path
from pipelines import registry
from pipelines.base import CTVolume, ModelIdentity, Output, PipelineResult, RuntimeOptions
from tests.encode_helpers import result_with, sphere_finding


def _cuda(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    """Stand-in for the machine: this one has no GPU, so "CUDA present" and "absent" are both patched."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


def _worker(data_dir: Path, workers: dict[str, Any] | None = None) -> Worker:
    config = parse_config({"storage": {"data_dir": str(data_dir), "min_free_disk_mb": 0}, "workers": workers or {}})
    return Worker(WorkerSettings.from_config(config), "w1")


# --- outputs ------------------------------------------------------------------------------------------


class _DrawnNodule:
    """A stand-in pipeline (one sphere drawn into the series' geometry) whose outputs the test chooses."""

    model = ModelIdentity("drawn-nodules", "1", "")

    def __init__(self, name: str, outputs: frozenset[Output]) -> None:
        self.name = name
        self.outputs = outputs

    def run(self, volume: CTVolume) -> PipelineResult:
        z, y, x = volume.shape
        return result_with([sphere_finding(volume, 1, (z // 2, y // 2, x // 2), 4.0)])


def _encodable_series(folder: Path) -> list[Path]:
    """A small generated CT series with the patient/study attributes the result encoders copy."""
    import pydicom

    paths = write_series(folder, numbered_phantom(24, size=48))
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber"):
            setattr(ds, keyword, "")
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.SeriesNumber = "1", "20260101", "120000", 1
        ds.save_as(path)
    return paths


def _install_series(config: NodeConfig, pipelines: list[str]) -> None:
    db = Database(index_path(config))
    store = InstanceStore(db, Spool(config.storage.data_dir), min_free_bytes=0)
    for path in _encodable_series(config.storage.data_dir.parent / "series"):
        store.store_part10(path.read_bytes(), calling_ae="STORESCU", called_ae="AINODE")
    assert store.flush(60)
    store.close()
    with db.transaction() as conn:
        series = conn.execute("SELECT series_uid, study_uid, generation FROM series").fetchone()
        conn.execute("UPDATE series SET state = 'complete', completed_at = ? WHERE series_uid = ?",
                     (now(), series["series_uid"]))  # fmt: skip
        for name in pipelines:
            queue_job(conn, series_uid=series["series_uid"], study_uid=series["study_uid"],
                      generation=series["generation"], pipeline=name, route="test", destinations=[])  # fmt: skip


def test_the_worker_encodes_what_a_pipeline_declares_not_what_its_name_suggests(tmp_path: Path) -> None:
    config = parse_config({"storage": {"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 0}})
    _install_series(config, ["lung-nodule", "series-summary"])
    worker = Worker(WorkerSettings.from_config(config), "w1")
    # Swapped on purpose: "lung-nodule" declares no outputs, "series-summary" declares findings.
    worker._pipelines["lung-nodule"] = _DrawnNodule("lung-nodule", frozenset())
    worker._pipelines["series-summary"] = _DrawnNodule("series-summary", frozenset({Output.FINDINGS}))
    assert worker.run_one() and worker.run_one()
    jobs = {r["pipeline"]: r for r in worker.db.query("SELECT * FROM jobs")}
    assert {j["state"] for j in jobs.values()} == {"done"}, [dict(j) for j in jobs.values()]
    kinds = {
        pipeline: sorted(
            r["kind"] for r in worker.db.query("SELECT kind FROM results WHERE job_id = ?", (jobs[pipeline]["id"],))
        )
        for pipeline in jobs
    }
    assert kinds == {"lung-nodule": [], "series-summary": ["OT", "SEG", "SR"]}


def test_every_registered_pipeline_declares_its_outputs_where_the_node_reads_them() -> None:
    assert registry.pipeline_outputs("lung-nodule") == frozenset({Output.FINDINGS})
    assert registry.pipeline_outputs("series-summary") == frozenset()
    assert registry.load_pipeline("series-summary").outputs == registry.pipeline_outputs("series-summary")


def test_a_route_to_a_pipeline_with_outputs_but_no_destination_is_warned_about() -> None:
    from node.config import configuration_warnings

    routes = [{"name": "summary", "when": {"tag": "Modality", "equals": "CT"}, "pipelines": ["series-summary"]}]
    assert not [w for w in configuration_warnings(parse_config({"routes": routes})) if "destination" in w]
    assert [w for w in configuration_warnings(parse_config({})) if "names no destination" in w]


# --- device ---------------------------------------------------------------------------------------------


def test_device_cuda_without_cuda_stops_start_up_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cuda(monkeypatch, False)
    with pytest.raises(ConfigError, match=r"workers\.device: .*no CUDA device"):
        check_worker_device(WorkerConfig(device="cuda"))
    check_worker_device(WorkerConfig(device="auto"))
    check_worker_device(WorkerConfig(device="cpu"))
    check_worker_device(WorkerConfig(device="cuda", processes=0))  # no workers: nothing would run on it

    config = tmp_path / "node.yaml"
    config.write_text(f"storage: {{data_dir: {tmp_path / 'data'}}}\nworkers: {{device: cuda}}\n")
    assert main(["check-config", str(config)]) == 2
    # serve in-process, without its logging set-up (it would bind structlog to pytest's captured stdout).
    monkeypatch.setattr("node.logging_setup.configure_logging", lambda *args: None)
    assert main(["serve", "--config", str(config), "--port", "1", "--allow", "PACS"]) == 2
    err = capsys.readouterr().err
    assert err.count("workers.device: device 'cuda' was requested but torch sees no CUDA device") == 2, err


def test_auto_picks_cuda_only_when_torch_sees_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.devices import resolve_device

    _cuda(monkeypatch, True)
    assert resolve_device("auto").type == "cuda" and resolve_device("cpu").type == "cpu"
    _cuda(monkeypatch, False)
    assert resolve_device("auto").type == "cpu"


@pytest.mark.ai
def test_the_model_refuses_cuda_where_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.devices import DeviceUnavailable

    _cuda(monkeypatch, False)
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        registry.load_pipeline("lung-nodule", RuntimeOptions(device="cuda"))


@pytest.mark.ai
@pytest.mark.needs("philips-ct")
def test_device_cpu_keeps_the_model_on_the_cpu_even_where_cuda_is_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipelines.lung_nodule.pipeline import LungNodulePipeline

    _cuda(monkeypatch, True)  # `auto` would now take CUDA; `cpu` must not
    pipeline = _worker(tmp_path, {"device": "cpu"}).pipeline("lung-nodule")
    assert isinstance(pipeline, LungNodulePipeline)
    assert pipeline.device.type == "cpu"
    networks = [pipeline.bundle.segmenter, pipeline.bundle.classifier, pipeline.bundle.fp_reducer]
    devices = {p.device.type for net in networks if net is not None for p in net.parameters()}
    assert devices == {"cpu"}
    run = run_series(pipeline, sorted(PHILIPS_CT.iterdir()), series_uid=None, encode=False)
    assert run.result.measurements["device"] == "cpu"
    assert run.result.findings  # it ran: the Philips mass is a finding


# --- options --------------------------------------------------------------------------------------------


@pytest.mark.ai
def test_pipeline_options_from_the_config_reach_the_pipeline(tmp_path: Path) -> None:
    from pipelines.lung_nodule.pipeline import LungNodulePipeline

    default = _worker(tmp_path / "a", {"device": "cpu"}).pipeline("lung-nodule")
    assert isinstance(default, LungNodulePipeline)
    stored = float(default.bundle.metadata["detection_threshold"])
    assert default.detection_threshold == stored
    wanted = 0.9 if stored != 0.9 else 0.8
    options = {"device": "cpu", "pipeline_options": {"lung-nodule": {"detection_threshold": wanted}}}
    tuned = _worker(tmp_path / "b", options).pipeline("lung-nodule")
    assert isinstance(tuned, LungNodulePipeline)
    assert tuned.detection_threshold == wanted


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"lung-nodule": {"detection_treshold": 0.4}},
            "lung-nodule: detection_treshold: Extra inputs are not permitted",
        ),
        ({"lung-nodule": {"detection_threshold": 1.5}}, "lung-nodule: detection_threshold: Input should be less than"),
        ({"series-summary": {"anything": 1}}, "series-summary: anything: Extra inputs are not permitted"),
        ({"lung-nodules": {}}, "unknown pipeline 'lung-nodules'"),
    ],
)
def test_bad_pipeline_options_stop_start_up_naming_the_field(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"workers": {"pipeline_options": options}})
    assert "workers.pipeline_options" in str(err.value) and message in str(err.value), str(err.value)


# --- no torch where the node does not run models ---------------------------------------------------------


def test_the_node_imports_no_torch_outside_the_pipelines() -> None:
    """Every module of node/api, node/cli, node/encode, node/export and the worker's, imported in a fresh
    interpreter, plus what start-up does with the config (check it, warn about it)."""
    probe = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import node.api, node.cli, node.encode, node.export
        for package in (node.api, node.cli, node.encode, node.export):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
        import node.work.runner, node.work.supervisor, node.work.worker, node.service
        from node.cli import build_parser
        from node.config import configuration_warnings, parse_config
        from node.work.worker import check_worker_device
        build_parser()
        config = parse_config({"workers": {"pipeline_options": {"lung-nodule": {"detection_threshold": 0.4}}}})
        configuration_warnings(config)
        check_worker_device(config.workers)
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "monai"))))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
