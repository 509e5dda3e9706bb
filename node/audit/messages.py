"""DICOM audit messages (PS3.15 A.5, the XML of the DICOM Audit Message Schema) for the node's events.

One builder per event the node reports; each returns an :class:`AuditMessage`: a short event name (the
metrics' label) and the XML. Codes are those of PS3.16: EventID from CID 400, EventTypeCode from CID 401,
RoleIDCode from CID 402, ParticipantObjectIDTypeCode from CID 404 (and RFC 3881's "URI" for HTTP paths);
they are written as the schema wants them (``csd-code``, ``codeSystemName``, ``originalText``).

What a message names: AE titles, host addresses, credential names, study UIDs, SOP class UIDs and counts.
Never a patient's name, ID or birth date, nor an accession number: PS3.15 A.5.3 would have a Patient
participant object, but the audit file and the collector are read by more people than the images are, and
the study UID leads an auditor to the patient through the PACS. The schema wants a ParticipantObjectName
(or a query) on every participant object: a study's is its UID again.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str


# CID 400 Audit Event ID
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
# CID 401 Audit Event Type Code
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
# CID 402 Audit Active Participant Role ID Code
APPLICATION = Code("110150", "DCM", "Application")
APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
DESTINATION = Code("110152", "DCM", "Destination Role ID")
SOURCE = Code("110153", "DCM", "Source Role ID")
# CID 404 Audit Participant Object ID Type Code
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
NODE_ID = Code("110182", "DCM", "Node ID")
URI = Code("12", "RFC-3881", "URI")


class Action(enum.StrEnum):
    """EventActionCode."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(enum.StrEnum):
    """EventOutcomeIndicator."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


@dataclass(frozen=True)
class Source:
    """AuditSourceIdentification: who reports (the node)."""

    source_id: str
    enterprise_site_id: str | None = None


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a DICOM application (AE title), an HTTP user, or the node itself."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    ae_title: str | None = None  # written as AlternativeUserID "AETITLES=..." (PS3.15 A.5.2.2)
    address: str | None = None  # an IP address (NetworkAccessPointTypeCode 2)


@dataclass(frozen=True)
class AuditMessage:
    event: str  # short name: metrics label, tests
    xml: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str) -> str:
    """The local file holds one message per line: no line breaks inside text content."""
    return " ".join(text.split())


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": code.value, "codeSystemName": code.scheme, "originalText": code.meaning})


def _message(
    event: str,
    source: Source,
    event_id: Code,
    action: Action,
    outcome: Outcome,
    participants: list[Participant],
    *,
    event_type: Code | None = None,
    description: str | None = None,
    objects: list[ET.Element] | None = None,
) -> AuditMessage:
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {"EventActionCode": action.value, "EventDateTime": _now(), "EventOutcomeIndicator": outcome.value},
    )
    _code(ident, "EventID", event_id)
    if event_type is not None:
        _code(ident, "EventTypeCode", event_type)
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = _one_line(description)
    for p in participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.is_requestor else "false"}
        if p.ae_title:
            attrs["AlternativeUserID"] = f"AETITLES={p.ae_title}"
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = "2"
        element = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(element, "RoleIDCode", p.role)
    source_attrs = {"AuditSourceID": source.source_id}
    if source.enterprise_site_id:
        source_attrs["AuditEnterpriseSiteID"] = source.enterprise_site_id
    audit_source = ET.SubElement(root, "AuditSourceIdentification", source_attrs)
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server process
    root.extend(objects or [])
    return AuditMessage(event, ET.tostring(root, encoding="unicode"))


def _study(study_uid: str, instances_by_sop_class: Mapping[str, int] | None = None) -> ET.Element:
    obj = ET.Element(
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": study_uid, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"},
    )
    _code(obj, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    ET.SubElement(obj, "ParticipantObjectName").text = study_uid
    if instances_by_sop_class:
        description = ET.SubElement(obj, "ParticipantObjectDescription")
        for sop_class, count in sorted(instances_by_sop_class.items()):
            attrs = {"NumberOfInstances": str(count)}
            if sop_class:
                attrs["UID"] = sop_class
            ET.SubElement(description, "SOPClass", attrs)
    return obj


def _node(source: Source, ae_title: str, *, requestor: bool, role: Code | None = None) -> Participant:
    return Participant(source.source_id, requestor, role=role, ae_title=ae_title)


# --- the events ----------------------------------------------------------------------------------------
def application_activity(source: Source, ae_title: str, *, started: bool) -> AuditMessage:
    """The node started or stopped (PS3.15 A.5.3.1)."""
    return _message(
        "application_start" if started else "application_stop",
        source,
        APPLICATION_ACTIVITY,
        Action.EXECUTE,
        Outcome.SUCCESS,
        [_node(source, ae_title, requestor=False, role=APPLICATION)],
        event_type=APPLICATION_START if started else APPLICATION_STOP,
    )


def association(
    source: Source, ae_title: str, *, calling_ae: str, address: str, accepted: bool, reason: str | None = None
) -> AuditMessage:
    """A DICOM association accepted or refused: a Security Alert of type Node Authentication
    (PS3.15 A.5.3.11), as archives report it; a refusal is a minor failure with the reason."""
    return _message(
        "association_accepted" if accepted else "association_refused",
        source,
        SECURITY_ALERT,
        Action.EXECUTE,
        Outcome.SUCCESS if accepted else Outcome.MINOR_FAILURE,
        [
            Participant(calling_ae or "(none)", True, ae_title=calling_ae or None, address=address),
            _node(source, ae_title, requestor=False),
        ],
        event_type=NODE_AUTHENTICATION,
        description=reason,
        objects=[_node_object(calling_ae or address)],
    )


def _node_object(node_id: str) -> ET.Element:
    obj = ET.Element(
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": node_id, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "13"},
    )
    _code(obj, "ParticipantObjectIDTypeCode", NODE_ID)
    ET.SubElement(obj, "ParticipantObjectName").text = node_id
    return obj


def instances_received(
    source: Source,
    ae_title: str,
    *,
    sender: Participant,
    studies: Mapping[str, Mapping[str, int]],
    failed: int = 0,
) -> AuditMessage:
    """Instances stored by one association or one STOW-RS request (PS3.15 A.5.3.7, action Create):
    ``studies`` is {study UID: {SOP class UID: instances}}; ``failed`` instances refused make it a minor failure."""
    return _message(
        "instances_received",
        source,
        INSTANCES_TRANSFERRED,
        Action.CREATE,
        Outcome.MINOR_FAILURE if failed else Outcome.SUCCESS,
        [
            Participant(sender.user_id, True, role=SOURCE, ae_title=sender.ae_title, address=sender.address),
            _node(source, ae_title, requestor=False, role=DESTINATION),
        ],
        description=f"{failed} instance(s) refused" if failed else None,
        objects=[_study(uid, by_class) for uid, by_class in sorted(studies.items())],
    )


def results_exported(
    source: Source, ae_title: str, *, destination: str, study_uid: str, sent: int, failed: int
) -> AuditMessage:
    """Result objects sent to a destination (PS3.15 A.5.3.7 from the sender's side, action Read)."""
    return _message(
        "results_exported",
        source,
        INSTANCES_TRANSFERRED,
        Action.READ,
        Outcome.MINOR_FAILURE if failed else Outcome.SUCCESS,
        [
            _node(source, ae_title, requestor=True, role=SOURCE),
            Participant(destination, False, role=DESTINATION),
        ],
        description=f"{failed} object(s) not delivered in this transfer" if failed else None,
        objects=[_study(study_uid, {"": sent})],
    )


def study_accessed(
    source: Source, *, user: str, address: str | None, study_uid: str, action: Action = Action.READ
) -> AuditMessage:
    """An HTTP user read a study's results (or acted on it: re-run is Execute) (PS3.15 A.5.3.6)."""
    return _message(
        "study_accessed",
        source,
        INSTANCES_ACCESSED,
        action,
        Outcome.SUCCESS,
        [Participant(user, True, address=address)],
        objects=[_study(study_uid)],
    )


def http_query(source: Source, *, user: str, address: str | None, path: str, query: str) -> AuditMessage:
    """An HTTP user listed studies, series, jobs or deliveries (PS3.15 A.5.3.10 Query): the request's
    path is the participant object, its query string the (base64) query."""
    obj = ET.Element(
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": path, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "24"},
    )
    _code(obj, "ParticipantObjectIDTypeCode", URI)
    ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(query.encode("utf-8")).decode("ascii")
    return _message("http_query", source, QUERY, Action.EXECUTE, Outcome.SUCCESS,
                    [Participant(user, True, address=address)], objects=[obj])  # fmt: skip


def user_authentication(
    source: Source, *, user: str | None, address: str | None, success: bool, logout: bool = False
) -> AuditMessage:
    """Login (the worklist form, or credentials refused on an API call) or logout (PS3.15 A.5.3.12).
    A failed login names no user: what was typed may be a password in the user field."""
    name = "logout" if logout else ("login" if success else "login_failed")
    return _message(
        name,
        source,
        USER_AUTHENTICATION,
        Action.EXECUTE,
        Outcome.SUCCESS if success else Outcome.MINOR_FAILURE,
        [Participant(user or "(unknown)", True, address=address)],
        event_type=LOGOUT if logout else LOGIN,
    )
