"""The DICOM audit message schema (PS3.15 A.5.1.1, vendored beside this file) and a validator for it."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import rnc2rng
from lxml import etree

SCHEMA = Path(__file__).parent / "dicom-audit-message.rnc"


@functools.cache
def relax_ng() -> etree.RelaxNG:
    # rnc2rng refuses "##" documentation comments where the standard puts them (after a choice's last
    # value): as plain comments they mean the same to a validator.
    source = SCHEMA.read_text(encoding="utf-8").replace("##", "#")
    return etree.RelaxNG(etree.fromstring(rnc2rng.dumps(rnc2rng.loads(source)).encode("utf-8")))


def schema_errors(xml: str) -> list[str]:
    """Why ``xml`` is not a valid DICOM audit message ([] when it is)."""
    schema = relax_ng()
    document = etree.fromstring(xml.encode("utf-8"))
    if schema.validate(document):
        return []
    return [str(e) for e in schema.error_log]


# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA SP MSG
_SYSLOG = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) - (?P<msg>.*)$"
)


@dataclass(frozen=True)
class SyslogMessage:
    priority: int
    timestamp: str
    app: str
    msgid: str
    xml: str

    @property
    def root(self) -> etree._Element:
        return etree.fromstring(self.xml.encode("utf-8"))

    @property
    def event_id(self) -> str:
        return str(self.root.find("EventIdentification/EventID").get("csd-code"))

    @property
    def event_type(self) -> str | None:
        found = self.root.find("EventIdentification/EventTypeCode")
        return None if found is None else str(found.get("csd-code"))

    @property
    def outcome(self) -> str:
        return str(self.root.find("EventIdentification").get("EventOutcomeIndicator"))

    def object_ids(self) -> list[str]:
        return [str(o.get("ParticipantObjectID")) for o in self.root.findall("ParticipantObjectIdentification")]

    def user_ids(self) -> list[str]:
        return [str(p.get("UserID")) for p in self.root.findall("ActiveParticipant")]


def parse_syslog(line: str) -> SyslogMessage:
    match = _SYSLOG.match(line)
    assert match, f"not an RFC 5424 message: {line[:200]!r}"
    msg = match["msg"]
    assert msg.startswith("\ufeff"), "the MSG of an ATNA message is UTF-8 with a BOM"
    return SyslogMessage(int(match["pri"]), match["timestamp"], match["app"], match["msgid"], msg[1:])
