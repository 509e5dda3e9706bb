"""Superseded results out of the PACS: each destination's ``superseded`` policy, applied once the newer results
are delivered there.

A newer run of a series (the series grew after the node reported on it, or an operator re-ran it) makes new
objects under new UIDs, so the PACS holds both runs. The results of every earlier job of the same series and
pipeline are then superseded. For a destination whose policy is not ``keep``, once every result of the newest
done job is ``sent`` there, the earlier objects that were ``sent`` there are withdrawn:

- ``reject``: one IHE IOCM rejection note (node/encode/rejection_note.py) listing them is written to the spool as
  a result of the newer job and delivered like any other result (the outbox: retries, dead letter);
- ``delete``: each is deleted through the destination's REST API (Orthanc), with retries of its own
  (:func:`delete_due`, same retry policy as deliveries).

Every withdrawn object gets a ``withdrawals`` row in the same transaction as its note or its deletion order, so
nothing is withdrawn twice; a crash before that commit plans the same note again, under the same UIDs.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
import structlog
from pydicom.errors import InvalidDicomError

from node.config.destinations import DestinationConfig
from node.errors import DeliveryError, EncodeError
from node.export.backoff import RetryPolicy, gave_up, next_retry_delay
from node.export.destinations import DeletingDestination, DeletionOutcome, Destination
from node.index import withdrawals
from node.index.db import Connection, Database, now
from node.index.states import WithdrawalMethod, WithdrawalState

log = structlog.get_logger(__name__)

# Result kind of a rejection note (its Modality). Notes are never themselves withdrawn, and a newer job's
# delivery is complete without them.
NOTE_KIND = "KO"


@dataclass(frozen=True)
class WithdrawalPolicy:
    method: WithdrawalMethod
    rejection_reason: str  # 'quality' | 'retention' (reject only)


def withdrawal_policies(configs: Mapping[str, DestinationConfig]) -> dict[str, WithdrawalPolicy]:
    """The destinations whose superseded results are withdrawn (``superseded`` other than ``keep``)."""
    return {
        name: WithdrawalPolicy(WithdrawalMethod(config.superseded), config.rejection_reason)
        for name, config in configs.items()
        if config.superseded != "keep"
    }


def note_uid_seed(installation_id: str, superseding_job_id: int) -> str:
    """Seed of the UIDs of rejection notes made for a job: stable on a retake after a crash, new on a new index
    (job ids restart there; the installation id keeps them apart, as for the results themselves)."""
    return f"{installation_id}/rejection-notes/{superseding_job_id}"


@dataclass(frozen=True)
class _Superseded:
    sop_instance_uid: str
    path: Path


# --- planning ------------------------------------------------------------------------------------


def plan_withdrawals(db: Database, policies: Mapping[str, WithdrawalPolicy], results_root: Path) -> int:
    """Plan the withdrawals that became due; returns how many objects were newly planned."""
    if not policies:
        return 0
    planned = 0
    for (job_id, destination), objects in _due(db, policies).items():
        bound = log.bind(destination=destination, superseding_job_id=job_id)
        policy = policies[destination]
        try:
            if policy.method == WithdrawalMethod.REJECT:
                planned += _plan_rejection(db, job_id, destination, objects, policy.rejection_reason, results_root)
            else:
                planned += _plan_deletion(db, job_id, destination, objects)
        except (EncodeError, InvalidDicomError, OSError, ValueError) as exc:
            # The note cannot be made (an old result file unreadable): say so once, on every object, and move on.
            bound.error("withdrawal_unplannable", objects=len(objects), reason=f"{type(exc).__name__}: {exc}")
            _record_dead(db, job_id, destination, policy.method, objects, f"cannot plan: {exc}")
            continue
        bound.info("withdrawal_planned", method=policy.method, objects=len(objects))
    return planned


def _due(db: Database, policies: Mapping[str, WithdrawalPolicy]) -> dict[tuple[int, str], list[_Superseded]]:
    """{(newest done job, destination): earlier objects sent there and not yet withdrawn}, for the newest done
    jobs whose own results are all sent to that destination."""
    rows = withdrawals.superseded_sent_objects(db, list(policies), NOTE_KIND)
    due: dict[tuple[int, str], list[_Superseded]] = defaultdict(list)
    ready: dict[tuple[int, str], bool] = {}
    for row in rows:
        if row["newest"] is None:
            continue  # the newest run of its series: nothing supersedes it
        key = (int(row["newest"]), str(row["destination"]))
        if key not in ready:
            ready[key] = _all_sent(db, *key)
        if ready[key]:
            due[key].append(_Superseded(str(row["sop_instance_uid"]), Path(row["path"])))
    return dict(due)


def _all_sent(db: Database, job_id: int, destination: str) -> bool:
    """Every result of the job (notes aside) reached the destination: the new run is there to replace the old."""
    return withdrawals.job_results_all_sent(db, job_id, destination, NOTE_KIND)


def _plan_rejection(
    db: Database, job_id: int, destination: str, objects: list[_Superseded], reason: str, results_root: Path
) -> int:
    """Write the rejection note, then record it as a result of the newer job with one delivery, and the
    withdrawals it carries, in one transaction."""
    from node.encode import write_results
    from node.encode.rejection_note import encode_rejection_note

    rejected = [pydicom.dcmread(o.path, stop_before_pixels=True) for o in objects]
    note = encode_rejection_note(rejected, reason=reason, uid_seed=note_uid_seed(db.installation_id(), job_id))
    [path] = write_results([note], results_root / str(job_id))
    note_uid = str(note.SOPInstanceUID)
    t = now()
    with db.transaction() as conn:
        withdrawals.record_note(conn, job_id, note_uid, NOTE_KIND, path, destination, t)
        return _insert(conn, job_id, destination, WithdrawalMethod.REJECT, objects, WithdrawalState.NOTED, note_uid)


def _plan_deletion(db: Database, job_id: int, destination: str, objects: list[_Superseded]) -> int:
    with db.transaction() as conn:
        return _insert(conn, job_id, destination, WithdrawalMethod.DELETE, objects, WithdrawalState.PENDING)


def _record_dead(
    db: Database, job_id: int, destination: str, method: WithdrawalMethod, objects: list[_Superseded], reason: str
) -> None:
    with db.transaction() as conn:
        _insert(conn, job_id, destination, method, objects, WithdrawalState.DEAD, error=reason)


def _insert(
    conn: Connection,
    job_id: int,
    destination: str,
    method: WithdrawalMethod,
    objects: list[_Superseded],
    state: WithdrawalState,
    note_uid: str | None = None,
    *,
    error: str | None = None,
) -> int:
    """The withdrawals rows of ``objects`` (one each, an object already withdrawn there is skipped): how many new."""
    return withdrawals.insert_withdrawals(
        conn,
        job_id=job_id,
        destination=destination,
        method=method,
        sop_instance_uids=[o.sop_instance_uid for o in objects],
        state=state,
        note_uid=note_uid,
        error=error,
        t=now(),
    )


# --- deleting ------------------------------------------------------------------------------------


def delete_due(
    db: Database,
    destinations: Mapping[str, Destination],
    policy: RetryPolicy,
    rng: random.Random,
    *,
    batch_size: int = 64,
) -> int:
    """Carry out the due deletions, one batch per destination. Returns how many were attempted."""
    rows = withdrawals.due_deletions(db, now(), batch_size * 4)
    by_destination: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        if len(by_destination[row["destination"]]) < batch_size:
            by_destination[row["destination"]][str(row["result_sop_instance_uid"])] = int(row["id"])
    attempted = 0
    for name, ids_by_uid in by_destination.items():
        attempted += len(ids_by_uid)
        destination = destinations.get(name)
        if not isinstance(destination, DeletingDestination):
            why = f"destination {name!r} is not configured or cannot delete instances"
            outcomes = [DeletionOutcome(uid, False, why, True) for uid in ids_by_uid]
        else:
            try:
                outcomes = destination.delete_instances(list(ids_by_uid))
            except DeliveryError as exc:
                outcomes = [DeletionOutcome(uid, False, str(exc), exc.permanent) for uid in ids_by_uid]
        _record_deletions(db, name, ids_by_uid, outcomes, policy, rng)
    return attempted


def _record_deletions(
    db: Database,
    destination: str,
    ids_by_uid: dict[str, int],
    outcomes: list[DeletionOutcome],
    policy: RetryPolicy,
    rng: random.Random,
) -> None:
    by_uid = {o.sop_instance_uid: o for o in outcomes}
    t = now()
    with db.transaction() as conn:
        for uid, withdrawal_id in ids_by_uid.items():
            outcome = by_uid.get(uid) or DeletionOutcome(uid, False, "no outcome reported by the destination", False)
            attempt = withdrawals.count_withdrawal_attempt(conn, withdrawal_id, t)
            if outcome.deleted:
                withdrawals.mark_withdrawal_deleted(conn, withdrawal_id)
                continue
            # Transient failures are retried on the outbox's capped backoff until the withdrawal is older than
            # retry.give_up_after_s (by age, like deliveries: a long PACS outage does not kill it).
            if outcome.permanent or gave_up(float(attempt["created_at"]), t, policy):
                why = (
                    outcome.detail
                    if outcome.permanent
                    else f"gave up after {attempt['attempts']} attempts: {outcome.detail}"
                )
                withdrawals.mark_withdrawal_dead(conn, withdrawal_id, why)
                log.error("withdrawal_dead", withdrawal_id=withdrawal_id, destination=destination, reason=why)
            else:
                delay = next_retry_delay(int(attempt["attempts"]), policy, rng)
                withdrawals.schedule_withdrawal_retry(conn, withdrawal_id, t + delay, outcome.detail)
    deleted = sum(1 for o in outcomes if o.deleted)
    log.info("withdrawal_deletions", destination=destination, deleted=deleted, failed=len(ids_by_uid) - deleted)
