"""Audit messages (node/audit) against the DICOM audit message schema, their RFC 5424/5425 framing, and the
trail's promise: recording never blocks, a full queue or a dead collector drops and counts, the file keeps all."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from node import metrics
from node.audit import Action, AuditTrail, Participant, Source
from node.audit import messages as m
from node.audit.syslog import MSGID, PRIORITY, TlsTransport, UdpTransport, format_message, octet_counted
from node.config import AuditConfig, ConfigError, configuration_warnings, parse_config
from tests.audit_schema import parse_syslog, schema_errors
from tests.tls_certs import make_tls_files

pytestmark = pytest.mark.unit

SOURCE = Source("AINODE", "HOSPITAL-1")
STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def every_message() -> list[m.AuditMessage]:
    sender = Participant("STORESCU", True, ae_title="STORESCU", address="127.0.0.1")
    return [
        m.application_activity(SOURCE, "AINODE", started=True),
        m.application_activity(SOURCE, "AINODE", started=False),
        m.association(SOURCE, "AINODE", calling_ae="PACS", address="10.0.0.5", accepted=True),
        m.association(SOURCE, "AINODE", calling_ae="EVIL", address="10.0.0.9", accepted=False, reason="not allowed"),
        m.association(SOURCE, "AINODE", calling_ae="", address="10.0.0.9", accepted=False, reason="all slots busy"),
        m.instances_received(SOURCE, "AINODE", sender=sender, studies={STUDY: {CT: 24}}),
        m.instances_received(SOURCE, "AINODE", sender=sender, studies={STUDY: {CT: 2}}, failed=1),
        m.results_exported(SOURCE, "AINODE", destination="pacs", study_uid=STUDY, sent=3, failed=0),
        m.study_accessed(SOURCE, user="viewer1", address="10.1.1.1", study_uid=STUDY),
        m.study_accessed(SOURCE, user="ops", address=None, study_uid=STUDY, action=Action.EXECUTE),
        m.http_query(SOURCE, user="viewer1", address="10.1.1.1", path="/api/studies", query="status=done&limit=5"),
        m.user_authentication(SOURCE, user="ops", address="10.1.1.1", success=True),
        m.user_authentication(SOURCE, user=None, address="10.1.1.1", success=False),
        m.user_authentication(SOURCE, user="ops", address="10.1.1.1", success=True, logout=True),
    ]


@pytest.mark.parametrize("message", every_message(), ids=lambda msg: msg.event)
def test_every_message_is_valid_against_the_dicom_audit_schema(message: m.AuditMessage) -> None:
    assert schema_errors(message.xml) == []
    assert "\n" not in message.xml  # one message per line in the local file


def test_the_schema_refuses_what_the_standard_does_not_allow() -> None:
    """The validator can fail: the same message without its EventID, or with a patient as a bare name."""
    good = m.study_accessed(SOURCE, user="v", address=None, study_uid=STUDY).xml
    assert schema_errors(good) == []
    assert schema_errors(good.replace('<EventID csd-code="110103"', '<EventCode csd-code="110103"'))
    assert schema_errors(good.replace('EventOutcomeIndicator="0"', 'EventOutcomeIndicator="1"'))


def test_messages_carry_the_right_codes_and_the_study_uid() -> None:
    received = m.instances_received(
        SOURCE,
        "AINODE",
        sender=Participant("PACS", True, ae_title="PACS", address="10.0.0.5"),
        studies={STUDY: {CT: 24}},
    )
    parsed = parse_syslog(format_message(received.xml))
    assert parsed.event_id == "110104"  # DICOM Instances Transferred
    assert parsed.object_ids() == [STUDY]
    assert 'NumberOfInstances="24"' in received.xml and f'UID="{CT}"' in received.xml
    assert parse_syslog(format_message(m.association(SOURCE, "AINODE", calling_ae="X", address="1.2.3.4",
                                                     accepted=False).xml)).event_type == "110126"  # fmt: skip
    login = parse_syslog(format_message(m.user_authentication(SOURCE, user=None, address=None, success=False).xml))
    assert (login.event_id, login.event_type, login.outcome) == ("110114", "110122", "4")


def test_rfc5424_framing_and_rfc5425_octet_counting() -> None:
    xml = m.application_activity(SOURCE, "AINODE", started=True).xml
    line = format_message(xml, hostname="node1")
    parsed = parse_syslog(line)
    assert parsed.priority == PRIORITY == 85  # authpriv.notice
    assert (parsed.app, parsed.msgid, parsed.xml) == ("ainode", MSGID, xml)
    frame = octet_counted(line + "é")
    length, _, rest = frame.partition(b" ")
    assert int(length) == len(rest) == len((line + "é").encode("utf-8"))


def test_record_never_blocks_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    trail = AuditTrail(SOURCE, file=tmp_path / "audit.log", transport=None, queue_size=10)
    before = metrics.audit_messages_dropped.labels(reason="queue_full")._value.get()
    message = m.application_activity(SOURCE, "AINODE", started=True)
    for _ in range(15):  # the writer thread is not started: the queue fills up
        trail.record(message)
    assert metrics.audit_messages_dropped.labels(reason="queue_full")._value.get() - before == 5
    trail.start()
    trail.stop()
    lines = (tmp_path / "audit.log").read_text("utf-8").splitlines()
    assert len(lines) == 10
    assert all(schema_errors(parse_syslog(line).xml) == [] for line in lines)


def test_a_dead_collector_costs_one_attempt_and_the_file_keeps_everything(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there: connection refused
    transport = TlsTransport("127.0.0.1", port, ca_file=tls.ca_cert, server_name=None, cert_file=None, key_file=None)
    trail = AuditTrail(SOURCE, file=tmp_path / "audit.log", transport=transport)
    before = metrics.audit_messages_dropped.labels(reason="collector_down")._value.get()
    trail.start()
    for _ in range(20):
        trail.record(m.application_activity(SOURCE, "AINODE", started=True))
    trail.stop()
    assert metrics.audit_messages_dropped.labels(reason="collector_down")._value.get() - before == 20
    assert len((tmp_path / "audit.log").read_text("utf-8").splitlines()) == 20


def test_tls_transport_refuses_a_collector_signed_by_another_ca(tmp_path: Path) -> None:
    """The collector's certificate is verified: a TLS server whose CA the node does not trust gets nothing."""
    tls = make_tls_files(tmp_path / "tls")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls.server_cert, tls.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls_conn:
                received.append(tls_conn.recv(65536))
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    untrusting = TlsTransport("127.0.0.1", port, ca_file=tls.other_ca_cert, server_name=None, cert_file=None,
                              key_file=None)  # fmt: skip
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.send(format_message(m.application_activity(SOURCE, "AINODE", started=True).xml))
    thread.join(timeout=10)
    listener.close()
    assert received in ([], [b""])


