"""Export destinations against a real Orthanc (Debian binary + DICOMweb plugin) on loopback.

Only ``test_dimse_status_codes_from_a_pynetdicom_scp`` uses a fake peer: no real PACS here can be made to
answer C-STORE with 0xA700 / 0xC000 on demand, so a pynetdicom SCP plays that part.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from demo.paths import PHILIPS_CT
from node.config import parse_config
from node.config.destinations import DimseDestinationConfig, parse_destinations
from node.dimse_status import StoreStatus
from node.errors import ConfigError, DeliveryError
from node.export import dimse as dimse_module
from node.export.backoff import RetryPolicy, backoff_ceiling, gave_up, next_retry_delay
from node.export.destinations import DeliveryReport, FileOutcome
from node.export.failures import Outcome, classify_store_status, describe_http_status, http_status_is_transient
from node.export.stowrs import outcomes_from_stow_response as stow_outcomes
from node.export.transports import build_destination
from tests.peers.net import free_port
from tests.peers.orthanc import OrthancPeer
from tests.peers.tls_proxy import TlsProxy
from tests.result_objects import ct_files, make_results, make_secondary_capture
from tests.tls_certs import make_tls_files

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "philips-ct", "orthanc")]

NODE_AET = "AINODE"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture
def pacs(tmp_path: Path) -> Any:
    # The node's AE is a known modality; unknown AEs may echo but not store (OrthancPeer's default).
    with OrthancPeer(tmp_path / "orthanc", modalities={"node": (NODE_AET, "127.0.0.1", free_port())}) as peer:
        yield peer


def dimse(peer: OrthancPeer, calling: str = NODE_AET, timeout_s: float = 10) -> Any:
    cfg = parse_destinations(
        {
            "pacs": {
                "type": "dimse",
                "ae_title": peer.aet,
                "host": "127.0.0.1",
                "port": peer.dicom_port,
                "calling_ae_title": calling,
                "timeout_s": timeout_s,
            }
        }
    )
    return build_destination("pacs", cfg["pacs"])


def stow(url: str) -> Any:
    cfg = parse_destinations({"web": {"type": "stow-rs", "url": url, "timeout_s": 10}})
    return build_destination("web", cfg["web"])


def orthanc_rest(url: str) -> Any:
    cfg = parse_destinations({"orthanc": {"type": "orthanc-rest", "url": url, "timeout_s": 10}})
    return build_destination("orthanc", cfg["orthanc"])


def modalities_in_study(peer: OrthancPeer, study_uid: str) -> set[str]:
    return {s["00080060"]["Value"][0] for s in peer.series_of_study(study_uid)}


# --- DIMSE ----------------------------------------------------------------------------------------


def test_dimse_cstore_of_ct_and_results_lands_in_orthanc(pacs: OrthancPeer, results: list[Path]) -> None:
    ct = ct_files()
    philips = ct_files(PHILIPS_CT)[:3]  # Implicit VR: a second transfer syntax in the same association
    destination = dimse(pacs)
    destination.ping()

    report = destination.send([*ct, *philips, *results])

    assert report.ok, report.failed
    assert len(report.delivered) == len(ct) + len(philips) + len(results)
    assert pacs.instance_count() == len(ct) + len(philips) + len(results)
    study_uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    assert modalities_in_study(pacs, study_uid) == {"CT", "OT", "SR", "SEG"}


def test_dimse_resend_same_sop_instance_does_not_duplicate(pacs: OrthancPeer, results: list[Path]) -> None:
    destination = dimse(pacs)
    first = destination.send(results)
    second = destination.send(results)
    assert first.ok and second.ok
    assert pacs.instance_count() == len(results)


def test_dimse_peer_down_is_transient(pacs: OrthancPeer, results: list[Path]) -> None:
    destination = dimse(pacs)
    pacs.stop()
    with pytest.raises(DeliveryError) as err:
        destination.send(results)
    assert err.value.permanent is False
    # Said as it happened: refused at once, not "refused or timed out after 10 s".
    assert "cannot connect" in str(err.value) and "refused at once" in str(err.value)
    assert "timed out" not in str(err.value)
    with pytest.raises(DeliveryError) as ping_err:
        destination.ping()
    assert ping_err.value.permanent is False


def test_dimse_unknown_calling_ae_is_permanent(pacs: OrthancPeer, results: list[Path]) -> None:
    # Orthanc accepts the association (DicomAlwaysAllowEcho) but aborts on C-STORE from an AE that is
    # not in DicomModalities (DicomAlwaysAllowStore: false).
    destination = dimse(pacs, calling="STRANGER")
    destination.ping()  # echo is allowed: the peer is up, only storing is refused
    with pytest.raises(DeliveryError) as err:
        destination.send(results)
    assert err.value.permanent is True
    assert "'STRANGER'" in str(err.value) and "refuses to store" in str(err.value)
    assert pacs.instance_count() == 0


def test_dimse_association_rejected_is_permanent(tmp_path: Path, results: list[Path]) -> None:
    # With nothing "always allowed", Orthanc rejects the association of an unknown AE outright.
    strict = OrthancPeer(tmp_path / "strict", extra_config={"DicomAlwaysAllowEcho": False})
    with strict, pytest.raises(DeliveryError) as err:
        dimse(strict, calling="STRANGER").send(results)
    assert err.value.permanent is True
    assert "association rejected" in str(err.value)


def test_dimse_unsupported_sop_class_is_permanent_per_file(
    pacs: OrthancPeer, results: list[Path], tmp_path: Path
) -> None:
    bogus = make_secondary_capture(tmp_path / "bogus.dcm")
    ds = pydicom.dcmread(bogus)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.999.1"
    ds.save_as(bogus, enforce_file_format=True)
    destination = dimse(pacs)

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    report = destination.send([junk, results[0], bogus])
    assert [o.path for o in report.outcomes] == [junk, results[0], bogus]  # the caller's order
    assert [o.delivered for o in report.outcomes] == [False, True, False]
    assert report.outcomes[0].permanent is True
    assert report.outcomes[2].permanent is True
    with pytest.raises(DeliveryError) as err:
        report.raise_for_failures()
    assert err.value.permanent is True

    with pytest.raises(DeliveryError) as only_bogus:
        destination.send([bogus])
    assert only_bogus.value.permanent is True
    assert "presentation contexts" in str(only_bogus.value)


def test_dimse_tls_with_real_orthanc(tmp_path: Path, results: list[Path]) -> None:
    certs = make_tls_files(tmp_path / "tls")
    tls_orthanc = OrthancPeer(
        tmp_path / "orthanc-tls",
        modalities={"node": (NODE_AET, "127.0.0.1", free_port())},
        extra_config={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(certs.server_cert),
            "DicomTlsPrivateKey": str(certs.server_key),
            "DicomTlsTrustedCertificates": str(certs.ca_cert),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )

    def destination(**tls: str) -> Any:
        cfg = {
            "type": "dimse",
            "ae_title": tls_orthanc.aet,
            "host": "127.0.0.1",
            "port": tls_orthanc.dicom_port,
            "calling_ae_title": NODE_AET,
            "timeout_s": 10,
            "tls": tls,
        }
        return build_destination("tls", parse_destinations({"tls": cfg})["tls"])

    mutual = {"ca_file": str(certs.ca_cert), "cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    with tls_orthanc:
        report = destination(**mutual).send(results)
        assert report.ok, report.failed
        assert tls_orthanc.instance_count() == len(results)

        with pytest.raises(DeliveryError) as untrusted:
            destination(**{**mutual, "ca_file": str(certs.other_ca_cert)}).send(results)
        assert untrusted.value.permanent is True and "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value)

        with pytest.raises(DeliveryError) as no_client_cert:
            destination(ca_file=str(certs.ca_cert)).send(results)
        assert no_client_cert.value.permanent is True and "TLS" in str(no_client_cert.value)

        tls_orthanc.stop()
        with pytest.raises(DeliveryError) as down:
            destination(**mutual).send(results)
        assert down.value.permanent is False  # a TLS destination that is down is still transient


def test_dimse_status_codes_from_a_pynetdicom_scp(results: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake peer (see module docstring): answers each SOP class with a chosen status."""
    nodelay: list[int] = []
    original_on_open = dimse_module._AssociationEvents._on_open

    def spy_on_open(self: Any, event: Any) -> None:
        original_on_open(self, event)
        sock = event.assoc.dul.socket.socket
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(dimse_module._AssociationEvents, "_on_open", spy_on_open)
    status_by_class = {
        "1.2.840.10008.5.1.4.1.1.7": StoreStatus.OUT_OF_RESOURCES,  # SC: transient
        "1.2.840.10008.5.1.4.1.1.88.34": StoreStatus.CANNOT_UNDERSTAND,  # SR: permanent
    }
    requested: list[tuple[str, str]] = []

    def on_store(event: Any) -> int:
        return int(status_by_class.get(str(event.request.AffectedSOPClassUID), StoreStatus.SUCCESS))

    def on_requested(event: Any) -> None:
        for cx in event.assoc.requestor.requested_contexts:
            requested.append((str(cx.abstract_syntax), str(cx.transfer_syntax[0])))

    scp = AE(ae_title="FAKEPACS")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_REQUESTED, on_requested)],
    )
    sc, sr, seg = results
    try:
        cfg = DimseDestinationConfig(type="dimse", ae_title="FAKEPACS", host="127.0.0.1", port=port)
        report = build_destination("fake", cfg).send([seg, sr, sc])
        # A transient refusal stops the set: what follows it (here the SR and SEG) is not sent after it.
        stopped = build_destination("fake", cfg).send([sc, sr, seg])
    finally:
        server.shutdown()
    assert [o.delivered for o in stopped.outcomes] == [False, False, False]
    assert [o.permanent for o in stopped.outcomes] == [False, False, False]
    assert all("not sent: sc.dcm" in o.detail for o in stopped.outcomes[1:])

    by_name = {o.path.name: o for o in report.outcomes}
    assert by_name["sc.dcm"].delivered is False and by_name["sc.dcm"].permanent is False
    assert "out of resources" in by_name["sc.dcm"].detail
    assert by_name["sr.dcm"].delivered is False and by_name["sr.dcm"].permanent is True
    assert by_name["seg.dcm"].delivered is True
    # Exactly the SOP classes and transfer syntaxes of the files, one context each.
    expected = set()
    for p in results:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        expected.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    assert sorted(requested[: len(expected)]) == sorted(expected)
    assert nodelay == [1, 1]  # Nagle off on our socket, both associations (REAL-PEERS.md: 30x slower otherwise)
    with pytest.raises(DeliveryError) as err:
        report.raise_for_failures()
    assert err.value.permanent is False  # one failure is transient: a retry can still make progress


