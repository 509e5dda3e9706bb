"""The outside campaign of issue 11: the node as a process (demo.node_process), attacked from outside.

    python -m benchmarks.outside_campaign [--mutations 400] [--stow 60] [--idle-rounds 5] [--kill-trials 3]
                                          [--seed 11] [--no-stale] [--json FILE]

What it replays (seeded; every dataset carries the canary patient identity of demo.ct_factory):
- C-STORE of mutated copies of one CT slice (bit flips, VR changes, truncations, length-field corruption);
- malformed STOW-RS requests (no multipart, no or wrong boundary, cut short, garbage or mutated parts, ...);
- idle and garbage TCP connections (more than max_associations) held while an allowed caller echoes and stores;
- kill -9 of the node (and its workers) while a caller is storing, then a restart;
- a data-dir wipe and re-install, the same study sent again, results delivered to a real Orthanc both times.

The five figures (the issue's "done when"), and the totals they come from, are printed as JSON:
- acknowledged_but_unusable: instances answered Success (C-STORE 0x0000/0xB0xx, or listed as stored by STOW-RS,
  or acknowledged before a kill -9) that the index does not hold after the campaign (and a restart), or whose
  file pydicom cannot read with its pixels;
- unanswered: C-STORE requests without a response, STOW-RS requests without an HTTP answer;
- phi_lines: log lines of the nodes that contain a canary patient name, ID, birth date or accession number;
- stale_results: results of the re-installed node that Orthanc does not hold as the node made them (it kept an
  older object under the same UID, or lacks it);
- allowed_caller_refused_while_idle: echoes and stores of an allowed caller that failed while the hostile
  connections were held.
Not a test: it asserts nothing and prints figures (exit 0 whatever they are).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from demo.ct_factory import CANARIES, make_ct_series
from demo.dcmtk import echoscu, storescu
from demo.hostile import MUTATIONS, c_store_body, crafted_store, hostile_connections, mutate
from demo.local_pacs import LocalOrthanc
from demo.netutil import wait_until
from demo.node_process import NodeProcess
from demo.paths import PHILIPS_CT
from node.api.secret_hash import token_digest
from node.dimse_status import StoreStatus

CALLER = "TESTSCU"  # allowed by NodeProcess, like STORESCU
STOW_SECRET = "campaign-sender-secret"
SENDER_CREDENTIAL = {"name": "pacs", "secret_hash": token_digest(STOW_SECRET), "role": "sender"}
MAX_ASSOCIATIONS = 2
ACKNOWLEDGING = {int(StoreStatus.SUCCESS), *(int(s) for s in StoreStatus if s.name.startswith("WARNING"))}


@dataclass
class Campaign:
    totals: Counter[str] = field(default_factory=Counter)
    acknowledged: set[str] = field(default_factory=set)  # SOP Instance UIDs the node said it stored
    how: dict[str, str] = field(default_factory=dict)  # acknowledged UID -> what was sent (for the report)
    unusable: list[str] = field(default_factory=list)  # "uid: why", for the report
    unanswered: int = 0
    refused_while_idle: int = 0
    stale: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


# --- C-STORE of mutated datasets ---------------------------------------------------------------------


def _associate(port: int, called: str) -> Association:
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(pydicom.uid.CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("the allowed caller could not associate with the node")
    return assoc


def mutated_stores(node: NodeProcess, source: Path, count: int, rng: random.Random, run: Campaign) -> None:
    template = pydicom.dcmread(source)
    assoc = _associate(node.port, node.ae_title)
    try:
        for i in range(count):
            kind = MUTATIONS[i % len(MUTATIONS)]
            ds = template.copy()
            ds.SOPInstanceUID = f"2.25.{rng.getrandbits(120)}"
            body = mutate(c_store_body(ds), kind, rng)
            if not assoc.is_established:  # the node aborted it: count the request, open another
                assoc = _associate(node.port, node.ae_title)
            try:
                status = crafted_store(assoc, body, str(ds.SOPInstanceUID), msg_id=i % 65535 + 1)
            except (RuntimeError, OSError):
                status = None
            run.totals[f"c_store_{kind}"] += 1
            if status is None:
                run.unanswered += 1
                run.totals["c_store_unanswered"] += 1
                assoc.abort()
                assoc = _associate(node.port, node.ae_title)
            elif status in ACKNOWLEDGING:
                run.acknowledged.add(str(ds.SOPInstanceUID))
                run.how[str(ds.SOPInstanceUID)] = f"C-STORE {kind} #{i}"
                run.totals["c_store_acknowledged"] += 1
            else:
                run.totals["c_store_refused"] += 1
    finally:
        if assoc.is_established:
            assoc.release()


# --- STOW-RS -----------------------------------------------------------------------------------------


def _part10(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(parts: list[tuple[str, bytes]], boundary: str, *, close: bool = True) -> bytes:
    out = b""
    for content_type, payload in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def _stow_case(kind: str, template: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    """(body, Content-Type) of one malformed STOW-RS request."""
    ds = template.copy()
    ds.SOPInstanceUID = f"2.25.{rng.getrandbits(120)}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    good = _part10(ds)
    related = 'multipart/related; type="application/dicom"; boundary='
    boundary = f"b{rng.getrandbits(48):x}"
    if kind == "not_multipart":
        return good, "application/dicom"
    if kind == "no_boundary":
        return _multipart([("application/dicom", good)], boundary), 'multipart/related; type="application/dicom"'
    if kind == "wrong_boundary":
        return _multipart([("application/dicom", good)], boundary), related + "other" + boundary
    if kind == "cut_short":
        body = _multipart([("application/dicom", good)], boundary)
        return body[: rng.randrange(len(body))], related + boundary
    if kind == "no_closing_delimiter":
        return _multipart([("application/dicom", good)], boundary, close=False), related + boundary
    if kind == "garbage_part":
        return _multipart([("application/dicom", rng.randbytes(rng.randrange(1, 4096)))], boundary), related + boundary
    if kind == "mutated_part":
        preamble_and_meta = good[: len(good) - len(c_store_body(ds))]
        mutated = preamble_and_meta + mutate(c_store_body(ds), rng.choice(MUTATIONS), rng)
        return _multipart([("application/dicom", mutated)], boundary), related + boundary
    if kind == "text_part":
        return _multipart([("text/plain", b"hello")], boundary), related + boundary
    if kind == "empty":
        return b"", related + boundary
    if kind == "good_and_garbage":
        parts = [("application/dicom", good), ("application/dicom", rng.randbytes(512))]
        return _multipart(parts, boundary), related + boundary
    raise ValueError(kind)


STOW_CASES = ("not_multipart", "no_boundary", "wrong_boundary", "cut_short", "no_closing_delimiter",
              "garbage_part", "mutated_part", "text_part", "empty", "good_and_garbage")  # fmt: skip


def malformed_stow(node: NodeProcess, source: Path, count: int, rng: random.Random, run: Campaign) -> None:
    template = pydicom.dcmread(source)
    headers = {"Authorization": f"Bearer {STOW_SECRET}", "Accept": "application/dicom+json"}
    with httpx.Client(base_url=node.http_url, timeout=60, headers=headers) as client:
        for i in range(count):
            kind = STOW_CASES[i % len(STOW_CASES)]
            body, content_type = _stow_case(kind, template, rng)
            run.totals[f"stow_{kind}"] += 1
            try:
                response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
            except httpx.HTTPError:
                run.unanswered += 1
                run.totals["stow_unanswered"] += 1
                continue
            run.totals[f"stow_http_{response.status_code}"] += 1
            if response.status_code in (200, 202):
                for item in response.json().get("00081199", {}).get("Value", []):
                    run.acknowledged.add(str(item["00081155"]["Value"][0]))
                    run.how[str(item["00081155"]["Value"][0])] = f"STOW-RS {kind} #{i}"
                    run.totals["stow_acknowledged"] += 1


# --- idle and garbage connections while an allowed caller works -----------------------------------------


def idle_connections(node: NodeProcess, work: Path, rounds: int, run: Campaign) -> None:
    for r in range(rounds):
        held = hostile_connections(node.port)
        try:
            run.totals["hostile_connections_held"] += len(held)
            echo = echoscu(node.port, called=node.ae_title, calling="STORESCU", timeout_s=30)
            series = make_ct_series(work / f"idle-{r}", slices=3, seed=r)
            store = storescu(node.port, series, called=node.ae_title, timeout_s=60)
            for done in (echo, store):
                run.totals["allowed_caller_attempts"] += 1
                if done.returncode != 0:
                    run.refused_while_idle += 1
            if store.returncode == 0:
                run.acknowledged |= {str(pydicom.dcmread(p).SOPInstanceUID) for p in series}
        finally:
            for sock in held:
                sock.close()


# --- kill -9 during storage ----------------------------------------------------------------------------


def kill_trials(node: NodeProcess, work: Path, trials: int, rng: random.Random, run: Campaign) -> None:
    for t in range(trials):
        series = make_ct_series(work / f"kill-{t}", slices=40, seed=100 + t)
        kill_after = rng.randint(3, len(series) - 3)
        acknowledged: list[str] = []
        killed = threading.Event()

        def killer(limit: int = kill_after, acked: list[str] = acknowledged, done: threading.Event = killed) -> None:
            wait_until(lambda: len(acked) >= limit, 120, "stores to kill the node during")
            node.kill()  # SIGKILL of the node's whole process group, mid-association
            done.set()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            assoc = _associate(node.port, node.ae_title)
            for i, path in enumerate(series):
                ds = pydicom.dcmread(path)
                try:
                    status = crafted_store(assoc, c_store_body(ds), str(ds.SOPInstanceUID), msg_id=i + 1)
                except (RuntimeError, OSError):
                    break
                if status is None or not assoc.is_established:
                    break
                if status in ACKNOWLEDGING:
                    acknowledged.append(str(ds.SOPInstanceUID))
            if assoc.is_established:
                assoc.abort()
        finally:
            thread.join(timeout=130)
        run.totals["kill9_trials"] += 1
        run.totals["kill9_acknowledged_before_kill"] += len(acknowledged)
        node.start()
        run.acknowledged |= set(acknowledged)


# --- the re-installed node and stale results ----------------------------------------------------------------


def stale_results(work: Path, run: Campaign) -> None:
    """Results of a re-installed node (wiped data dir) for a study the PACS already holds results of."""
    node = NodeProcess(work / "reinstall", {"workers": {"processes": 1},
                                             "completeness": {"settle_s": 3, "quiet_period_s": 20},
                                             "delivery": {"check_interval_s": 0.25}})  # fmt: skip
    with LocalOrthanc(work / "orthanc", modalities={"node": (node.ae_title, "127.0.0.1", node.port)}) as orthanc:
        pacs = {"type": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                "calling_ae_title": node.ae_title}  # fmt: skip
        node.config["destinations"] = {"pacs": pacs}
        node.config["routes"] = [{"name": "ct", "when": {"tag": "Modality", "equals": "CT"},
                                  "pipelines": ["lung-nodule"], "destinations": ["pacs"]}]  # fmt: skip
        node.reconfigure({})
        made: list[dict[str, Path]] = []
        for install in range(2):
            if install:
                shutil.rmtree(node.data_dir)  # the re-install: same config, no index, no spool
            with node:
                if storescu(node.port, [PHILIPS_CT], called=node.ae_title).returncode != 0:
                    raise RuntimeError("storescu of the Philips series failed")

                def delivered() -> bool:
                    rows = node.db().query("SELECT state FROM deliveries")
                    return bool(rows) and all(r["state"] in ("sent", "dead") for r in rows)

                wait_until(delivered, 600, "the results to be delivered", interval_s=1)
                rows = node.db().query(
                    "SELECT r.sop_instance_uid, r.path FROM results r JOIN jobs j ON j.id = r.job_id "
                    "WHERE j.state = 'done'"
                )
                made.append({r["sop_instance_uid"]: Path(r["path"]) for r in rows})
                # The second installation's files are compared below, while they exist.
                if install:
                    for uid, path in made[1].items():
                        run.totals["reinstall_results"] += 1
                        if not _orthanc_holds(orthanc, uid, path):
                            run.stale += 1
            run.totals["reinstall_phi_lines"] += _phi_lines(node.log_text(), _philips_identity())
        run.totals["reinstall_uids_reused"] = len(set(made[0]) & set(made[1]))


def _orthanc_holds(orthanc: LocalOrthanc, uid: str, path: Path) -> bool:
    """Orthanc's copy of ``uid`` is the object the node made: the same dataset, element for element (Orthanc
    writes its own File Meta)."""
    orthanc_id = orthanc.lookup_id(uid)
    if not orthanc_id:
        return False
    from io import BytesIO

    stored = pydicom.dcmread(BytesIO(httpx.get(f"{orthanc.url}/instances/{orthanc_id}/file", timeout=60).content))
    mine = pydicom.dcmread(path)
    return bool(Dataset(stored) == Dataset(mine))


# --- the judges ----------------------------------------------------------------------------------------


def check_acknowledged(node: NodeProcess, run: Campaign) -> None:
    """Every acknowledged instance is in the index and readable with its pixels (after the restarts)."""

    def indexed() -> set[str]:
        rows = node.db().query("SELECT sop_instance_uid FROM instances")
        return {r["sop_instance_uid"] for r in rows}

    # The index catches up at association release and at start-up reconciliation; what is still missing after
    # this wait is counted below.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: run.acknowledged <= indexed(), 30, "acknowledged instances in the index", interval_s=0.5)
    rows = node.db().query("SELECT sop_instance_uid, path FROM instances")
    paths = {r["sop_instance_uid"]: Path(r["path"]) for r in rows}
    for uid in sorted(run.acknowledged):
        path = paths.get(uid)
        if path is None:
            run.unusable.append(f"{run.how.get(uid, 'stored')}: acknowledged, not in the index")
            continue
        try:
            ds = pydicom.dcmread(path)
            ds.pixel_array  # noqa: B018  # decodes the image, as the pipeline's loader will
            if str(ds.SOPInstanceUID) != uid or not ds.get("SeriesInstanceUID"):
                raise ValueError("UIDs do not match the acknowledgement")
        except Exception as exc:  # whatever makes it unusable is the finding
            run.unusable.append(f"{run.how.get(uid, 'stored')}: {type(exc).__name__}: {str(exc)[:120]}")


def _philips_identity() -> tuple[str, ...]:
    ds = pydicom.dcmread(next(p for p in sorted(PHILIPS_CT.iterdir()) if p.is_file()), stop_before_pixels=True)
    values = (str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"))
    return tuple(v for v in values if len(v) >= 4)


def _phi_lines(log_text: str, identity: tuple[str, ...]) -> int:
    return sum(1 for line in log_text.splitlines() if any(value in line for value in identity))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=400, help="mutated C-STOREs (default 400)")
    parser.add_argument("--stow", type=int, default=60, help="malformed STOW-RS requests (default 60)")
    parser.add_argument("--idle-rounds", type=int, default=5, help="rounds of hostile connections (default 5)")
    parser.add_argument("--kill-trials", type=int, default=3, help="kill -9 trials during storage (default 3)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-stale", action="store_true", help="skip the re-install scenario (it runs the AI twice)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    run = Campaign()
    with tempfile.TemporaryDirectory(prefix="ainode-campaign-") as tmp:
        work = Path(tmp)
        [source] = make_ct_series(work / "source", slices=1)
        node = NodeProcess(
            work / "node",
            {"dicom": {"max_associations": MAX_ASSOCIATIONS}, "workers": {"processes": 0}},
            http={"auth": {"credentials": [SENDER_CREDENTIAL]}},
        )
        phases = [
            ("c_store_mutations", lambda: mutated_stores(node, source, args.mutations, rng, run)),
            ("stow_rs", lambda: malformed_stow(node, source, args.stow, rng, run)),
            ("idle_connections", lambda: idle_connections(node, work, args.idle_rounds, run)),
            ("kill9", lambda: kill_trials(node, work, args.kill_trials, rng, run)),
            ("check_acknowledged", lambda: check_acknowledged(node, run)),
        ]
        with node:
            for name, phase in phases:
                started = time.perf_counter()
                phase()
                run.seconds[name] = round(time.perf_counter() - started, 1)
        phi = _phi_lines(node.log_text(), CANARIES)
        run.totals["node_log_lines"] = len(node.log_text().splitlines())
        if not args.no_stale:
            started = time.perf_counter()
            stale_results(work, run)
            run.seconds["reinstall"] = round(time.perf_counter() - started, 1)
            phi += run.totals["reinstall_phi_lines"]
    run.totals["acknowledged"] = len(run.acknowledged)
    report: dict[str, Any] = {
        "figures": {
            "acknowledged_but_unusable": len(run.unusable),
            "unanswered": run.unanswered,
            "phi_lines": phi,
            "stale_results": None if args.no_stale else run.stale,
            "allowed_caller_refused_while_idle": run.refused_while_idle,
        },
        "totals": dict(sorted(run.totals.items())),
        "unusable_examples": run.unusable[:10],
        "seconds": run.seconds,
        "seed": args.seed,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
