"""Shared by the Orthanc and OHIF tests: the node's outputs for a real CT, written once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from demo.paths import SIEMENS_CT
from node.encode import encode_results, write_results
from tests.encode_helpers import load_ct, read_series, two_nodules


@dataclass(frozen=True)
class StudyOnDisk:
    ct_paths: list[Path]
    study_instance_uid: str
    ct_series_uid: str
    outputs: dict[str, list[Path]]  # modality -> files
    output_series: dict[str, str]  # modality -> SeriesInstanceUID


def encode_siemens_case(out_dir: Path) -> StudyOnDisk:
    ct_paths = sorted(p for p in SIEMENS_CT.iterdir() if p.is_file())
    sources = read_series(SIEMENS_CT)
    volume = load_ct(sources)
    datasets = encode_results(two_nodules(volume), volume, sources, uid_seed="orthanc-case")
    paths = write_results(datasets, out_dir)
    outputs: dict[str, list[Path]] = {}
    series: dict[str, str] = {}
    for ds, path in zip(datasets, paths, strict=True):
        outputs.setdefault(str(ds.Modality), []).append(path)
        series[str(ds.Modality)] = str(ds.SeriesInstanceUID)
    first: pydicom.Dataset = sources[0]
    return StudyOnDisk(
        ct_paths=ct_paths,
        study_instance_uid=str(first.StudyInstanceUID),
        ct_series_uid=str(first.SeriesInstanceUID),
        outputs=outputs,
        output_series=series,
    )