# --- STOW-RS --------------------------------------------------------------------------------------


def test_stow_rs_lands_and_resend_does_not_duplicate(pacs: OrthancPeer, results: list[Path]) -> None:
    destination = stow(pacs.dicomweb_url)
    destination.ping()
    report = destination.send(results)
    assert report.ok, report.failed
    study_uid = str(pydicom.dcmread(results[0], stop_before_pixels=True).StudyInstanceUID)
    assert modalities_in_study(pacs, study_uid) == {"OT", "SR", "SEG"}

    again = destination.send(results)
    assert again.ok, again.failed
    assert pacs.instance_count() == len(results)


def test_stow_rs_wrong_path_is_permanent(pacs: OrthancPeer, results: list[Path]) -> None:
    with pytest.raises(DeliveryError) as err:
        stow(f"{pacs.url}/not-dicom-web").send(results)
    assert err.value.permanent is True
    assert "HTTP 404" in str(err.value)
    assert pacs.instance_count() == 0


def test_stow_rs_peer_down_is_transient(pacs: OrthancPeer, results: list[Path]) -> None:
    destination = stow(pacs.dicomweb_url)
    pacs.stop()
    with pytest.raises(DeliveryError) as err:
        destination.send(results)
    assert err.value.permanent is False
    assert "refused at once" in str(err.value) and "timed out" not in str(err.value)
    with pytest.raises(DeliveryError) as ping_err:
        destination.ping()
    assert ping_err.value.permanent is False


