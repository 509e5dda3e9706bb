"""The demo's verdict on a study's jobs and deliveries (demo.site.judge_progress).

CI once saw `ainode demo` wait out its whole timeout with results already in Orthanc: on a busy
machine the PACS paused mid-send, the geometry said "complete", the rest of the series re-opened it,
and the first job stayed 'superseded' — which the old check read as "not done yet" forever.
"""

from __future__ import annotations

from typing import Any

import pytest

from demo.site import judge_progress

pytestmark = pytest.mark.unit


def job(job_id: int, state: str, reason: str | None = None) -> dict[str, Any]:
    return {"id": job_id, "state": state, "reason": reason}


def delivery(job_id: int, state: str, last_error: str | None = None) -> dict[str, Any]:
    return {"job_id": job_id, "state": state, "last_error": last_error}


def test_nothing_yet_keeps_waiting() -> None:
    assert judge_progress([], []) is None
    assert judge_progress([job(1, "queued")], []) is None
    assert judge_progress([job(1, "done")], [delivery(1, "sent"), delivery(1, "pending")]) is None


def test_all_sent_is_done() -> None:
    assert judge_progress([job(1, "done")], [delivery(1, "sent"), delivery(1, "sent")]) == ("sent", "")


def test_a_superseded_run_does_not_keep_the_demo_waiting() -> None:
    jobs = [job(1, "superseded"), job(2, "done")]
    # The superseded run's own deliveries may still be pending: they are not what the demo waits for.
    deliveries = [delivery(1, "pending"), delivery(2, "sent"), delivery(2, "sent")]
    assert judge_progress(jobs, deliveries) == ("sent", "")


def test_the_current_run_still_running_keeps_waiting() -> None:
    assert judge_progress([job(1, "superseded"), job(2, "running")], [delivery(1, "sent")]) is None


def test_failures_of_the_current_run_end_the_wait_with_the_reason() -> None:
    assert judge_progress([job(1, "failed", "pipeline crashed: boom")], []) == ("failed", "pipeline crashed: boom")
    verdict = judge_progress([job(1, "done")], [delivery(1, "dead", "association rejected")])
    assert verdict == ("failed", "association rejected")


def test_a_dead_delivery_of_a_superseded_run_is_not_the_demo_failing() -> None:
    jobs = [job(1, "superseded"), job(2, "done")]
    assert judge_progress(jobs, [delivery(1, "dead", "old"), delivery(2, "sent")]) == ("sent", "")


def test_done_without_results_says_why() -> None:
    verdict = judge_progress([job(1, "done", "not applicable: localizer")], [])
    assert verdict == ("no results to send", "not applicable: localizer")
