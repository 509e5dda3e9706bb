"""STOW-RS destination (DICOMweb, PS3.18 10.5) through dicomweb-client; QIDO GET for health.

Per-file outcomes come from the STOW response: ReferencedSOPSequence (stored, maybe with a warning)
and FailedSOPSequence whose FailureReason uses the C-STORE status codes, classified like DIMSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import requests
import structlog
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.config.destinations import BearerAuth, StowRsDestinationConfig
from node.errors import DeliveryError
from node.export.destinations import DeliveryReport, FileOutcome
from node.export.failures import (
    Outcome,
    classify_store_status,
    describe_connect_error,
    describe_http_status,
    http_status_is_transient,
    timed_out,
)


class _ConfiguredTlsSession(requests.Session):
    """A requests Session whose configured ``verify`` beats REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE.

    requests lets those environment variables override ``Session.verify`` (psf/requests#3829), so a
    destination's own ``tls.ca_file`` (or ``verify: false``) would be silently ignored on hosts that
    set them. The default (verify with the system trust) still follows the environment.
    """

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
        if self.verify is not True:
            settings["verify"] = self.verify
        return settings


class StowRsDestination:
    def __init__(self, name: str, config: StowRsDestinationConfig) -> None:
        self.name = name
        self.config = config
        self._url = str(config.url).rstrip("/")
        self._log = structlog.get_logger(__name__).bind(destination=name, url=self._url)

    def _session(self) -> requests.Session:
        session = _ConfiguredTlsSession()
        session.verify = self.config.tls.requests_verify()
        auth = self.config.auth
        if isinstance(auth, BearerAuth):
            session.headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
        elif auth is not None:
            session.auth = (auth.username, auth.password.get_secret_value())
        return session

    def _client(self, session: requests.Session) -> DICOMwebClient:
        client = DICOMwebClient(url=self._url, session=session, timeout=self.config.timeout_s)
        # Retries belong to the outbox (with its backoff and attempt limit), not to the HTTP client.
        client.set_http_retry_params(retry=False)
        return client

    def ping(self) -> None:
        url = f"{self._url}/studies"
        with self._session() as session:
            try:
                response = session.get(
                    url,
                    params={"limit": "1"},
                    headers={"Accept": "application/dicom+json"},
                    timeout=self.config.timeout_s,
                )
            except requests.RequestException as exc:
                raise _request_failure(exc, url, self.config.timeout_s) from exc
        if response.status_code >= 400:
            raise DeliveryError(
                describe_http_status(response.status_code, url),
                permanent=not http_status_is_transient(response.status_code),
            )

    def send(self, paths: Sequence[Path]) -> DeliveryReport:
        outcomes: dict[Path, FileOutcome] = {}
        datasets: list[Dataset] = []
        path_of_uid: dict[str, Path] = {}
        for raw_path in paths:
            path = Path(raw_path)
            try:
                ds = pydicom.dcmread(path)
            except (InvalidDicomError, OSError, EOFError) as exc:
                outcomes[path] = FileOutcome.failure(path, None, f"not a readable DICOM file: {exc}", permanent=True)
                continue
            uid = str(ds.get("SOPInstanceUID", ""))
            if not uid:
                outcomes[path] = FileOutcome.failure(path, None, "no SOP Instance UID", permanent=True)
                continue
            datasets.append(ds)
            path_of_uid[uid] = path
        # One request holds the set but its last object; that one (the SR of a result set, which references
        # the others) follows in a second request once every object before it is stored: a server is free
        # to store the parts of one request in any order, and a viewer must never see the SR alone.
        head, last = (datasets[:-1], datasets[-1:]) if len(datasets) > 1 else (datasets, [])
        if head:
            outcomes.update(self._store(head, path_of_uid))
        if last:
            uid = str(last[0].SOPInstanceUID)
            waiting = next((o for o in outcomes.values() if not o.delivered and o.permanent is False), None)
            if waiting is not None:
                reason = f"not sent: {waiting.path.name}, before it in the same set, failed and is retried first"
                outcomes[path_of_uid[uid]] = FileOutcome.failure(
                    path_of_uid[uid], uid, f"{reason}; will retry", permanent=False
                )
            elif not head:
                outcomes.update(self._store(last, path_of_uid))
            else:
                try:
                    outcomes.update(self._store(last, path_of_uid))
                except DeliveryError as exc:  # the others are stored: this one failed on its own
                    outcomes[path_of_uid[uid]] = FileOutcome.failure(
                        path_of_uid[uid], uid, str(exc), permanent=exc.permanent
                    )
        ordered = tuple(outcomes[Path(p)] for p in paths if Path(p) in outcomes)
        report = DeliveryReport(self.name, ordered)
        self._log.info(
            "stow_send_done",
            files=len(report.outcomes),
            delivered=len(report.delivered),
            failed=len(report.failed),
        )
        return report

    def _store(self, datasets: list[Dataset], path_of_uid: dict[str, Path]) -> dict[Path, FileOutcome]:
        """One STOW-RS request for ``datasets``; their outcomes (``path_of_uid`` may name more files)."""
        url = f"{self._url}/studies"
        sent = {str(ds.SOPInstanceUID) for ds in datasets}
        path_of_uid = {uid: path for uid, path in path_of_uid.items() if uid in sent}
        response_ds: Dataset | None = None
        with self._session() as session:
            try:
                response_ds = self._client(session).store_instances(datasets)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                # 409 Conflict (and some 4xx) carry a response body listing the failed instances.
                parsed = _parse_body(exc.response)
                if parsed is not None and (parsed.get("FailedSOPSequence") or parsed.get("ReferencedSOPSequence")):
                    response_ds = parsed
                else:
                    raise DeliveryError(
                        describe_http_status(status, url), permanent=not http_status_is_transient(status)
                    ) from exc
            except requests.RequestException as exc:
                raise _request_failure(exc, url, self.config.timeout_s) from exc
        return outcomes_from_stow_response(response_ds, path_of_uid, self._url)


def _parse_body(response: requests.Response | None) -> Dataset | None:
    if response is None or not response.content:
        return None
    try:
        payload: Any = response.json()
        # An error body may be any JSON (Orthanc sends its own error object), not DICOM JSON.
        return Dataset.from_json(payload) if isinstance(payload, dict) else None
    except (ValueError, TypeError, KeyError):
        return None


def outcomes_from_stow_response(response: Dataset, path_of_uid: dict[str, Path], url: str) -> dict[Path, FileOutcome]:
    outcomes: dict[Path, FileOutcome] = {}
    for item in response.get("ReferencedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid in path_of_uid:
            warning = item.get("WarningReason")
            detail = "stored" if warning is None else classify_store_status(int(warning)).explanation
            outcomes[path_of_uid[uid]] = FileOutcome.success(path_of_uid[uid], uid, detail)
    for item in response.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid in path_of_uid:
            reason = item.get("FailureReason")
            if reason is None:
                outcomes[path_of_uid[uid]] = FileOutcome.failure(
                    path_of_uid[uid], uid, f"{url} refused the instance without a reason", permanent=True
                )
                continue
            verdict = classify_store_status(int(reason))
            delivered = verdict.outcome is Outcome.DELIVERED
            outcomes[path_of_uid[uid]] = (
                FileOutcome.success(path_of_uid[uid], uid, verdict.explanation)
                if delivered
                else FileOutcome.failure(
                    path_of_uid[uid],
                    uid,
                    f"{verdict.explanation} [{url}]",
                    permanent=verdict.outcome is Outcome.PERMANENT,
                )
            )
    for uid, path in path_of_uid.items():
        if path not in outcomes:
            # A 200 with no per-instance detail (some servers answer with an empty body) means stored.
            if not response.get("ReferencedSOPSequence") and not response.get("FailedSOPSequence"):
                outcomes[path] = FileOutcome.success(path, uid, "stored (server gave no per-instance detail)")
            else:
                outcomes[path] = FileOutcome.failure(
                    path,
                    uid,
                    f"{url} did not mention this instance in its STOW response; will retry",
                    permanent=False,
                )
    return outcomes


def _request_failure(exc: requests.RequestException, url: str, timeout_s: float) -> DeliveryError:
    """Classify a requests exception that happened before any HTTP status arrived."""
    if isinstance(exc, requests.exceptions.SSLError):
        return DeliveryError(f"TLS handshake with {url} failed ({exc}): check tls.ca_file / verify", permanent=True)
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return DeliveryError(f"invalid URL {url}: {exc}", permanent=True)
    if isinstance(exc, requests.ConnectTimeout):
        return DeliveryError(f"cannot connect to {url}: {timed_out(timeout_s)}; will retry", permanent=False)
    if isinstance(exc, requests.Timeout):
        return DeliveryError(
            f"connected to {url}, then {timed_out(timeout_s, 'waiting for the answer')}; will retry", permanent=False
        )
    if isinstance(exc, requests.ConnectionError):
        return DeliveryError(
            f"cannot connect to {url}: {describe_connect_error(exc, timeout_s)}; will retry", permanent=False
        )
    return DeliveryError(f"HTTP request to {url} failed: {exc}; will retry", permanent=False)
