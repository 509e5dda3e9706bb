"""DICOM TLS on the storage SCP (dicom.tls): real peers only — DCMTK storescu/echoscu with +tls, Orthanc with
DicomTlsEnabled, and the certificates of a throw-away CA (tests/tls_certs.py)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from demo.ct_factory import make_ct_series
from demo.netutil import free_port, port_open, wait_until
from demo.node_process import NodeProcess
from node.config import parse_config
from node.errors import ConfigError
from node.receive.tls import ServerTlsContext, build_server_context
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.orthanc import OrthancPeer
from tests.tls_certs import CertAndKey, ThrowawayCa

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk")]


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCa:
    return ThrowawayCa(tmp_path / "ca")


@pytest.fixture
def server_cert(ca: ThrowawayCa) -> CertAndKey:
    return ca.issue("ainode", server=True)


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "series", slices=4)


def _tls_node(
    tmp_path: Path, server: CertAndKey, callers: list[dict[str, Any]] | None = None, **tls: Any
) -> NodeProcess:
    tls_section = {"port": free_port(), "cert_file": str(server.cert), "key_file": str(server.key), **tls}
    dicom: dict[str, Any] = {"tls": tls_section}
    if callers is not None:
        dicom["allowed_callers"] = callers
    return NodeProcess(tmp_path / "node", {"dicom": dicom})


def _tls_port(node: NodeProcess) -> int:
    return int(node.config["dicom"]["tls"]["port"])


def _stored(node: NodeProcess) -> int:
    return len(node.db().query("SELECT sop_instance_uid FROM instances"))


def _tls_args(ca: ThrowawayCa, client: CertAndKey | None) -> list[str]:
    """storescu's TLS options: our client certificate (or none, +tla), and the CA that signed the node's."""
    identity = ["+tls", str(client.key), str(client.cert)] if client is not None else ["+tla"]
    return [*identity, "+cf", str(ca.cert)]


def _send_tls(node: NodeProcess, files: list[Path], ca: ThrowawayCa, client: CertAndKey | None,
              calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:  # fmt: skip
    return storescu(_tls_port(node), files, called=node.ae_title, calling=calling, extra_args=_tls_args(ca, client),
                    timeout_s=60)  # fmt: skip


def _wait_stored(node: NodeProcess, files: list[Path]) -> None:
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node.wait_series_state(series_uid, "complete", timeout_s=30)
    assert _stored(node) == len(files)


def test_storescu_over_tls_stores_and_plain_port_stays_open(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    with _tls_node(tmp_path, server_cert) as node:
        sent = _send_tls(node, series, ca, client=None)
        assert sent.returncode == 0, sent.stderr
        _wait_stored(node, series)
        assert '"tls": "TLSv1.3"' in node.log_text()  # the association log line says it was TLS, and which
        # The plain port beside it still serves plain DICOM, logged as such.
        plain = echoscu(node.port, called=node.ae_title, calling="STORESCU")
        assert plain.returncode == 0, plain.stderr
        assert '"tls": null' in node.log_text()


def test_plain_association_to_the_tls_port_is_refused_and_a_silent_one_blocks_nobody(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    with _tls_node(tmp_path, server_cert) as node:
        plain = echoscu(_tls_port(node), called=node.ae_title, calling="STORESCU")
        assert plain.returncode != 0
        # The node logs the failed handshake from the connection's thread, possibly after echoscu has given up.
        wait_until(lambda: "tls_handshake_failed" in node.log_text(), 30, "the failed handshake to be logged")
        # A peer that connects and never speaks: pynetdicom would do its handshake in the accept loop and wait on
        # it; the node does it in the connection's thread, so a TLS store meanwhile goes through.
        with socket.create_connection(("127.0.0.1", _tls_port(node))):
            sent = _send_tls(node, series, ca, client=None)
            assert sent.returncode == 0, sent.stderr
        _wait_stored(node, series)


def test_tls_only_node_does_not_open_the_plain_port(tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey) -> None:
    node = _tls_node(tmp_path, server_cert, disable_plain_port=True)
    node.port = _tls_port(node)  # NodeProcess waits for this port to listen
    with node:
        assert not port_open(int(node.config["dicom"]["port"]))
        echo = subprocess.run(["/usr/bin/echoscu", "-aet", "STORESCU", "-aec", node.ae_title,
                               *_tls_args(ca, None), "127.0.0.1", str(_tls_port(node))],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert echo.returncode == 0, echo.stderr


def test_mutual_tls_accepts_the_ca_s_client_and_refuses_none_untrusted_or_expired(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    good = ca.issue("STORESCU")
    expired = ca.issue("STORESCU", expired=True, stem="expired")
    other_ca = ThrowawayCa(tmp_path / "other-ca", "unrelated CA")
    untrusted = other_ca.issue("STORESCU")
    with _tls_node(tmp_path, server_cert, ca_file=str(ca.cert), require_client_cert=True) as node:
        for client, why in [(None, "no client certificate"), (untrusted, "untrusted"), (expired, "expired")]:
            refused = _send_tls(node, series, ca, client)
            assert refused.returncode != 0, f"{why}: {refused.stderr}"
        log = node.log_text()
        assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log
        assert "CERTIFICATE_VERIFY_FAILED" in log
        assert _stored(node) == 0
        sent = _send_tls(node, series, ca, good)
        assert sent.returncode == 0, sent.stderr
        _wait_stored(node, series)
        assert '"client_certificate_cn": "STORESCU"' in node.log_text()


def test_caller_bound_to_a_certificate_cn_needs_that_certificate(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    callers = [{"ae_title": "STORESCU", "certificate_cn": "modality-1"}, {"ae_title": "OTHER"}]
    bound = ca.issue("modality-1")
    someone_else = ca.issue("modality-2")  # trusted by the node, but not this AE title's certificate
    with _tls_node(tmp_path, server_cert, callers, ca_file=str(ca.cert)) as node:
        wrong_cn = _send_tls(node, series, ca, someone_else)
        assert wrong_cn.returncode != 0 and "Calling AE Title Not Recognized" in wrong_cn.stderr, wrong_cn.stderr
        no_cert = _send_tls(node, series, ca, None)
        assert no_cert.returncode != 0 and "Calling AE Title Not Recognized" in no_cert.stderr, no_cert.stderr
        plain = echoscu(node.port, called=node.ae_title, calling="STORESCU")
        assert plain.returncode != 0 and "Calling AE Title Not Recognized" in plain.stderr
        log = node.log_text()
        assert "client certificate CN 'modality-2' is not the one bound to this calling AE title" in log
        assert "bound to a client certificate: none presented" in log
        assert "bound to a client certificate: TLS port only" in log
        # Callers without a bound certificate keep working on both ports.
        assert echoscu(node.port, called=node.ae_title, calling="OTHER").returncode == 0
        assert _stored(node) == 0
        sent = _send_tls(node, series, ca, bound)
        assert sent.returncode == 0, sent.stderr
        _wait_stored(node, series)


def test_renewed_certificate_is_used_for_new_associations_without_a_restart(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    with _tls_node(tmp_path, server_cert) as node:
        pid = node.process.pid if node.process else None
        assert _send_tls(node, series[:1], ca, None).returncode == 0
        # Renewal by a new CA (so that the old trust no longer verifies it), written over the same files.
        new_ca = ThrowawayCa(tmp_path / "new-ca", "renewed CA")
        renewed = new_ca.issue("ainode", server=True)
        shutil.copyfile(renewed.key, server_cert.key)
        shutil.copyfile(renewed.cert, server_cert.cert)
        old_trust = _send_tls(node, series[1:2], ca, None)
        assert old_trust.returncode != 0, old_trust.stderr
        new_trust = _send_tls(node, series[1:], new_ca, None)
        assert new_trust.returncode == 0, new_trust.stderr
        _wait_stored(node, series)
        assert "tls_certificates_reloaded" in node.log_text()
        assert node.process is not None and node.process.pid == pid


def test_half_written_renewal_keeps_the_previous_certificate(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    with _tls_node(tmp_path, server_cert) as node:
        renewed = ThrowawayCa(tmp_path / "new-ca", "renewed CA").issue("ainode", server=True)
        shutil.copyfile(renewed.cert, server_cert.cert)  # the certificate is new, its key not yet
        sent = _send_tls(node, series, ca, None)
        assert sent.returncode == 0, sent.stderr
        assert "tls_reload_failed" in node.log_text()


@pytest.mark.needs("orthanc")
def test_orthanc_sends_to_the_node_over_mutual_tls(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey, series: list[Path]
) -> None:
    orthanc_cert = ca.issue("orthanc")
    callers = [{"ae_title": "ORTHANC", "certificate_cn": "orthanc"}]
    with _tls_node(tmp_path, server_cert, callers, ca_file=str(ca.cert), require_client_cert=True) as node:
        tls_config = {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(orthanc_cert.cert),
            "DicomTlsPrivateKey": str(orthanc_cert.key),
            "DicomTlsTrustedCertificates": str(ca.cert),
            "DicomModalities": {
                "node": {"AET": node.ae_title, "Host": "127.0.0.1", "Port": _tls_port(node), "UseDicomTls": True}
            },
        }
        with OrthancPeer(tmp_path / "orthanc", extra_config=tls_config) as orthanc:
            for path in series:
                orthanc.upload(path)
            study_id = orthanc.get("/studies")[0]
            job = orthanc.post("/modalities/node/store", study_id)
            assert "FailedInstancesCount" not in job or job["FailedInstancesCount"] == 0, job
        _wait_stored(node, series)
        log = node.log_text()
        assert '"calling_ae": "ORTHANC"' in log and '"client_certificate_cn": "orthanc"' in log


# --- configuration: a bad dicom.tls stops start-up naming the field (no process needed) ----------------------
def _dicom(tmp_path: Path, server: CertAndKey, **dicom: Any) -> dict[str, Any]:
    tls = {"port": 2762, "cert_file": str(server.cert), "key_file": str(server.key)}
    return {"dicom": {"tls": {**tls, **dicom.pop("tls", {})}, **dicom}}


def test_bad_tls_config_is_refused_naming_the_field(tmp_path: Path, server_cert: CertAndKey) -> None:
    cases = {
        "require_client_cert needs ca_file": {"tls": {"require_client_cert": True}},
        "name a certificate_cn: that needs tls.ca_file": {
            "allowed_callers": [{"ae_title": "A", "certificate_cn": "a"}]
        },
        "tls.port 2762 is also dicom.port": {"port": 2762},
        "which accept_any_caller would ignore": {
            "accept_any_caller": True,
            "allowed_callers": [{"ae_title": "A", "certificate_cn": "a"}],
            "tls": {"ca_file": str(server_cert.cert)},
        },
        "dicom.tls.min_version": {"tls": {"min_version": "1.1"}},
        "dicom.tls.key_file": {"tls": {"key_file": str(tmp_path / "missing.key")}},
    }
    for expected, dicom in cases.items():
        with pytest.raises(ConfigError) as refused:
            parse_config(_dicom(tmp_path, server_cert, **dicom))
        assert expected in str(refused.value), str(refused.value)
    # A certificate_cn without TLS at all is refused too.
    with pytest.raises(ConfigError, match="certificate_cn"):
        parse_config({"dicom": {"allowed_callers": [{"ae_title": "A", "certificate_cn": "a"}]}})


def test_key_that_does_not_match_the_certificate_stops_start_up(tmp_path: Path, ca: ThrowawayCa) -> None:
    first, second = ca.issue("one", server=True), ca.issue("two", server=True)
    config = parse_config(_dicom(tmp_path, first, tls={"key_file": str(second.key)}))
    assert config.dicom.tls is not None
    with pytest.raises(ConfigError, match=r"dicom\.tls\.cert_file/key_file"):
        ServerTlsContext(config.dicom.tls)


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """One in-process handshake over a socket pair; the client's negotiated version, or the server's error."""
    server_end, client_end = socket.socketpair()
    outcome: dict[str, str] = {}

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_end, server_side=True):
                pass
        except (OSError, ssl.SSLError) as exc:
            outcome["server"] = type(exc).__name__

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(client_end, server_hostname="localhost") as tls:
            version = str(tls.version())
    except (OSError, ssl.SSLError) as exc:
        version = f"refused ({type(exc).__name__})"
    thread.join(timeout=10)
    return version


def test_min_version_is_the_oldest_tls_the_port_accepts(
    tmp_path: Path, ca: ThrowawayCa, server_cert: CertAndKey
) -> None:
    """OpenSSL on both sides, in-process (no DICOM peer needed for a TLS version check)."""

    def client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.maximum_version = max_version
        return context

    for min_version, tls12, tls13 in [("1.2", "TLSv1.2", "TLSv1.3"), ("1.3", "refused", "TLSv1.3")]:
        config = parse_config(_dicom(tmp_path, server_cert, tls={"min_version": min_version})).dicom.tls
        assert config is not None
        server = build_server_context(config)
        assert _handshake(server, client(ssl.TLSVersion.TLSv1_2)).startswith(tls12), min_version
        assert _handshake(server, client(ssl.TLSVersion.TLSv1_3)) == tls13, min_version
