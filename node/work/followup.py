"""The follow-up reading of one exam: find the prior, get its nodules, track them, decide Lung-RADS and Brock.

Called by the runner after the pipeline ran on the current series (only when ``followup.enabled``):

1. the patient's earlier CT series in the look-back window, from each configured source in turn
   (``node.work.priors``); the newest chest series is the prior;
2. its images, fetched into the job's work folder (needed in any case: the alignment uses its lungs);
3. its nodules: from the node's own earlier SR of that series when it has one (its Tracking UIDs then
   carry over), else from running the same pipeline on it now;
4. ``pipelines.followup.assessment.assess_exam``: matching after lung-centroid alignment, growth, Lung-RADS,
   Brock.

Whatever fails on the way (no prior, a head CT only, a PACS that refuses, a prior that cannot be loaded) ends
in a :class:`PriorSearch` that says so in words, and the current exam is still reported.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pydicom
import structlog

from node.config import FollowupConfig
from node.encode.followup import prior_nodules
from node.work.priors import PriorRetrievalError, PriorSeries, fetch_series, find_prior_series
from pipelines.base import CTVolume, NotApplicable, Pipeline, PipelineResult, ResultStatus
from pipelines.followup import lungs
from pipelines.followup.assessment import (
    FollowUpReport,
    PriorExam,
    PriorOutcome,
    PriorSearch,
    assess_exam,
    measurement_of,
    parse_dicom_date,
    patient_context,
)
from pipelines.followup.tracking import NoduleMeasurement

log = structlog.get_logger(__name__)

# Finds the node's own SR of a series it analysed earlier (the index's results), or None.
OwnReport = Callable[[str], Path | None]


def read_followup(
    config: FollowupConfig,
    pipeline: Pipeline,
    volume: CTVolume,
    result: PipelineResult,
    header: pydicom.Dataset,
    *,
    workdir: Path,
    own_report: OwnReport = lambda _series_uid: None,
) -> FollowUpReport:
    """The reading of the current exam (``header``: one of its source instances)."""
    study_date = parse_dicom_date(str(header.get("StudyDate", "")))
    patient = patient_context(
        patient_age=str(header.get("PatientAge", "") or ""),
        patient_sex=str(header.get("PatientSex", "") or ""),
        birth_date=str(header.get("PatientBirthDate", "") or ""),
        study_date=str(header.get("StudyDate", "") or ""),
    )
    search = _search(config, pipeline, header, study_date, workdir, own_report)
    log.info("followup_prior", outcome=search.outcome.value, study_uid=str(header.get("StudyInstanceUID", "")))
    return assess_exam(
        result.findings,
        study_date=study_date,
        lung_centroid_mm=lungs.lung_centroid_mm(volume),
        emphysema_fraction=lungs.emphysema_fraction(volume),
        patient=patient,
        prior=search,
    )


def _search(
    config: FollowupConfig,
    pipeline: Pipeline,
    header: pydicom.Dataset,
    study_date: datetime.date | None,
    workdir: Path,
    own_report: OwnReport,
) -> PriorSearch:
    patient_id = str(header.get("PatientID", "") or "")
    if not patient_id:
        return PriorSearch(PriorOutcome.NONE_FOUND, "no prior searched: the exam has no Patient ID")
    if study_date is None:
        return PriorSearch(PriorOutcome.NONE_FOUND, "no prior searched: the exam has no Study Date")
    if not config.sources:
        return PriorSearch(PriorOutcome.NONE_FOUND, "no prior searched: no PACS is configured for priors")
    failures: list[str] = []
    for source in config.sources:
        try:
            found = find_prior_series(
                source,
                calling_ae=config.calling_ae_title,
                patient_id=patient_id,
                current_study_uid=str(header.get("StudyInstanceUID", "")),
                current_date=study_date,
                lookback_days=config.lookback_days,
            )
        except PriorRetrievalError as exc:
            failures.append(str(exc))
            continue
        if not found:
            continue
        chest_parts = {p.upper() for p in config.chest_body_parts}
        chest = [s for s in found if s.body_part in chest_parts or not s.body_part]
        if not chest:
            parts = ", ".join(sorted({s.body_part for s in found}))
            return PriorSearch(
                PriorOutcome.OTHER_BODY_PART,
                f"earlier CT of this patient found on {source.name}, none of the chest (body part {parts}): "
                "read as a baseline",
            )
        newest = chest[0].study_date
        candidates = [s for s in chest if s.study_date == newest]
        prior = max(candidates, key=lambda s: s.instances or 0)
        try:
            paths = fetch_series(source, prior, calling_ae=config.calling_ae_title, folder=workdir / "prior")
        except PriorRetrievalError as exc:
            return PriorSearch(
                PriorOutcome.NOT_RETRIEVED, f"a prior chest CT of {newest.isoformat()} exists but {exc}"
            )
        return _analysed_prior(pipeline, prior, paths, own_report)
    if failures:
        return PriorSearch(PriorOutcome.NOT_RETRIEVED, "the PACS could not be asked for priors: " + "; ".join(failures))
    return PriorSearch(
        PriorOutcome.NONE_FOUND, f"no earlier CT of this patient in the {config.lookback_days} days before this exam"
    )


def _analysed_prior(pipeline: Pipeline, prior: PriorSeries, paths: list[Path], own_report: OwnReport) -> PriorSearch:
    from pipelines.loading import load_series

    try:
        volume = load_series(paths, series_instance_uid=prior.series_instance_uid)
    except NotApplicable as exc:
        return PriorSearch(PriorOutcome.NOT_RETRIEVED, f"the prior of {prior.study_date.isoformat()} "
                           f"could not be read: {exc.reason}")  # fmt: skip
    report_path = own_report(prior.series_instance_uid)
    nodules: list[NoduleMeasurement]
    sr_uid = ""
    if report_path is not None and report_path.exists():
        sr = pydicom.dcmread(report_path)
        nodules = prior_nodules(sr)
        sr_uid = str(sr.SOPInstanceUID)
        how = f"the node's own earlier result, images from {prior.source}"
    else:
        result = pipeline.run(volume)
        if result.status is not ResultStatus.COMPLETED:
            return PriorSearch(PriorOutcome.NOT_RETRIEVED, f"the prior could not be analysed: {result.reason}")
        nodules = [measurement_of(f) for f in result.findings]
        how = f"retrieved from {prior.source} and analysed now"
    exam = PriorExam(
        study_instance_uid=prior.study_instance_uid,
        study_date=prior.study_date,
        nodules=tuple(nodules),
        lung_centroid_mm=lungs.lung_centroid_mm(volume),
        source=how,
        sr_sop_instance_uid=sr_uid,
    )
    return PriorSearch(PriorOutcome.COMPARED, f"compared with the prior of {prior.study_date.isoformat()}", exam)
