"""Runs queued jobs through the engine, and pauses all CRM work while the CRM's API quota is used up.

A quota stop is not a failure of the record at hand: retrying every job until each lands in the poison
queue would only burn what is left of the allocation. Instead the first job to hit it records a pause
(visible in /api/status and the audit trail), goes back on the queue invisible until the pause ends,
and every job or poll that starts during the pause does the same without calling the CRM. Nothing is
lost; work resumes by itself.

Throttling is not a failure either: a job whose service answered 429 (or 503 with ``Retry-After``)
beyond what the HTTP client waits inline goes back on the queue, invisible for the delay the service
asked for, and its attempt does not count towards the poison queue. A job whose worker lost its pair
lease goes back the same way, like one whose pair is busy.

The same state row also remembers the last refused credential (until a job succeeds again), so an
expired secret shows up in /api/status instead of only as failed invocations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ..domain.credential_causes import CAUSES, cause_of, inactivity_warning
from ..domain.errors import AuthenticationError, LeaseLost, PairBusy, QuotaExceeded, SetupIncomplete, TransientError
from ..ports import (
    CRM_TO_PC,
    AuditEntry,
    Clock,
    CredentialFailure,
    Health,
    Job,
    JobQueue,
    Pause,
    SyncStore,
)
from .deferral import throttle_delay
from .engine import SyncEngine
from .poller import ChangeFeed, PollResult
from .tally import Tally

log = logging.getLogger(__name__)
# A Storage queue message can stay invisible for at most 7 days; a longer wait is taken in 7-day steps.
MAX_DEFER_SECONDS = 7 * 24 * 3600
STORED_TEXT_MAX_CHARS = 1000


class JobRunner:
    def __init__(
        self,
        engine: SyncEngine,
        store: SyncStore,
        queue: JobQueue,
        clock: Clock,
        pause_seconds: int = 900,
        busy_retry_seconds: int = 5,
        throttle_retry_seconds: int = 60,
        health_cache_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        tally: Tally | None = None,
    ) -> None:
        self.engine, self.store, self.queue, self.clock = engine, store, queue, clock
        self.pause_seconds = pause_seconds
        self.busy_retry_seconds = busy_retry_seconds
        self.throttle_retry_seconds = throttle_retry_seconds  # a 429 that names no delay
        # Every job checks for a pause: read the shared row at most this often, not once per job. A pause
        # another worker records is seen that much later; its jobs meet the quota error meanwhile and defer.
        self.health_cache_seconds = health_cache_seconds
        self._monotonic = monotonic
        self._cached: tuple[float, Health] | None = None
        self._refreshing = threading.Lock()
        self.tally = tally  # counts for /api/status, kept as jobs finish

    def health(self) -> Health:
        return self.store.get_health()

    def current_pause(self, health: Health | None = None) -> Pause | None:
        pause = (self.health() if health is None else health).pause
        return pause if pause is not None and pause.until > self.clock.now() else None

    def _job_health(self) -> Health:
        cached = self._cached
        if cached is not None and self._monotonic() - cached[0] < self.health_cache_seconds:
            return cached[1]
        # One thread reads the row again; jobs starting meanwhile (the host runs a batch at once) go on with the
        # value it replaces, instead of each reading it. With nothing cached (a pause or refusal just recorded
        # here), they wait for the read.
        if not self._refreshing.acquire(blocking=cached is None):
            assert cached is not None
            return cached[1]
        try:
            cached = self._cached
            if cached is None or self._monotonic() - cached[0] >= self.health_cache_seconds:
                cached = (self._monotonic(), self.health())
                self._cached = cached
            return cached[1]
        finally:
            self._refreshing.release()

    def run(self, job: Job, final_attempt: bool = False) -> str:
        try:
            return self._run(job, final_attempt)
        except Exception as exc:
            if self.tally is not None:
                self.tally.job_raised(job, exc, final_attempt)
            raise

    def _run(self, job: Job, final_attempt: bool) -> str:
        health = self._job_health()
        pause = self.current_pause(health)
        if pause is not None:
            self._defer(job, self._seconds_until(pause.until))
            return "deferred"
        try:
            outcome = self.engine.handle(job, final_attempt=final_attempt)
            action = outcome.action
        except AuthenticationError as exc:
            cause = cause_of(exc.code, str(exc))
            log.error("credentials refused by %s: %s%s", exc.service, exc, f"; {cause.action}" if cause else "")
            failure = CredentialFailure(
                exc.service, str(exc)[:STORED_TEXT_MAX_CHARS], self.clock.now(), cause.name if cause else ""
            )
            self.store.save_credential_failure(failure)
            self._cached = None
            raise
        except PairBusy:
            # Usually the webhook for a referral we are creating right now, or a pair another job changed while this
            # one read it: try again shortly, without counting it as a failed attempt towards the poison queue.
            log.info("%s %s is busy; retrying in %ss", job.kind, job.record_id, self.busy_retry_seconds)
            self._defer(job, self.busy_retry_seconds)
            return "deferred"
        except LeaseLost as exc:
            # Another worker may be writing the pair now; it finishes the work, or this job does once it is free.
            log.warning("%s %s: %s; retrying in %ss", job.kind, job.record_id, exc, self.busy_retry_seconds)
            self._defer(job, self.busy_retry_seconds)
            return "deferred"
        except QuotaExceeded as exc:
            pause = self._pause(exc, job)
            self._defer(job, self._seconds_until(pause.until))
            return "deferred"
        except SetupIncomplete as exc:
            # No attempt can succeed before setup-crm --apply runs: the job waits for it instead of counting
            # attempts towards the poison queue; /api/status names what is missing.
            log.error("%s %s waits %ss: %s", job.kind, job.record_id, self.pause_seconds, exc)
            self._defer(job, self.pause_seconds)
            return "deferred"
        except TransientError as exc:
            delay = throttle_delay(exc, self.throttle_retry_seconds)
            if delay is None:
                raise  # counts as a failed attempt; the host retries it, then poisons it
            seconds = min(MAX_DEFER_SECONDS, max(1, math.ceil(delay)))
            log.warning("%s %s throttled (%s); retrying in %ss", job.kind, job.record_id, exc, seconds)
            self._defer(job, seconds)
            return "deferred"
        if health.credential_failure is not None:
            self.store.clear_credential_failure(self.clock.now())
            self._cached = None
        if self.tally is not None:
            self.tally.job_finished(outcome)
        return action

    def poll_crm(self, poller: ChangeFeed) -> PollResult | None:
        """The CRM poll, unless work is paused (then it costs no CRM call at all).

        A throttled poll keeps what it enqueued and reports it (the feed logs the throttle and saves its
        progress); the next scheduled run carries on from there."""
        pause = self.current_pause()
        if pause is not None:
            log.warning("CRM poll skipped: paused until %s (%s)", pause.until.isoformat(), pause.reason)
            return None
        try:
            return poller.poll()
        except QuotaExceeded as exc:
            self._pause(exc, None)
            return None

    def _pause(self, exc: QuotaExceeded, job: Job | None) -> Pause:
        now = self.clock.now()
        seconds = exc.retry_after if exc.retry_after is not None else self.pause_seconds
        pause = Pause(now + timedelta(seconds=seconds), str(exc)[:STORED_TEXT_MAX_CHARS], now)
        self.store.save_pause(pause)
        self._cached = None
        message = f"CRM API quota used up; all CRM work paused until {pause.until.isoformat()}: {exc}"
        log.warning(message)
        self.store.append_audit(
            AuditEntry(
                record_key=job.record_id if job else "crm",
                action="paused",
                direction=CRM_TO_PC if job is None else job.direction,
                message=message,
                at=now,
            )
        )
        return pause

    def _seconds_until(self, until: datetime) -> int:
        return max(1, int((until - self.clock.now()).total_seconds()) + 1)

    def _defer(self, job: Job, delay_seconds: int) -> None:
        # A new message: the host deletes the one being handled (this invocation succeeds), and the new one
        # starts with a fresh dequeue count. Should this send fail, the invocation fails and the host retries.
        delay = min(MAX_DEFER_SECONDS, delay_seconds)
        self.queue.enqueue(replace(job, reason=job.reason or "deferred", enqueued_at=""), delay_seconds=delay)


def health_status(runner: JobRunner) -> dict[str, Any]:
    """The pause (if any), the last refused credential (until a job succeeds again) with its cause and what to do,
    and a warning when the Partner Center refresh token nears its inactivity expiry."""
    health = runner.health()
    pause = runner.current_pause(health)
    failure = None
    if health.credential_failure is not None:
        refused = health.credential_failure
        cause = CAUSES.get(refused.cause)
        failure = {
            "service": refused.service,
            "message": refused.message,
            "at": refused.at.isoformat() if refused.at is not None else None,
            "cause": cause.name if cause else None,
            "summary": cause.summary if cause else None,
            "whatToDo": cause.action if cause else None,
        }
    return {
        "paused": {"until": pause.until.isoformat(), "reason": pause.reason} if pause else None,
        "credentialFailure": failure,
        "refreshToken": {
            "lastUsedAt": health.token_redeemed_at.isoformat() if health.token_redeemed_at else None,
            "warning": inactivity_warning(health.token_redeemed_at, runner.clock.now()),
        },
    }
