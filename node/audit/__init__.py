"""The audit trail (IHE ATNA): DICOM PS3.15 A.5 audit messages (``messages``), RFC 5424 syslog framing and
the UDP/TLS transports (``syslog``), and the trail stages record into (``trail``: a queue, a writer thread,
a local append-only file)."""

from node.audit.messages import Action, AuditMessage, Participant, Source
from node.audit.trail import AuditTrail

__all__ = ["Action", "AuditMessage", "AuditTrail", "Participant", "Source"]
