"""Find and fetch a patient's earlier CT from a PACS: C-FIND + C-GET (DIMSE) or QIDO-RS + WADO-RS (DICOMweb).

The worker asks each configured source in turn (``followup.sources``) for CT studies of the same Patient ID
dated within the look-back window before the current study, newest first, then, at series level, for the
study's CT series and their BodyPartExamined. The chosen series is fetched into a folder of Part-10 files.

Why C-GET and not C-MOVE to the node itself: a C-MOVE's images arrive through the node's own SCP, as a new
series the node would route and analyse as a job of its own, while the worker that asked waits; C-GET
brings them back on the worker's own association, into a folder it owns, and PACS without C-GET are served
by the DICOMweb path. (PS3.4 C.4.3.)

The Patient ID is in the query and nowhere else: no log line, no exception text, no audit field here names it.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import structlog
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated names
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from node.config import PriorSourceConfig
from node.logging_setup import quiet_pynetdicom

log = structlog.get_logger(__name__)

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


class PriorRetrievalError(Exception):
    """A source could not be queried or refused to send; the message names no patient."""


@dataclass(frozen=True)
class PriorSeries:
    study_instance_uid: str
    series_instance_uid: str
    study_date: datetime.date
    body_part: str  # BodyPartExamined, upper case, "" when the PACS has none
    instances: int | None
    source: str  # the configured source's name


def _dicom_date(value: object) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(str(value).strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _date_range(before: datetime.date, lookback_days: int) -> str:
    start = before - datetime.timedelta(days=lookback_days)
    # The range is inclusive; the current study's own date is excluded later by comparing dates.
    return f"{start:%Y%m%d}-{before:%Y%m%d}"


def find_prior_series(
    source: PriorSourceConfig,
    *,
    calling_ae: str,
    patient_id: str,
    current_study_uid: str,
    current_date: datetime.date,
    lookback_days: int,
) -> list[PriorSeries]:
    """Every CT series of the patient's earlier studies in the window, newest study first."""
    if source.protocol == "dicomweb":
        series = _find_dicomweb(source, patient_id, _date_range(current_date, lookback_days))
    else:
        series = _find_dimse(source, calling_ae, patient_id, _date_range(current_date, lookback_days))
    earlier = [s for s in series if s.study_instance_uid != current_study_uid and s.study_date < current_date]
    return sorted(earlier, key=lambda s: s.study_date, reverse=True)


def fetch_series(source: PriorSourceConfig, prior: PriorSeries, *, calling_ae: str, folder: Path) -> list[Path]:
    """The series' instances as Part-10 files in ``folder``; PriorRetrievalError when none came."""
    folder.mkdir(parents=True, exist_ok=True)
    if source.protocol == "dicomweb":
        paths = _fetch_dicomweb(source, prior, folder)
    else:
        paths = _fetch_dimse(source, prior, calling_ae, folder)
    if not paths:
        raise PriorRetrievalError(f"{source.name} sent no images of the prior series")
    return paths


# --- DIMSE


def _ae(calling_ae: str, source: PriorSourceConfig) -> AE:
    # The C-FIND identifier holds the Patient ID, and pynetdicom logs identifiers unless told not to: told
    # here, before every association, not only when the process configured its logging (the PHI canary test).
    quiet_pynetdicom()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = source.timeout_s
    ae.dimse_timeout = source.timeout_s
    ae.network_timeout = source.timeout_s
    return ae


def _nodelay(assoc: object) -> None:
    # DCMTK and Orthanc stall on Nagle + delayed ACK without it (../shared/REAL-PEERS.md).
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    raw = getattr(sock, "socket", None)
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _c_find(source: PriorSourceConfig, calling_ae: str, query: Dataset) -> list[Dataset]:
    ae = _ae(calling_ae, source)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(source.host, source.port, ae_title=source.ae_title)
    if not assoc.is_established:
        raise PriorRetrievalError(f"{source.name} did not accept a C-FIND association")
    _nodelay(assoc)
    answers: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                raise PriorRetrievalError(f"{source.name}: C-FIND got no response")
            if code in (0xFF00, 0xFF01) and identifier is not None:
                answers.append(identifier)
            elif code != 0x0000:
                raise PriorRetrievalError(f"{source.name} refused the C-FIND (status 0x{code:04X})")
    finally:
        assoc.release()
    return answers