# --- Orthanc REST ---------------------------------------------------------------------------------


def test_orthanc_rest_lands_resend_is_idempotent_and_junk_is_permanent(
    pacs: OrthancPeer, results: list[Path], tmp_path: Path
) -> None:
    destination = orthanc_rest(pacs.url)
    destination.ping()
    report = destination.send(results)
    assert report.ok, report.failed
    assert pacs.instance_count() == len(results)

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    again = destination.send([*results, junk])
    assert [o.delivered for o in again.outcomes] == [True, True, True, False]
    assert all(o.detail == "already stored at the peer" for o in again.outcomes[:3])
    assert again.outcomes[3].permanent is True
    assert pacs.instance_count() == len(results)


def test_orthanc_rest_peer_down_is_transient(pacs: OrthancPeer, results: list[Path]) -> None:
    destination = orthanc_rest(pacs.url)
    pacs.stop()
    with pytest.raises(DeliveryError) as err:
        destination.send(results)
    assert err.value.permanent is False
    assert "refused at once" in str(err.value) and "timed out" not in str(err.value)


def test_orthanc_rest_wrong_url_is_permanent(pacs: OrthancPeer, results: list[Path]) -> None:
    # Orthanc answers an unknown route with 404: a configuration error, not a reason to retry.
    assert httpx.get(f"{pacs.url}/nope/instances").status_code == 404
    with pytest.raises(DeliveryError) as err:
        orthanc_rest(f"{pacs.url}/nope").send(results)
    assert err.value.permanent is True


