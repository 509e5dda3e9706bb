"""structlog JSON logging with bound context, and the rule that patient identity never reaches a log.

Call :func:`configure_logging` once per process. Stages get a logger with
``structlog.get_logger(__name__).bind(series_uid=..., calling_ae=..., job_id=...)``.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys that may hold patient identity. Dropped from every event as a last line of defence: the
# code never binds them on purpose, but a future log call must not be able to leak them.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "PatientName",
        "patient_id",
        "patientid",
        "PatientID",
        "patient_birth_date",
        "birth_date",
        "PatientBirthDate",
        "accession_number",
        "accession",
        "AccessionNumber",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientAddress",
    }
)


# Library messages (pydicom's validation warnings, pynetdicom's errors) quote the value they complain
# about, and a value may be a patient's name: the quoted part of such a message is replaced.
_MAX_FOREIGN_MESSAGE = 500
_QUERY = re.compile(r"\?[^ \"]*")


def scrub_values(text: str) -> str:
    """``text`` without the values it quotes: everything from its first quote character to its last
    (a value may hold quotes itself, as in O'Brien)."""
    quotes = [i for i, c in enumerate(text) if c in "'\""]
    if not quotes:
        return text
    return text[: quotes[0]] + "[value]" + text[quotes[-1] + 1 :]


def _scrub_foreign(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Records from the stdlib (third-party loggers, the warnings module): scrubbed text only."""
    event = event_dict.get("event")
    if isinstance(event, str):
        if event_dict.get("logger") == "uvicorn.access":
            # The quoted part is the node's own request line: kept, without its query string.
            event_dict["event"] = _QUERY.sub("?[query]", event)[:_MAX_FOREIGN_MESSAGE]
        else:
            event_dict["event"] = scrub_values(event)[:_MAX_FOREIGN_MESSAGE]
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            event_dict["exception"] = scrub_values("".join(traceback.format_exception(*exc_info)))
    return event_dict


def _drop_phi(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key in PHI_KEYS:
            event_dict[key] = "[redacted]"
        else:
            value = event_dict[key]
            # A whole pydicom Dataset (which carries the patient module) is never logged.
            if type(value).__name__ in ("Dataset", "FileDataset"):
                event_dict[key] = "[dataset redacted]"
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_phi,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # One write() per line, message and newline together, as logging.StreamHandler below does: print() writes
        # them separately, and a library record written by the other thread in between ran two JSON records
        # into one line (seen in tests/test_receive_hostile.py's every-line-is-JSON check).
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through the stdlib: render them as JSON too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, _scrub_foreign],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # warnings.warn (pydicom's validation warnings...) goes through the same scrubbed JSON path,
    # never raw to stderr.
    logging.captureWarnings(True)
    quiet_pynetdicom()


def quiet_pynetdicom() -> None:
    """pynetdicom logs request/response identifiers (patient data) unless told not to."""
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # Its INFO lines are per-PDU chatter; warnings and errors still come through.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
