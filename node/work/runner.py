"""Load a series, run a pipeline on it, encode its result: the one path of the workers and `ainode analyze`.

The node's worker and the offline CLI differ only in where the files come from (the index, a folder) and
where the result objects go (the spool and the outbox, a folder): both call :func:`run_series`.
torch stays out of this module: the pipeline arrives built (``pipelines.registry``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from pipelines.base import CTVolume, NotApplicable, Output, Pipeline, PipelineResult, ResultStatus
from pipelines.followup.assessment import FollowUpReport

# The follow-up reading of a completed result (``node.work.followup.read_followup`` bound to a job):
# given the volume, the result and the source instances, the reading, or None for none.
Reading = Callable[[CTVolume, PipelineResult, Sequence[pydicom.Dataset]], FollowUpReport | None]


@dataclass(frozen=True)
class SeriesRun:
    """What one run of a pipeline on a series gave."""

    result: PipelineResult
    # The DICOM result objects (SEG, SR, Grad-CAM SC), not yet written; empty when nothing is encoded.
    datasets: list[pydicom.Dataset] = field(default_factory=list)
    # Seconds per step the runner timed: load, inference, followup, encode (those it reached).
    timings_s: dict[str, float] = field(default_factory=dict)
    # The follow-up reading (prior, growth, Lung-RADS, Brock) when one was asked for.
    reading: FollowUpReport | None = None


def run_series(
    pipeline: Pipeline,
    paths: Sequence[Path],
    *,
    series_uid: str | None,
    encode: bool = True,
    uid_seed: Callable[[CTVolume], str] = lambda volume: volume.info.series_instance_uid,
    previous_reports: Callable[[], Sequence[pydicom.Dataset]] = tuple,
    reading: Reading | None = None,
    reading_in_sr: bool = True,
    gradcam_sc: bool = True,
) -> SeriesRun:
    """Load the series in ``paths``, run ``pipeline`` on it and encode a completed result as it declares.

    The encoders follow ``pipeline.outputs`` (``Output.FINDINGS``: SEG, SR and Grad-CAM SC); a pipeline
    without outputs gets none. ``encode=False`` skips them (``ainode analyze`` without ``--dicom-out``).
    A series the loader refuses (not CT, too few slices, uneven spacing...) is a not-applicable result, not
    an error. ``uid_seed`` gives what every result UID derives from (see ``node.encode.encode_results``) and
    ``previous_reports`` the SRs the new result supersedes; both are asked only when there is a result to
    encode.
    """
    from pipelines.loading import load_series

    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        volume = load_series(paths, series_instance_uid=series_uid)
    except NotApplicable as exc:
        return SeriesRun(PipelineResult.not_applicable(pipeline.name, pipeline.model, exc.reason))
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    result = pipeline.run(volume)
    timings["inference"] = time.perf_counter() - t
    if Output.FINDINGS not in pipeline.outputs or result.status is not ResultStatus.COMPLETED:
        return SeriesRun(result, timings_s=timings)

    sources: list[pydicom.Dataset] | None = None
    followup: FollowUpReport | None = None
    if reading is not None:
        t = time.perf_counter()
        sources = source_datasets(paths, volume)
        followup = reading(volume, result, sources)
        timings["followup"] = time.perf_counter() - t
    if not encode:
        return SeriesRun(result, timings_s=timings, reading=followup)

    t = time.perf_counter()
    from node.encode import encode_results

    datasets = encode_results(
        result,
        volume,
        sources if sources is not None else source_datasets(paths, volume),
        uid_seed=uid_seed(volume),
        previous_reports=previous_reports(),
        reading=followup if reading_in_sr else None,
        gradcam_sc=gradcam_sc,
    )
    timings["encode"] = time.perf_counter() - t
    return SeriesRun(result, datasets, timings, followup)


def source_datasets(paths: Sequence[Path], volume: CTVolume) -> list[pydicom.Dataset]:
    """The source images of ``volume`` among ``paths`` (other files, DICOM or not, are skipped)."""
    wanted = {s.sop_instance_uid for s in volume.slices}
    sources: list[pydicom.Dataset] = []
    for path in sorted(paths):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError):  # not DICOM: the loader skipped it too
            continue
        if str(ds.get("SOPInstanceUID", "")) in wanted:
            sources.append(ds)
    return sources
