"""Export destinations against a real Orthanc (Debian binary + DICOMweb plugin) on loopback.

Only ``test_dimse_status_codes_from_a_pynetdicom_scp`` uses a fake peer: no real PACS here can be made to
answer C-STORE with 0xA700 / 0xC000 on demand, so a pynetdicom SCP plays that part.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydantic import ValidationError
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.errors import DeliveryError
from node.export.backoff import RetryPolicy, backoff_ceiling, next_retry_delay
from node.export.destinations import (
    DeliveryReport,
    DimseDestinationConfig,
    FileOutcome,
    build_destination,
    parse_destinations,
)
from node.export.failures import Outcome, StoreStatus, classify_store_status
from tests.peers.net import free_port
from tests.peers.orthanc import OrthancPeer
from tests.result_objects import PHILIPS_CT, ct_files, make_results, make_secondary_capture

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
    assert "cannot connect" in str(err.value)
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

    report = destination.send([results[0], bogus])
    assert [o.delivered for o in report.outcomes] == [True, False]
    assert report.outcomes[1].permanent is True
    with pytest.raises(DeliveryError) as err:
        report.raise_for_failures()
    assert err.value.permanent is True

    with pytest.raises(DeliveryError) as only_bogus:
        destination.send([bogus])
    assert only_bogus.value.permanent is True
    assert "presentation contexts" in str(only_bogus.value)


def test_dimse_status_codes_from_a_pynetdicom_scp(results: list[Path]) -> None:
    """Fake peer (see module docstring): answers each SOP class with a chosen status."""
    status_by_class = {
        "1.2.840.10008.5.1.4.1.1.7": StoreStatus.REFUSED_OUT_OF_RESOURCES,  # SC: transient
        "1.2.840.10008.5.1.4.1.1.88.34": StoreStatus.ERROR_CANNOT_UNDERSTAND,  # SR: permanent
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
    try:
        cfg = DimseDestinationConfig(type="dimse", ae_title="FAKEPACS", host="127.0.0.1", port=port)
        report = build_destination("fake", cfg).send(results)
    finally:
        server.shutdown()

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
    assert sorted(requested) == sorted(expected)
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


def test_orthanc_rest_wrong_url_is_permanent(pacs: OrthancPeer, results: list[Path]) -> None:
    # Orthanc answers an unknown route with 404: a configuration error, not a reason to retry.
    assert httpx.get(f"{pacs.url}/nope/instances").status_code == 404
    with pytest.raises(DeliveryError) as err:
        orthanc_rest(f"{pacs.url}/nope").send(results)
    assert err.value.permanent is True


# --- classification, config, backoff (no peer) ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (StoreStatus.SUCCESS, Outcome.DELIVERED),
        (StoreStatus.WARNING_COERCION_OF_DATA_ELEMENTS, Outcome.DELIVERED),
        (StoreStatus.DUPLICATE_SOP_INSTANCE, Outcome.DELIVERED),
        (StoreStatus.REFUSED_OUT_OF_RESOURCES, Outcome.TRANSIENT),
        (StoreStatus.REFUSED_OUT_OF_RESOURCES + 0x21, Outcome.TRANSIENT),
        (StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS + 0x05, Outcome.PERMANENT),
        (StoreStatus.ERROR_CANNOT_UNDERSTAND + 0x123, Outcome.PERMANENT),
        (StoreStatus.SOP_CLASS_NOT_SUPPORTED, Outcome.PERMANENT),
        (StoreStatus.NOT_AUTHORIZED, Outcome.PERMANENT),
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


def test_report_raise_for_failures() -> None:
    ok = DeliveryReport("d", (FileOutcome.success(Path("a"), "1"),))
    ok.raise_for_failures()
    bad = DeliveryReport("d", (FileOutcome.failure(Path("a"), "1", "nope", permanent=True),))
    with pytest.raises(DeliveryError) as err:
        bad.raise_for_failures()
    assert err.value.permanent is True and "nope" in str(err.value)


def test_backoff_full_jitter_is_bounded_deterministic_and_limited() -> None:
    policy = RetryPolicy(base_delay_s=2, max_delay_s=60, max_attempts=8)
    assert [backoff_ceiling(a, policy) for a in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    a = [next_retry_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    b = [next_retry_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    assert a == b
    for n, delay in enumerate(a, start=1):
        assert delay is not None and 0 <= delay <= backoff_ceiling(n, policy)
    assert next_retry_delay(8, policy, random.Random(7)) is None  # attempts exhausted: dead letter
    rng = random.Random(1)
    samples = [next_retry_delay(6, policy, rng) or 0.0 for _ in range(500)]
    assert max(samples) > 45 and min(samples) < 15  # full jitter spreads over [0, ceiling]
    with pytest.raises(ValidationError):
        RetryPolicy(base_delay_s=10, max_delay_s=5)
    assert backoff_ceiling(10_000, policy) == 60  # no overflow for absurd attempt numbers