@pytest.mark.needs("nginx")
def test_https_destinations_verify_the_server_certificate(
    pacs: OrthancPeer, tmp_path: Path, results: list[Path]
) -> None:
    certs = make_tls_files(tmp_path / "tls")
    proxy = TlsProxy(tmp_path / "nginx", upstream_port=pacs.http_port, cert=certs.server_cert, key=certs.server_key)
    with proxy:
        trusted = {"ca_file": str(certs.ca_cert)}
        other = {"ca_file": str(certs.other_ca_cert)}
        web = parse_destinations(
            {
                "ok": {"type": "stow-rs", "url": f"{proxy.url}/dicom-web", "tls": trusted},
                "untrusted": {"type": "stow-rs", "url": f"{proxy.url}/dicom-web", "tls": other},
                "rest-ok": {"type": "orthanc-rest", "url": proxy.url, "tls": trusted},
                "rest-untrusted": {"type": "orthanc-rest", "url": proxy.url},  # system CAs: not ours
            }
        )
        build_destination("ok", web["ok"]).ping()
        assert build_destination("ok", web["ok"]).send(results[:1]).ok
        assert build_destination("rest-ok", web["rest-ok"]).send(results[1:]).ok
        assert pacs.instance_count() == len(results)
        for name in ("untrusted", "rest-untrusted"):
            with pytest.raises(DeliveryError) as err:
                build_destination(name, web[name]).send(results)
            assert err.value.permanent is True, name
            assert "CERTIFICATE_VERIFY_FAILED" in str(err.value), str(err.value)


