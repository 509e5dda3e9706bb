"""The outbox: one delivery row per (result object, destination), driven to 'sent' or 'dead'.

States: pending → sending → sent | retry (waiting: the destination is down, or the object failed
transiently) | dead (permanent failure, or still failing after ``retry.give_up_after_s``; with the
reason, at once — no retry storm against a PACS that said no). A delivery found 'sending' at start-up
was interrupted by a crash: it goes back to retry. Re-sending reuses the same file and so the same SOP
Instance UID, so the PACS ends up with one copy whatever happens.

Deliveries go out as result sets: the waiting deliveries of one job for one destination are sent
together (one association / request where the transport allows), SEG first, Grad-CAM SCs next, the SR
last, so that a viewer never shows an SR whose SEG is missing. A transfer that fails transiently as a
whole marks the destination down (``health``): its deliveries then wait for the probe that finds it
back, and are all sent the moment it answers.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from node.audit import AuditTrail
from node.audit import messages as audit_messages
from node.errors import DeliveryError
from node.export.backoff import RetryPolicy, gave_up, next_retry_delay
from node.export.destinations import DeliveryReport, Destination, FileOutcome
from node.export.health import HealthBook
from node.export.superseded import WithdrawalPolicy, delete_due, plan_withdrawals
from node.index import deliveries
from node.index.db import Connection, Database, now
from node.index.health import health_rows, probe_now
from node.index.jobs import study_uid_of_job
from node.index.states import DeliveryState

log = structlog.get_logger(__name__)

# Order of the objects of one result set at the PACS: the SR references the SEG (and the SCs), so it goes
# last; the SEG first, as it is what a viewer opens beside the images. Keyed by results.kind (Modality).
SEND_ORDER = {"SEG": 0, "OT": 1, "SR": 2}
_OTHER_KINDS = 1  # any other object goes with the SCs, before the SR


@dataclass(frozen=True)
class _Due:
    id: int
    job_id: int
    destination: str
    path: Path
    kind: str
    waiting_since: float | None


def send_rank(kind: str) -> int:
    return SEND_ORDER.get(kind, _OTHER_KINDS)


class Outbox:
    def __init__(
        self,
        db: Database,
        destinations: dict[str, Destination],
        policy: RetryPolicy,
        *,
        batch_size: int = 64,
        rng: random.Random | None = None,
        withdrawals: dict[str, WithdrawalPolicy] | None = None,
        results_root: Path | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        """``withdrawals``: the destinations whose superseded results are withdrawn (node/export/superseded.py),
        with ``results_root``, the spool folder where rejection notes are written."""
        if withdrawals and results_root is None:
            raise ValueError("withdrawals need the results_root to write rejection notes in")
        self.db = db
        self.destinations = destinations
        self.policy = policy
        self.batch_size = batch_size
        self.rng = rng or random.Random()
        self.health = HealthBook(db, policy, self.rng)
        self.withdrawals = withdrawals or {}
        self.results_root = results_root
        self.audit = audit or AuditTrail.off()
        # Withdrawals become due only when a delivery is sent: plan at start, then after a pass that sent one.
        self._plan_withdrawals = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, interval_s: float) -> None:
        self.health.track(self.destinations, now())
        self.recover_interrupted()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True, name="outbox")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                busy = self.deliver_due() + self.withdraw_superseded()
            except Exception:
                log.exception("outbox_pass_failed")
                busy = 0
            if not busy:
                self._stop.wait(interval_s)

    def recover_interrupted(self) -> int:
        """'sending' rows belong to a process that died mid-send: send them again."""
        with self.db.transaction() as conn:
            ids = deliveries.interrupted_delivery_ids(conn)
            for delivery_id in ids:
                self._transition(
                    conn, delivery_id, DeliveryState.SENDING, DeliveryState.RETRY, "node restarted during the send"
                )
                deliveries.set_next_attempt(conn, delivery_id, now())
        return len(ids)

    # --- one pass --------------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """Probe down destinations whose probe is due; send the due result sets of the others.

        Returns how many deliveries were attempted (0: nothing to do, the loop may sleep)."""
        t = now()
        names = deliveries.destinations_with_waiting_deliveries(self.db)
        # A down destination is probed even with nothing waiting, so that its health (metrics) stays true.
        names |= {h.destination for h in health_rows(self.db) if not h.up and h.destination in self.destinations}
        attempted = 0
        for name in sorted(names):
            destination = self.destinations.get(name)
            if destination is None:
                self._dead_letter_unconfigured(name)
                continue
            health = self.health.get(name)
            if not health.up and (not health.probe_due(t) or not self._probe(name, destination)):
                self._wait_for(name)
                continue
            attempted += self._deliver_sets(name, destination)
        return attempted

    def withdraw_superseded(self) -> int:
        """Plan what newly delivered results supersede, and carry out due deletions. Rejection notes it plans
        are ordinary deliveries, sent by the next ``deliver_due``. Returns planned + attempted."""
        if not self.withdrawals or self.results_root is None:
            return 0
        planned = 0
        if self._plan_withdrawals:
            planned = plan_withdrawals(self.db, self.withdrawals, self.results_root)
            self._plan_withdrawals = False
        return planned + delete_due(self.db, self.destinations, self.policy, self.rng, batch_size=self.batch_size)

    def _probe(self, name: str, destination: Destination) -> bool:
        """One health probe of a down destination. True when it answers (it is up again)."""
        bound = log.bind(destination=name)
        started = time.monotonic()
        try:
            destination.ping()
        except DeliveryError as exc:
            if exc.permanent:
                # It answered, with a refusal (an echo status, 401...): up as far as the network goes; the
                # sends that follow report the refusal on each delivery.
                bound.info("destination_probe_answered_with_refusal", reason=str(exc))
            else:
                health = self.health.probe_failed(name, str(exc), now())
                bound.info(
                    "destination_still_down",
                    reason=str(exc),
                    failed_probes=health.failed_probes,
                    next_probe_in_s=round((health.next_probe_at or 0) - now(), 1),
                )
                return False
        except Exception as exc:  # a transport bug must not kill the outbox thread; probe again later
            bound.exception("destination_probe_crashed")
            self.health.probe_failed(name, f"{type(exc).__name__}: {exc}", now())
            return False
        t = now()
        down = self.health.get(name)
        self.health.mark_up(name, t)
        with self.db.transaction() as conn:
            # Everything that waited for this destination is due now.
            released = deliveries.release_waiting(conn, name, t)
        bound.warning(
            "destination_back_up",
            down_for_s=round(t - down.since, 1),
            probe_s=round(time.monotonic() - started, 3),
            failed_probes=down.failed_probes,
            deliveries_released=released,
        )
        return True

    def _wait_for(self, name: str) -> None:
        """A down destination's deliveries: new ones start waiting; those waiting too long are dead."""
        health = self.health.get(name)
        t = now()
        reason = f"waiting for {name} (down since {_clock(health.since)}): {health.last_error or 'unreachable'}"
        waited_before = t - self.policy.give_up_after_s
        if not deliveries.any_to_mark_waiting(self.db, name, waited_before):
            return  # the common case while an outage lasts: nothing new, nothing too old
        with self.db.transaction() as conn:
            for row in deliveries.to_mark_waiting(conn, name, waited_before):
                since = row["waiting_since"]
                if since is not None and gave_up(float(since), t, self.policy):
                    self._dead(conn, row["id"], f"gave up after waiting {_duration(t - float(since))}: {reason}")
                elif row["state"] == DeliveryState.PENDING or since is None:
                    if row["state"] == DeliveryState.PENDING:
                        self._transition(conn, row["id"], DeliveryState.PENDING, DeliveryState.RETRY, reason)
                    deliveries.start_waiting(conn, row["id"], t, reason, health.next_probe_at or t)

    def _due_sets(self, name: str) -> list[list[_Due]]:
        """Result sets with something due for ``name``: each job's waiting deliveries, in send order."""
        t = now()
        sets: list[list[_Due]] = []
        for job_id in deliveries.jobs_with_due_deliveries(self.db, name, t, self.batch_size):
            rows = deliveries.waiting_set(self.db, job_id, name)
            members = [_Due(r["id"], job_id, name, Path(r["path"]), r["kind"], r["waiting_since"]) for r in rows]
            members.sort(key=lambda d: (send_rank(d.kind), d.id))
            if members:
                sets.append(members)
        return sets

    def _deliver_sets(self, name: str, destination: Destination) -> int:
        attempted = 0
        for members in self._due_sets(name):
            # A set larger than one batch goes in order, batch after batch; the SR sits in the last one.
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                attempted += len(batch)
                went_down, complete = self._deliver_batch(name, destination, batch)
                if went_down:
                    return attempted  # the rest waits for the probe that finds the destination back
                if not complete:
                    break  # an object of this set must be retried first: the later ones (the SR) wait
        return attempted

    def _deliver_batch(self, name: str, destination: Destination, rows: list[_Due]) -> tuple[bool, bool]:
        """Send one batch. Returns (the destination went down, every object of the batch was settled)."""
        bound = log.bind(destination=name)
        with self.db.transaction() as conn:
            # Re-read under the writer lock: another receiver's outbox (cluster mode) may have taken some.
            rows = [row for row in rows if deliveries.delivery_state(conn, row.id) in deliveries.WAITING_STATES]
            for row in rows:
                self._transition(conn, row.id, None, DeliveryState.SENDING, "")
                deliveries.count_attempt(conn, row.id)
        if not rows:
            return False, True
        try:
            report = destination.send([row.path for row in rows])
        except DeliveryError as exc:
            bound.warning("delivery_failed", files=len(rows), permanent=exc.permanent, reason=str(exc))
            if exc.permanent:
                self._finish_all(rows, permanent=True, reason=str(exc))
                return False, True
            self._destination_down(name, rows, str(exc))
            return True, False
        except Exception as exc:  # a transport bug must not kill the outbox thread; retry later
            bound.exception("delivery_crashed", files=len(rows))
            self._finish_all(rows, permanent=False, reason=f"{type(exc).__name__}: {exc}")
            return False, False
        settled = self._record(report, rows)
        bound.info("delivery_batch", sent=len(report.delivered), failed=len(report.failed))
        if report.delivered:
            self._audit_export(name, rows, len(report.delivered), len(rows) - len(report.delivered))
        return False, settled

    def _audit_export(self, name: str, rows: list[_Due], sent: int, failed: int) -> None:
        """One audit message per batch sent (a result set, unless it is larger than batch_size)."""
        if not self.audit.enabled:
            return
        study_uid = study_uid_of_job(self.db, rows[0].job_id)
        if study_uid is None:
            return
        self.audit.record(
            audit_messages.results_exported(
                self.audit.source, self.audit.ae_title, destination=name, study_uid=study_uid, sent=sent,
                failed=failed,
            )
        )  # fmt: skip

    def _record(self, report: DeliveryReport, rows: list[_Due]) -> bool:
        """Per-object outcomes into the index. True when nothing is left to retry (sent or dead)."""
        outcome_by_path: dict[Path, FileOutcome] = {o.path: o for o in report.outcomes}
        settled = True
        with self.db.transaction() as conn:
            for row in rows:
                outcome = outcome_by_path.get(row.path)
                if outcome is not None and outcome.delivered:
                    self._transition(conn, row.id, DeliveryState.SENDING, DeliveryState.SENT, outcome.detail)
                    deliveries.mark_sent_at(conn, row.id, now())
                else:
                    detail = outcome.detail if outcome else "no outcome reported by the destination; will retry"
                    permanent = bool(outcome.permanent) if outcome else False
                    settled = settled and permanent
                    self._fail(conn, row, permanent, detail)
        if report.delivered:
            self._plan_withdrawals = True
        return settled

    def _destination_down(self, name: str, rows: list[_Due], reason: str) -> None:
        t = now()
        before = self.health.get(name)
        health = self.health.mark_down(name, reason, t)
        if before.up:
            log.warning("destination_down", destination=name, reason=reason)
        with self.db.transaction() as conn:
            for row in rows:
                since = row.waiting_since if row.waiting_since is not None else t
                if gave_up(since, t, self.policy):
                    self._dead(conn, row.id, f"gave up after waiting {_duration(t - since)}: {reason}")
                    continue
                self._transition(conn, row.id, None, DeliveryState.RETRY, f"destination down, waiting for it: {reason}")
                deliveries.schedule_retry(conn, row.id, health.next_probe_at or t, reason, waiting_since=since)

    def _finish_all(self, rows: list[_Due], *, permanent: bool, reason: str) -> None:
        with self.db.transaction() as conn:
            for row in rows:
                self._fail(conn, row, permanent, reason)

    def _fail(self, conn: Connection, row: _Due, permanent: bool, reason: str) -> None:
        """One object failed while its destination answered: dead, or a retry of its own (capped backoff)."""
        t = now()
        if permanent:
            self._dead(conn, row.id, reason)
            return
        since = row.waiting_since if row.waiting_since is not None else t
        if gave_up(since, t, self.policy):
            self._dead(conn, row.id, f"gave up after {_duration(t - since)} of failures: {reason}")
            return
        attempts = deliveries.delivery_attempts(conn, row.id)
        delay = next_retry_delay(max(attempts, 1), self.policy, self.rng)
        self._transition(conn, row.id, None, DeliveryState.RETRY, f"retry in {delay:.1f} s: {reason}")
        deliveries.schedule_retry(conn, row.id, t + delay, reason, waiting_since=since)

    def _dead(self, conn: Connection, delivery_id: int, why: str) -> None:
        destination = deliveries.delivery_destination(conn, delivery_id)
        self._transition(conn, delivery_id, None, DeliveryState.DEAD, why)
        deliveries.set_last_error(conn, delivery_id, why)
        log.error("delivery_dead", delivery_id=delivery_id, destination=destination, reason=why)

    def _dead_letter_unconfigured(self, name: str) -> None:
        with self.db.transaction() as conn:
            for delivery_id in deliveries.waiting_delivery_ids(conn, name):
                self._dead(conn, delivery_id, f"destination {name!r} is not configured")

    @staticmethod
    def _transition(
        conn: Connection, delivery_id: int, from_state: str | None, to_state: DeliveryState, detail: str
    ) -> None:
        deliveries.record_transition(conn, delivery_id, from_state, to_state, detail)


def retry_delivery(db: Database, delivery_id: int) -> bool:
    """Operator action: a dead (or waiting) delivery is sent again now. False if there is no such row."""
    with db.transaction() as conn:
        state = deliveries.delivery_state(conn, delivery_id)
        if state is None or state not in (DeliveryState.DEAD, DeliveryState.RETRY):
            return False
        Outbox._transition(conn, delivery_id, state, DeliveryState.PENDING, "operator asked for a retry")
        deliveries.reset_for_operator_retry(conn, delivery_id, now())
        # The operator expects an attempt now, not at the next probe.
        probe_now(conn, deliveries.delivery_destination(conn, delivery_id), now())
    return True


def _clock(at: float) -> str:
    """HH:MM local time, as the worklist shows it."""
    return time.strftime("%H:%M", time.localtime(at))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