def test_udp_transport_sends_one_datagram_per_message() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    udp = UdpTransport("127.0.0.1", receiver.getsockname()[1])
    line = format_message(m.application_activity(SOURCE, "AINODE", started=True).xml)
    udp.send(line)
    udp.close()
    assert receiver.recv(65536).decode("utf-8") == line
    receiver.close()


def test_audit_config_is_checked_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit\.syslog\.host"):
        parse_config({"audit": {"enabled": True, "syslog": {"transport": "tls"}}})
    with pytest.raises(ConfigError, match=r"audit\.syslog.*need transport: tls"):
        parse_config({"audit": {"syslog": {"transport": "udp", "host": "127.0.0.1", "ca_file": str(tmp_path)}}})
    with pytest.raises(ConfigError, match=r"audit\.syslog.*not a readable file"):
        parse_config({"audit": {"syslog": {"host": "127.0.0.1", "ca_file": str(tmp_path / "missing.pem")}}})
    assert not AuditTrail.from_config(AuditConfig(), tmp_path, "AINODE").enabled
    trail = AuditTrail.from_config(AuditConfig(enabled=True), tmp_path, "AINODE")
    assert trail.file == tmp_path / "audit" / "audit-trail.log"
    assert trail.source.source_id == "AINODE"


def test_check_config_warns_when_the_trail_reaches_no_collector_or_is_off() -> None:
    def audit_warnings(audit: dict[str, object]) -> list[str]:
        return [w for w in configuration_warnings(parse_config({"audit": audit})) if w.startswith("audit.")]

    assert audit_warnings({"enabled": True}) == [
        "audit.enabled without audit.syslog: audit messages stay in the local file, no collector gets them"
    ]
    assert audit_warnings({"syslog": {"transport": "udp", "host": "127.0.0.1"}})[0].startswith(
        "audit.syslog is set but audit.enabled is false"
    )
    assert audit_warnings({"enabled": True, "syslog": {"transport": "udp", "host": "127.0.0.1"}}) == []
    assert audit_warnings({}) == []