def _find_dimse(source: PriorSourceConfig, calling_ae: str, patient_id: str, dates: str) -> list[PriorSeries]:
    study_query = Dataset()
    study_query.QueryRetrieveLevel = "STUDY"
    study_query.PatientID = patient_id
    study_query.StudyDate = dates
    study_query.StudyInstanceUID = ""
    study_query.ModalitiesInStudy = ""
    out: list[PriorSeries] = []
    for study in _c_find(source, calling_ae, study_query):
        modalities = study.get("ModalitiesInStudy", "")
        modalities = [modalities] if isinstance(modalities, str) else list(modalities)
        if modalities and modalities != [""] and "CT" not in modalities:
            continue
        date = _dicom_date(study.get("StudyDate", ""))
        if date is None:
            continue
        series_query = Dataset()
        series_query.QueryRetrieveLevel = "SERIES"
        series_query.PatientID = patient_id
        series_query.StudyInstanceUID = str(study.StudyInstanceUID)
        series_query.SeriesInstanceUID = ""
        series_query.Modality = "CT"
        series_query.BodyPartExamined = ""
        series_query.NumberOfSeriesRelatedInstances = ""
        for series in _c_find(source, calling_ae, series_query):
            prior = _prior_series(series, str(study.StudyInstanceUID), date, source)
            if prior is not None:
                out.append(prior)
    return out


def _prior_series(
    series: Dataset, study_uid: str, study_date: datetime.date, source: PriorSourceConfig
) -> PriorSeries | None:
    """A CT series of a query answer (C-FIND or QIDO-RS, same attributes) as a prior; None for other modalities."""
    if str(series.get("Modality", "CT")) != "CT":
        return None
    count = series.get("NumberOfSeriesRelatedInstances", None)
    return PriorSeries(
        study_instance_uid=study_uid,
        series_instance_uid=str(series.SeriesInstanceUID),
        study_date=study_date,
        body_part=str(series.get("BodyPartExamined", "") or "").strip().upper(),
        instances=int(count) if count not in (None, "") else None,
        source=source.name,
    )


def _fetch_dimse(source: PriorSourceConfig, prior: PriorSeries, calling_ae: str, folder: Path) -> list[Path]:
    ae = _ae(calling_ae, source)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles: list[Any] = []  # SCP/SCU role selection items (pynetdicom's ext_neg list)
    for sop_class in (CT_STORAGE, ENHANCED_CT_STORAGE):
        ae.add_requested_context(sop_class)
        roles.append(build_role(sop_class, scp_role=True))
    written: list[Path] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = folder / f"{len(written):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
        return 0x0000

    assoc = ae.associate(
        source.host,
        source.port,
        ae_title=source.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise PriorRetrievalError(f"{source.name} did not accept a C-GET association")
    _nodelay(assoc)
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = prior.study_instance_uid
    query.SeriesInstanceUID = prior.series_instance_uid
    final: int | None = None
    try:
        for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if status is None or "Status" not in status:
                # Orthanc answers a C-GET it does not allow by aborting the association: no status at all.
                raise PriorRetrievalError(f"{source.name} refused to send the prior (C-GET aborted, no status)")
            final = int(status.Status)
    finally:
        assoc.release()
    if final not in (0x0000, 0xB000) or not written:
        code = f"0x{final:04X}" if final is not None else "none"
        raise PriorRetrievalError(f"{source.name} refused to send the prior (C-GET status {code})")
    return written


# --- DICOMweb


def _client(source: PriorSourceConfig) -> DICOMwebClient:
    assert source.url is not None  # checked by the config
    return DICOMwebClient(url=source.url)


def _find_dicomweb(source: PriorSourceConfig, patient_id: str, dates: str) -> list[PriorSeries]:
    client = _client(source)
    try:
        studies = client.search_for_studies(search_filters={"PatientID": patient_id, "StudyDate": dates})
        out: list[PriorSeries] = []
        for study_json in studies:
            study = Dataset.from_json(study_json)
            date = _dicom_date(study.get("StudyDate", ""))
            if date is None:
                continue
            uid = str(study.StudyInstanceUID)
            found = client.search_for_series(
                uid, search_filters={"Modality": "CT"}, fields=["BodyPartExamined", "NumberOfSeriesRelatedInstances"]
            )
            for series_json in found:
                prior = _prior_series(Dataset.from_json(series_json), uid, date, source)
                if prior is not None:
                    out.append(prior)
        return out
    except Exception as exc:  # requests' errors quote the URL, whose query string holds the Patient ID
        raise PriorRetrievalError(f"{source.name}: QIDO-RS query failed ({type(exc).__name__})") from None


def _fetch_dicomweb(source: PriorSourceConfig, prior: PriorSeries, folder: Path) -> list[Path]:
    client = _client(source)
    try:
        datasets: Sequence[pydicom.Dataset] = client.retrieve_series(
            prior.study_instance_uid, prior.series_instance_uid
        )
    except Exception as exc:
        raise PriorRetrievalError(f"{source.name} refused to send the prior ({type(exc).__name__})") from None
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