def test_http_destinations_authenticate(tmp_path: Path, results: list[Path]) -> None:
    with OrthancPeer(tmp_path / "orthanc-auth", credentials=("ainode", "s3cret")) as peer:
        good = {"type": "basic", "username": "ainode", "password": "s3cret"}
        bad = {**good, "password": "wrong"}
        (tmp_path / "password").write_text("s3cret\n")  # a Docker secret / systemd credential file
        from_file = {"type": "basic", "username": "ainode", "password_file": str(tmp_path / "password")}
        cfg = parse_destinations(
            {
                "stow": {"type": "stow-rs", "url": peer.dicomweb_url, "auth": good},
                "stow-bad": {"type": "stow-rs", "url": peer.dicomweb_url, "auth": bad},
                "stow-bearer": {"type": "stow-rs", "url": peer.dicomweb_url, "auth": {"type": "bearer", "token": "x"}},
                "rest": {"type": "orthanc-rest", "url": peer.url, "username": "ainode", "password": "s3cret"},
                "stow-file": {"type": "stow-rs", "url": peer.dicomweb_url, "auth": from_file},
                "rest-file": {
                    "type": "orthanc-rest",
                    "url": peer.url,
                    "username": "ainode",
                    "password_file": str(tmp_path / "password"),
                },
                "rest-none": {"type": "orthanc-rest", "url": peer.url},
            }
        )
        build_destination("stow", cfg["stow"]).ping()
        assert build_destination("stow", cfg["stow"]).send(results[:1]).ok
        assert build_destination("rest", cfg["rest"]).send(results[1:]).ok
        assert peer.instance_count() == len(results)
        # The same password read from a file: accepted by the real Orthanc over both transports.
        build_destination("stow-file", cfg["stow-file"]).ping()
        assert build_destination("stow-file", cfg["stow-file"]).send(results[:1]).ok
        assert build_destination("rest-file", cfg["rest-file"]).send(results[1:]).ok
        for name in ("stow-bad", "stow-bearer", "rest-none"):
            with pytest.raises(DeliveryError) as err:
                build_destination(name, cfg[name]).send(results)
            assert err.value.permanent is True, name
            assert "HTTP 401" in str(err.value) and "credentials" in str(err.value)
            assert "s3cret" not in str(err.value)


class _SilentPort:
    """A loopback port that never answers: a listening socket whose accept queue is full (new SYNs are
    dropped, so a connection times out), or, with ``accepting``, one that connects and then says nothing.
    Fake peer: no real PACS on loopback can be made to drop packets like a host behind a firewall."""

    def __init__(self, *, accepting: bool) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8 if accepting else 0)
        self.port = self.server.getsockname()[1]
        self.fillers: list[socket.socket] = []
        if not accepting:
            for _ in range(4):  # fill the accept queue
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect(("127.0.0.1", self.port))
                self.fillers.append(c)

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.server.close()


def test_connection_failures_say_what_happened(results: list[Path]) -> None:
    closed = free_port()
    refused = parse_destinations(
        {
            "dimse": {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": closed, "timeout_s": 5},
            "stow": {"type": "stow-rs", "url": f"http://127.0.0.1:{closed}/dicom-web", "timeout_s": 5},
            "rest": {"type": "orthanc-rest", "url": f"http://127.0.0.1:{closed}", "timeout_s": 5},
        }
    )
    for name, cfg in refused.items():
        with pytest.raises(DeliveryError) as err:
            build_destination(name, cfg).send(results)
        assert "refused at once" in str(err.value) and "timed out" not in str(err.value), (name, str(err.value))
        assert err.value.permanent is False

    dropping = _SilentPort(accepting=False)
    silent = _SilentPort(accepting=True)
    try:
        slow = parse_destinations(
            {
                "dimse": {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": dropping.port,
                          "timeout_s": 1},
                "rest": {"type": "orthanc-rest", "url": f"http://127.0.0.1:{dropping.port}", "timeout_s": 1},
                "stow": {"type": "stow-rs", "url": f"http://127.0.0.1:{dropping.port}/dicom-web", "timeout_s": 1},
                "rest-silent": {"type": "orthanc-rest", "url": f"http://127.0.0.1:{silent.port}", "timeout_s": 1},
            }
        )  # fmt: skip
        texts = {}
        for name, cfg in slow.items():
            with pytest.raises(DeliveryError) as err:
                build_destination(name, cfg).send(results[:1])
            assert err.value.permanent is False
            texts[name] = str(err.value)
    finally:
        dropping.close()
        silent.close()
    for name in ("dimse", "rest", "stow"):
        assert "timed out connecting after 1 s" in texts[name] and "refused" not in texts[name], texts[name]
    assert (
        "connected to" in texts["rest-silent"] and "timed out waiting for the answer after 1 s" in texts["rest-silent"]
    ), texts["rest-silent"]


# --- classification, config, backoff (no peer) ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (StoreStatus.SUCCESS, Outcome.DELIVERED),
        (StoreStatus.WARNING_COERCION, Outcome.DELIVERED),
        (StoreStatus.DUPLICATE_SOP_INSTANCE, Outcome.DELIVERED),
        (StoreStatus.OUT_OF_RESOURCES, Outcome.TRANSIENT),
        (StoreStatus.OUT_OF_RESOURCES + 0x21, Outcome.TRANSIENT),
        (StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS + 0x05, Outcome.PERMANENT),
        (StoreStatus.CANNOT_UNDERSTAND + 0x123, Outcome.PERMANENT),
        (StoreStatus.SOP_CLASS_NOT_SUPPORTED, Outcome.PERMANENT),
        (StoreStatus.REFUSED_NOT_AUTHORIZED, Outcome.PERMANENT),
        (StoreStatus.PROCESSING_FAILURE, Outcome.TRANSIENT),
    ],
)
def test_store_status_classification(code: int, outcome: Outcome) -> None:
    assert classify_store_status(code).outcome is outcome


