"""Failure classification: the one place that decides whether retrying a delivery can help.

Transient (retry with backoff): the peer is down, slow or busy — refused connection, timeout,
HTTP 5xx / 408 / 429, DIMSE 0xA7xx Out of Resources, association aborted by the network or mid-transfer,
association rejected with result "rejected-transient".

Permanent (dead letter, an operator must act): the peer understood us and said no — association
rejected (unknown calling/called AE), HTTP 4xx other than 408/429, DIMSE 0xA9xx / 0xCxxx / 0x01xx
refusals, SOP class or transfer syntax not supported. Retrying those forever only hides the problem
(MONAI Informatics Gateway issue #153).
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

from node.dimse_status import StoreStatus


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class StatusVerdict:
    outcome: Outcome
    explanation: str


def classify_store_status(code: int) -> StatusVerdict:
    """What a C-STORE response status means for the outbox."""
    hexcode = f"0x{code:04X}"
    if code == StoreStatus.SUCCESS:
        return StatusVerdict(Outcome.DELIVERED, "stored")
    if code in (
        StoreStatus.WARNING_COERCION,
        StoreStatus.WARNING_ELEMENTS_DISCARDED,
        StoreStatus.WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ):
        # Warnings mean the object was stored (PS3.4 B.2.3).
        return StatusVerdict(Outcome.DELIVERED, f"stored with warning {hexcode} {StoreStatus(code).name}")
    if code == StoreStatus.DUPLICATE_SOP_INSTANCE:
        # The peer already holds this SOP Instance UID: re-sending is idempotent, nothing to retry.
        return StatusVerdict(Outcome.DELIVERED, f"already stored at the peer ({hexcode} duplicate SOP instance)")
    # Families by high byte (PS3.4 B.2.3): 0xA7xx refused (resources), 0xA9xx / 0xCxxx errors.
    if code & 0xFF00 == StoreStatus.OUT_OF_RESOURCES:
        return StatusVerdict(Outcome.TRANSIENT, f"peer refused: out of resources ({hexcode}); will retry")
    if code == StoreStatus.PROCESSING_FAILURE:
        # Generic "could not store right now" (full disk, database lock...): retry, bounded by the
        # attempt limit of the retry policy.
        return StatusVerdict(Outcome.TRANSIENT, f"peer reported a processing failure ({hexcode}); will retry")
    if code == StoreStatus.CANCEL:
        return StatusVerdict(Outcome.TRANSIENT, f"peer cancelled the C-STORE ({hexcode}); will retry")
    if code & 0xFF00 == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS:
        return StatusVerdict(
            Outcome.PERMANENT, f"peer rejected the object: data set does not match its SOP class ({hexcode})"
        )
    if code & 0xF000 == StoreStatus.CANNOT_UNDERSTAND:
        return StatusVerdict(Outcome.PERMANENT, f"peer rejected the object: cannot understand it ({hexcode})")
    if code == StoreStatus.SOP_CLASS_NOT_SUPPORTED or code == StoreStatus.NO_SUCH_SOP_CLASS:
        return StatusVerdict(Outcome.PERMANENT, f"peer does not support this SOP class ({hexcode})")
    if code == StoreStatus.REFUSED_NOT_AUTHORIZED:
        return StatusVerdict(
            Outcome.PERMANENT, f"peer says our AE is not authorised to store ({hexcode}); check its AE list"
        )
    known = StoreStatus(code).name if code in StoreStatus._value2member_map_ else "unknown status"
    # Unknown failures are reported as permanent so that an operator sees them instead of a silent
    # retry loop.
    return StatusVerdict(Outcome.PERMANENT, f"peer refused the C-STORE with {hexcode} ({known})")


def http_status_is_transient(status_code: int) -> bool:
    """HTTP: 5xx, 408 Request Timeout and 429 Too Many Requests can succeed later; other 4xx cannot."""
    return status_code >= 500 or status_code in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS)


_HTTP_HINTS: dict[int, str] = {
    HTTPStatus.UNAUTHORIZED: "credentials missing or wrong",
    HTTPStatus.FORBIDDEN: "credentials lack permission to store",
    HTTPStatus.NOT_FOUND: "wrong URL (check the service root path)",
    HTTPStatus.METHOD_NOT_ALLOWED: "wrong URL or the endpoint does not accept uploads",
    HTTPStatus.CONFLICT: "the server refused the instance(s)",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "the server does not accept this content type",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "the server refuses objects this large",
    HTTPStatus.TOO_MANY_REQUESTS: "server is throttling; will retry",
    HTTPStatus.REQUEST_TIMEOUT: "server timed out reading the request; will retry",
}


def describe_http_status(status_code: int, url: str) -> str:
    """An operator-readable reason for an HTTP failure."""
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "unknown status"
    hint = _HTTP_HINTS.get(status_code)
    if hint is None:
        hint = "server error; will retry" if status_code >= 500 else "request refused"
    return f"HTTP {status_code} {phrase} from {url}: {hint}"


# --- what happened when a connection failed --------------------------------------------------------

REFUSED_AT_ONCE = "connection refused at once (nothing listens on that port: the peer is down or restarting)"


def timed_out(timeout_s: float, what: str = "connecting") -> str:
    if what == "connecting":
        return f"timed out connecting after {timeout_s:g} s (host down or unreachable, or a firewall drops packets)"
    return f"timed out {what} after {timeout_s:g} s (the server is overloaded or stuck)"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: __cause__/__context__, urllib3's ``reason``, exceptions in args."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        wrapped = [current.__cause__, current.__context__, reason, *current.args]
        todo += [w for w in wrapped if isinstance(w, BaseException)]


def describe_connect_error(exc: BaseException, timeout_s: float) -> str:
    """Refused at once vs timed out after N s vs the operating system's reason, from an exception chain."""
    causes = list(_causes(exc))
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return REFUSED_AT_ONCE
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"the host name does not resolve ({next(c for c in causes if isinstance(c, socket.gaierror))})"
    if any(isinstance(c, TimeoutError) for c in causes):
        return timed_out(timeout_s)
    for c in causes:
        if isinstance(c, OSError) and c.errno is not None and c.strerror:
            return f"connection failed at once: {c.strerror}"
    if "connection refused" in str(exc).lower():
        return REFUSED_AT_ONCE
    return f"connection failed: {exc}"


def diagnose_tcp_connect(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to host:port fails right now, or None when it succeeds.

    pynetdicom logs the socket error of a failed association but does not return it: one connection
    attempt of our own names it (refused at once, unreachable network, unknown host).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return describe_connect_error(exc, timeout_s)
