"""The audit trail end to end: the node as a process sends its audit messages to a real rsyslog (Debian's,
started here on loopback with its own config) while DCMTK stores into it, a stranger is refused, the API
is read and logged into, and a result goes out to a DCMTK storescp. Every message rsyslog received is
RFC 5424, valid against the DICOM audit schema, names the study by UID and never the patient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from demo.ct_factory import CANARIES, make_ct_series
from demo.node_process import NodeProcess
from node.audit import AuditTrail, Source
from node.audit import messages as m
from node.audit.syslog import TlsTransport
from tests.api_support import (
    ACTION,
    CREDENTIALS,
    OPERATOR,
    VIEWER,
    add_findings_job,
    add_pending_delivery,
    bearer,
    token_credentials,
)
from tests.audit_schema import SyslogMessage, parse_syslog, schema_errors
from tests.peers.dcmtk import StoreSCP, echoscu, storescu
from tests.peers.net import wait_until
from tests.peers.rsyslog import Rsyslog
from tests.tls_certs import make_tls_files

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk", "rsyslog")]


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    folder = tmp_path_factory.mktemp("rsyslog")
    with Rsyslog(folder, make_tls_files(folder / "tls")) as collector:
        yield collector


def _node(workdir: Path, syslog: dict[str, Any], **config: Any) -> NodeProcess:
    return NodeProcess(
        workdir,
        {"audit": {"enabled": True, "syslog": syslog, "enterprise_site_id": "TEST-SITE"}, **config},
        http={"auth": {"mode": "token", "credentials": token_credentials(CREDENTIALS)}},
    )


def _received(collector: Rsyslog, input_name: str) -> list[SyslogMessage]:
    return [parse_syslog(line) for line in collector.messages(input_name)]


def _events(messages: list[SyslogMessage]) -> list[tuple[str, str | None, str]]:
    return [(msg.event_id, msg.event_type, msg.outcome) for msg in messages]


def test_node_audits_to_rsyslog_over_tls(rsyslog: Rsyslog, tmp_path: Path) -> None:
    tls_folder = rsyslog.folder / "tls"
    files = make_ct_series(tmp_path / "ct", slices=6, rows=32, columns=32)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    with StoreSCP(tmp_path / "pacs") as pacs:
        node = _node(
            tmp_path / "node",
            {"transport": "tls", "host": "127.0.0.1", "port": rsyslog.tls_port, "ca_file": str(tls_folder / "ca.pem")},
            destinations={"pacs": {"type": "dimse", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.port}},
        )
        with node:
            stored = storescu(node.port, [tmp_path / "ct"], called=node.ae_title)
            assert stored.returncode == 0, stored.stderr
            refused = echoscu(node.port, called=node.ae_title, calling="INTRUDER")
            assert refused.returncode != 0
            with httpx.Client(base_url=node.http_url, timeout=30) as client:
                assert client.get("/api/studies", headers=bearer(VIEWER)).status_code == 200
                assert client.get(f"/api/studies/{study_uid}", headers=bearer(VIEWER)).status_code == 200
                assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong-token-1"}).status_code == 401
                assert client.post("/login", data={"token": "wrong-token-123"}).status_code == 401
                assert client.post("/login", data={"token": OPERATOR["secret"]}).status_code == 303
                rerun = client.post(f"/api/studies/{study_uid}/rerun", headers={**bearer(OPERATOR), **ACTION})
                assert rerun.status_code in (202, 409), rerun.text
            # A result of this study for the outbox to send to the PACS (storescp): the export is audited.
            wait_until(lambda: node.series_row(series_uid) is not None, 30, "the series in the index")
            job_id = add_findings_job(node.db(), series_uid, [])
            add_pending_delivery(node.db(), job_id, files[0], destination="pacs")

            def arrived(event_id: str, action: str | None = None) -> bool:
                return any(
                    m.event_id == event_id and (action is None or m.root.find("EventIdentification").get(
                        "EventActionCode") == action)
                    for m in _received(rsyslog, "imtcp")
                )  # fmt: skip

            wait_until(lambda: arrived("110104", "R"), 60, "the export's audit message at rsyslog")
        local = (node.data_dir / "audit" / "audit-trail.log").read_text("utf-8").splitlines()

    wait_until(lambda: any(m.event_type == "110121" for m in _received(rsyslog, "imtcp")), 30, "application stop")
    messages = [m for m in _received(rsyslog, "imtcp") if "TEST-SITE" in m.xml]
    events = _events(messages)
    assert ("110100", "110120", "0") in events  # application start
    assert ("110113", "110126", "0") in events  # association accepted (storescu)
    assert ("110113", "110126", "4") in events  # association refused (INTRUDER)
    assert ("110112", None, "0") in events  # the studies list (a query)
    assert ("110114", "110122", "4") in events  # credentials refused (a wrong token, the login form)
    assert ("110114", "110122", "0") in events  # the login form
    assert ("110100", "110121", "0") in events  # application stop
    received = [m for m in messages if m.event_id == "110104" and 'EventActionCode="C"' in m.xml]
    assert len(received) == 1, "one message per association, not one per instance"
    assert received[0].object_ids() == [study_uid]
    assert 'NumberOfInstances="6"' in received[0].xml and "STORESCU" in received[0].user_ids()
    accessed = [m for m in messages if m.event_id == "110103"]
    assert {m.object_ids()[0] for m in accessed} == {study_uid}  # the study page and the re-run
    exported = [m for m in messages if m.event_id == "110104" and 'EventActionCode="R"' in m.xml]
    assert exported[0].object_ids() == [study_uid] and "pacs" in exported[0].user_ids()
    for message in messages:
        assert message.priority == 85 and message.msgid == "IHE+RFC-3881"
        assert schema_errors(message.xml) == [], message.xml
        for canary in CANARIES:
            assert canary not in message.xml
    # The local append-only file holds the same messages (and nothing of the patient either).
    assert len(local) == len(messages)
    assert {parse_syslog(line).xml for line in local} == {m.xml for m in messages}
    assert not any(canary in line for canary in CANARIES for line in local)


def test_node_audits_to_rsyslog_over_udp(rsyslog: Rsyslog, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "ct", slices=3, rows=32, columns=32)
    node = _node(tmp_path / "node", {"transport": "udp", "host": "127.0.0.1", "port": rsyslog.udp_port})
    with node:
        assert storescu(node.port, files, called=node.ae_title).returncode == 0

        def received_over_udp() -> list[SyslogMessage]:
            return [m for m in _received(rsyslog, "imudp") if m.event_id == "110104"]

        wait_until(lambda: bool(received_over_udp()), 30, "the instances-received message over UDP")
    message = received_over_udp()[0]
    assert schema_errors(message.xml) == []
    assert 'NumberOfInstances="3"' in message.xml


def test_a_collector_that_wants_client_certificates_gets_messages_only_from_a_node_with_one(tmp_path: Path) -> None:
    """Mutual TLS (ATNA's node authentication): rsyslog with AuthMode x509/certvalid drops the connection of a
    trail without a client certificate (its messages counted as dropped) and takes the one that has one."""
    tls = make_tls_files(tmp_path / "tls")
    source = Source("AINODE-MTLS")
    with Rsyslog(tmp_path / "rsyslog", tls, require_client_cert=True) as collector:
        for name, cert, key in (("without", None, None), ("with", tls.client_cert, tls.client_key)):
            transport = TlsTransport("127.0.0.1", collector.tls_port, ca_file=tls.ca_cert, server_name=None,
                                     cert_file=cert, key_file=key)  # fmt: skip
            trail = AuditTrail(source, file=tmp_path / f"{name}.log", transport=transport)
            trail.start()
            trail.record(m.user_authentication(source, user=name, address="127.0.0.1", success=True))
            trail.stop()

        def users() -> list[str]:
            return [u for msg in _received(collector, "imtcp") for u in msg.user_ids()]

        wait_until(lambda: "with" in users(), 20, "the message of the trail with a client certificate")
    assert "without" not in users()