def test_destination_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"pacs\.dimse\.port"):
        parse_destinations({"pacs": {"type": "dimse", "ae_title": "PACS", "host": "h", "port": 70000}})
    with pytest.raises(ValidationError, match=r"pacs\.dimse\.ae_title"):
        parse_destinations({"pacs": {"type": "dimse", "ae_title": "BACK\\SLASH", "host": "h", "port": 104}})
    with pytest.raises(ValidationError, match=r"web\.stow-rs\.colour"):
        parse_destinations({"web": {"type": "stow-rs", "url": "http://x/dicom-web", "colour": "red"}})
    with pytest.raises(ValidationError, match=r"union_tag_invalid|does not match any of the expected tags"):
        parse_destinations({"x": {"type": "ftp", "url": "ftp://x"}})
    cfg = parse_destinations(
        {
            "web": {
                "type": "stow-rs",
                "url": "https://x/dicom-web",
                "auth": {"type": "bearer", "token": "s3cret"},
            }
        }
    )
    assert "s3cret" not in repr(cfg)  # SecretStr keeps tokens out of logs and reprs


def test_superseded_policy_is_per_destination_and_delete_needs_orthanc_rest() -> None:
    pacs = {"type": "dimse", "ae_title": "PACS", "host": "h", "port": 104}
    web = {"type": "stow-rs", "url": "http://x/dicom-web"}
    orthanc = {"type": "orthanc-rest", "url": "http://x:8042"}
    assert parse_destinations({"pacs": pacs})["pacs"].superseded == "keep"  # the default: as before
    chosen = parse_destinations({
        "pacs": {**pacs, "superseded": "reject"},
        "web": {**web, "superseded": "reject", "rejection_reason": "retention"},
        "orthanc": {**orthanc, "superseded": "delete"},
    })  # fmt: skip
    assert [(c.superseded, c.rejection_reason) for c in chosen.values()] == [
        ("reject", "quality"), ("reject", "retention"), ("delete", "quality")
    ]  # fmt: skip
    for name, config in (("pacs", pacs), ("web", web)):
        with pytest.raises(ValidationError, match=rf"{name}\.[a-z-]+\.superseded\n.*needs an orthanc-rest"):
            parse_destinations({name: {**config, "superseded": "delete"}})
    with pytest.raises(ValidationError, match=r"orthanc\.orthanc-rest\.superseded\n.*'keep', 'reject' or 'delete'"):
        parse_destinations({"orthanc": {**orthanc, "superseded": "rejected"}})
    with pytest.raises(ValidationError, match=r"rejection_reason 'retention' applies only to superseded: reject"):
        parse_destinations({"pacs": {**pacs, "rejection_reason": "retention"}})
    # Worker processes get the configuration dumped, every default spelled out: it must validate again.
    for config in chosen.values():
        assert type(config).model_validate(config.model_dump(mode="json", by_alias=True)) == config
    with pytest.raises(ValidationError, match=r"pacs\.dimse\.rejection_reason"):
        parse_destinations({"pacs": {**pacs, "superseded": "reject", "rejection_reason": "tired"}})


