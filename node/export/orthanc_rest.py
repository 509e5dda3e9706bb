"""Orthanc REST destination: ``POST /instances`` through pyorthanc; ``GET /system`` for health;
``POST /tools/lookup`` + ``DELETE /instances/{id}`` to delete superseded results (``superseded: delete``).

Orthanc answers 200 with ``Status: Success`` or ``AlreadyStored`` (same SOP Instance UID: idempotent),
400 for something that is not DICOM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pydicom
import structlog
from pydicom.errors import InvalidDicomError
from pyorthanc import Orthanc

from node.config.destinations import OrthancRestDestinationConfig
from node.errors import DeliveryError
from node.export.destinations import DeletionOutcome, DeliveryReport, FileOutcome
from node.export.failures import describe_connect_error, describe_http_status, http_status_is_transient, timed_out


class OrthancRestDestination:
    def __init__(self, name: str, config: OrthancRestDestinationConfig) -> None:
        self.name = name
        self.config = config
        self._url = str(config.url).rstrip("/")
        self._log = structlog.get_logger(__name__).bind(destination=name, url=self._url)

    def _client(self) -> Orthanc:
        password = self.config.password.get_secret_value() if self.config.password else None
        return Orthanc(
            self._url,
            username=self.config.username,
            password=password,
            return_raw_response=True,  # we classify status codes ourselves
            timeout=self.config.timeout_s,
            verify=self.config.tls.httpx_verify(),
        )

    def ping(self) -> None:
        with self._client() as client:
            try:
                response = client.get_system()
            except httpx.HTTPError as exc:
                raise _transport_failure(exc, self._url, self.config.timeout_s) from exc
        _raise_for_status(response, f"{self._url}/system")

    def send(self, paths: Sequence[Path]) -> DeliveryReport:
        outcomes: list[FileOutcome] = []
        url = f"{self._url}/instances"
        with self._client() as client:
            for position, raw_path in enumerate(paths):
                path = Path(raw_path)
                waiting = next((o for o in outcomes if not o.delivered and o.permanent is False), None)
                if waiting is not None:
                    # The order of a result set holds at the PACS: nothing after an object to be retried.
                    outcomes.extend(_not_attempted(paths[position:], waiting.path.name))
                    break
                try:
                    uid = str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID", "")) or None
                    content = path.read_bytes()
                except (InvalidDicomError, OSError, EOFError) as exc:
                    outcomes.append(
                        FileOutcome.failure(path, None, f"not a readable DICOM file: {exc}", permanent=True)
                    )
                    continue
                try:
                    response = client.post_instances(content=content)
                except httpx.HTTPError as exc:
                    error = _transport_failure(exc, self._url, self.config.timeout_s)
                    if not any(o.delivered for o in outcomes):
                        raise error from exc
                    outcomes.append(FileOutcome.failure(path, uid, str(error), permanent=error.permanent))
                    continue
                assert isinstance(response, httpx.Response)  # return_raw_response=True
                if response.status_code >= 400:
                    error = DeliveryError(
                        describe_http_status(response.status_code, url),
                        permanent=not http_status_is_transient(response.status_code),
                    )
                    # Errors that concern the server as a whole (auth, wrong URL, 5xx) before any
                    # success are raised, like a refused connection; 400 is about this file.
                    if response.status_code != httpx.codes.BAD_REQUEST and not any(o.delivered for o in outcomes):
                        raise error
                    outcomes.append(FileOutcome.failure(path, uid, str(error), permanent=error.permanent))
                    continue
                status = str(response.json().get("Status", "Success"))
                detail = "already stored at the peer" if status == "AlreadyStored" else "stored"
                outcomes.append(FileOutcome.success(path, uid, detail))
        report = DeliveryReport(self.name, tuple(outcomes))
        self._log.info(
            "orthanc_send_done",
            files=len(report.outcomes),
            delivered=len(report.delivered),
            failed=len(report.failed),
        )
        return report

    def delete_instances(self, sop_instance_uids: Sequence[str]) -> list[DeletionOutcome]:
        """Look each SOP Instance UID up and delete the instance; one Orthanc does not hold counts as deleted
        (a retry after a crash finds it gone). Orthanc drops a series or study left empty by itself."""
        outcomes: list[DeletionOutcome] = []
        with self._client() as client:
            for uid in sop_instance_uids:
                try:
                    found = client.post(f"{self._url}/tools/lookup", content=uid.encode("ascii"))
                    _raise_for_status(found, f"{self._url}/tools/lookup")
                    ids = [str(r["ID"]) for r in found.json() if r.get("Type") == "Instance"]
                    for orthanc_id in ids:
                        deleted = client.delete(f"{self._url}/instances/{orthanc_id}")
                        _raise_for_status(deleted, f"{self._url}/instances")
                except (httpx.HTTPError, DeliveryError) as exc:
                    error = (
                        _transport_failure(exc, self._url, self.config.timeout_s)
                        if isinstance(exc, httpx.HTTPError)
                        else exc
                    )
                    if not outcomes:  # nothing done yet: the server as a whole failed, like a refused send
                        raise error from exc
                    outcomes.append(DeletionOutcome(uid, False, str(error), error.permanent))
                    continue
                outcomes.append(DeletionOutcome(uid, True, "deleted" if ids else "not at the destination"))
        self._log.info("orthanc_delete_done", instances=len(outcomes), deleted=sum(o.deleted for o in outcomes))
        return outcomes


def _raise_for_status(response: object, url: str) -> None:
    assert isinstance(response, httpx.Response)  # return_raw_response=True
    if response.status_code >= 400:
        raise DeliveryError(
            describe_http_status(response.status_code, url),
            permanent=not http_status_is_transient(response.status_code),
        )


def _not_attempted(paths: Sequence[Path], failed_name: str) -> list[FileOutcome]:
    reason = f"not sent: {failed_name}, before it in the same set, failed and is retried first; will retry"
    return [FileOutcome.failure(Path(p), None, reason, permanent=False) for p in paths]


def _transport_failure(exc: httpx.HTTPError, url: str, timeout_s: float) -> DeliveryError:
    """Classify an httpx exception that happened before any HTTP status arrived."""
    text = str(exc)
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in text:
        return DeliveryError(f"TLS verification of {url} failed ({text}): check tls.ca_file / verify", permanent=True)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return DeliveryError(f"invalid URL {url}: {text}", permanent=True)
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return DeliveryError(f"cannot connect to {url}: {timed_out(timeout_s)}; will retry", permanent=False)
    if isinstance(exc, httpx.TimeoutException):
        what = "waiting for the answer" if isinstance(exc, httpx.ReadTimeout) else "sending the request"
        return DeliveryError(f"connected to {url}, then {timed_out(timeout_s, what)}; will retry", permanent=False)
    if isinstance(exc, httpx.ConnectError):
        return DeliveryError(
            f"cannot connect to {url}: {describe_connect_error(exc, timeout_s)}; will retry", permanent=False
        )
    return DeliveryError(f"HTTP request to {url} failed: {text}; will retry", permanent=False)