def test_report_raise_for_failures() -> None:
    ok = DeliveryReport("d", (FileOutcome.success(Path("a"), "1"),))
    ok.raise_for_failures()
    bad = DeliveryReport("d", (FileOutcome.failure(Path("a"), "1", "nope", permanent=True),))
    with pytest.raises(DeliveryError) as err:
        bad.raise_for_failures()
    assert err.value.permanent is True and "nope" in str(err.value)


def test_backoff_full_jitter_is_capped_deterministic_and_gives_up_by_age() -> None:
    policy = RetryPolicy(base_delay_s=2, max_delay_s=60, give_up_after_s=3600)
    assert [backoff_ceiling(a, policy) for a in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    a = [next_retry_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    b = [next_retry_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    assert a == b
    for n, delay in enumerate(a, start=1):
        assert 0 <= delay <= backoff_ceiling(n, policy)
    # However many attempts an outage took, the next one is never further away than the cap.
    assert max(next_retry_delay(n, policy, random.Random(n)) for n in range(1, 500)) <= 60
    rng = random.Random(1)
    samples = [next_retry_delay(6, policy, rng) for _ in range(500)]
    assert max(samples) > 45 and min(samples) < 15  # full jitter spreads over [0, ceiling]
    with pytest.raises(ValidationError):
        RetryPolicy(base_delay_s=10, max_delay_s=5)
    assert backoff_ceiling(10_000, policy) == 60  # no overflow for absurd attempt numbers
    # The dead letter for transient failures goes by age, not by attempt count.
    assert not gave_up(1000.0, 1000.0 + 3599, policy)
    assert gave_up(1000.0, 1000.0 + 3600, policy)
    assert RetryPolicy().max_delay_s <= 60 and RetryPolicy().give_up_after_s == 86400


def test_retry_max_attempts_is_refused_with_its_replacement() -> None:
    with pytest.raises(ConfigError, match=r"delivery\.retry.*max_attempts was replaced by give_up_after_s"):
        parse_config({"delivery": {"retry": {"max_attempts": 12}}})


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (500, True),
        (503, True),
        (429, True),
        (408, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (413, False),
    ],
)
def test_http_status_classification(status: int, transient: bool) -> None:
    assert http_status_is_transient(status) is transient
    assert f"HTTP {status}" in describe_http_status(status, "http://pacs/dicom-web")


def test_stow_response_per_instance_outcomes() -> None:
    """A STOW-RS 202/409 body (PS3.18 10.5.3) mapped to per-file outcomes with C-STORE semantics."""
    paths = {"1.1": Path("a.dcm"), "1.2": Path("b.dcm"), "1.3": Path("c.dcm"), "1.4": Path("d.dcm")}
    body = Dataset()
    stored = Dataset()
    stored.ReferencedSOPInstanceUID = "1.1"
    body.ReferencedSOPSequence = [stored]
    failures = []
    for uid, reason in (("1.2", StoreStatus.OUT_OF_RESOURCES), ("1.3", StoreStatus.CANNOT_UNDERSTAND)):
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = int(reason)
        failures.append(item)
    body.FailedSOPSequence = failures
    outcomes = stow_outcomes(body, paths, "http://pacs/dicom-web")
    assert outcomes[Path("a.dcm")].delivered
    assert outcomes[Path("b.dcm")].permanent is False
    assert outcomes[Path("c.dcm")].permanent is True
    assert outcomes[Path("d.dcm")].permanent is False  # not mentioned by the server: retry it
