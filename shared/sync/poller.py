"""Change feeds: find records changed since a watermark, enqueue one job each, advance the watermark.

The CRM poll (opportunities flagged for sync) and the Partner Center reconciliation (referrals whose
webhooks may have been lost) both run on :class:`ChangeFeed`. It is safe against clock skew and equal
timestamps: every run re-reads an overlap window before the watermark and skips the (id, row version)
pairs it already enqueued. It is safe against a crash between enqueue and save: the next run enqueues
the same versions again, and the engine treats a repeated job as a no-op. A run that finds nothing
costs one query.

Both feeds read oldest change first, so a run keeps its progress: the watermark is saved every
``checkpoint_every`` changes and when the run stops early (a throttle, an outage), only over changes
already enqueued. A throttled run is not an error: it returns what it did, marked ``throttled``, and the
next run carries on. The store keeps the remembered versions within a byte budget, forgetting the oldest
first (:mod:`shared.store.state_rows`); a version forgotten and read again is enqueued again: a no-op.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from ..ports import (
    KIND_CRM,
    KIND_REFERRAL,
    VERSION_DIGEST_BYTES,
    Change,
    Clock,
    Crm,
    FeedWatermark,
    Job,
    JobQueue,
    PartnerCenter,
)
from .deferral import throttle_delay

log = logging.getLogger(__name__)
POLL_STATE_KEY = "crm-poll"
RECONCILE_STATE_KEY = "reconcile"
INTERRUPTION_MAX_CHARS = 500


class FeedState(Protocol):
    def get_watermark(self, feed: str) -> FeedWatermark | None: ...

    def save_watermark(self, feed: str, mark: FeedWatermark) -> None: ...


@dataclass(frozen=True)
class PollResult:
    seen: int
    enqueued: int
    watermark: datetime | None
    throttled: str = ""  # why the run stopped early ("" when it read everything); the next run carries on
    retry_after: float | None = None


def _digest(change: Change) -> str:
    """10 hex digits (40 bits) of the change's identity: a false "already enqueued" is a one in 10^8 event
    even with ten thousand versions remembered."""
    stamp = change.changed_at.isoformat() if change.changed_at else ""
    return hashlib.sha256(f"{change.record_id}|{change.version}|{stamp}".encode()).hexdigest()[
        : VERSION_DIGEST_BYTES * 2
    ]


def _whole_seconds(moment: datetime) -> datetime:
    """Feeds filter to whole seconds (``modifiedon``, ``SystemModstamp`` and ``updatedDateTime`` filters are
    sent that way), so the window starts on one: a version between that second and the exact floor would
    otherwise be read again, forgotten and enqueued on every run."""
    return moment.replace(microsecond=0)


class RunSoFar(Protocol):
    seen: int
    enqueued: int
    newest: datetime | None


def stopped_run(feed: str, run: RunSoFar, exc: Exception, save: Callable[[str, bool], None], resume: str) -> PollResult:
    """A poll stopped by ``exc`` saves what it did with the reason (``save(reason, failing)``). Throttling then
    ends the run with what it did, for the next scheduled one to carry on (``resume`` says from where); anything
    else is raised again: the run failed."""
    delay = throttle_delay(exc, 0.0)
    save(str(exc), delay is None)
    if delay is None:
        raise exc
    log.warning("%s throttled after %s change(s), %s enqueued (%s); %s", feed, run.seen, run.enqueued, exc, resume)
    return PollResult(run.seen, run.enqueued, run.newest, str(exc), getattr(exc, "retry_after", None))


class ChangeFeed:
    def __init__(
        self,
        state_key: str,
        job_kind: str,
        fetch: Callable[[datetime | None], Iterable[Change]],
        state: FeedState,
        queue: JobQueue,
        clock: Clock,
        overlap_seconds: int,
        first_since: Callable[[datetime], datetime | None] = lambda now: None,
        checkpoint_every: int = 500,
    ) -> None:
        self.state_key, self.job_kind, self.fetch = state_key, job_kind, fetch
        self.state, self.queue, self.clock = state, queue, clock
        self.overlap = timedelta(seconds=overlap_seconds)
        self.first_since = first_since
        self.checkpoint_every = max(1, checkpoint_every)

    def poll(self) -> PollResult:
        saved = self.state.get_watermark(self.state_key) or FeedWatermark()
        watermark = saved.watermark
        run = _Run(watermark, dict(saved.versions), started=self.clock.now())
        since = self._since(saved) if watermark else self.first_since(run.started)
        try:
            for change in self.fetch(since):
                self._take(change, run)
                if run.seen % self.checkpoint_every == 0:
                    self._save(run)
        except Exception as exc:
            upto = run.newest.isoformat() if run.newest else "the start"
            return stopped_run(
                self.state_key,
                run,
                exc,
                lambda reason, failing: self._save(run, interruption=reason, failing=failing),
                f"progress saved up to {upto}, the next run carries on",
            )
        self._save(run)
        return PollResult(run.seen, run.enqueued, run.newest)

    def _since(self, saved: FeedWatermark) -> datetime:
        """Where this run reads from. A change can show up late by at most the overlap (clock skew, a
        transaction committing after its timestamp), so whatever the last run could not yet see changed after
        its start minus the overlap, or after the watermark. Anchored only to the watermark, a quiet org would
        have the same rows read again on every run until a newer change came."""
        assert saved.watermark is not None
        floor = saved.watermark - self.overlap
        if saved.last_run_at is not None:
            floor = max(floor, min(saved.watermark, saved.last_run_at - self.overlap))
        return _whole_seconds(floor)

    def _take(self, change: Change, run: _Run) -> None:
        run.seen += 1
        digest = _digest(change)
        if digest not in run.remembered:
            hint = change.referral_hint or ""
            self.queue.enqueue(
                Job(self.job_kind, change.record_id, self.state_key, version=change.version, referral_hint=hint)
            )
            run.enqueued += 1
        if change.changed_at is not None:
            # The watermark moves only over what is enqueued: changes come oldest first, so every change
            # not read yet is at least as new as this one, and the next run re-reads from here on.
            run.remembered[digest] = change.changed_at
            if run.newest is None or change.changed_at > run.newest:
                run.newest = change.changed_at

    def _save(self, run: _Run, interruption: str = "", failing: bool = False) -> None:
        mark = FeedWatermark(
            watermark=run.newest,
            versions=self._within_window(run.remembered, run.newest, run.started),
            last_run_at=run.started,
            last_seen=run.seen,
            last_enqueued=run.enqueued,
            last_interruption=interruption[:INTERRUPTION_MAX_CHARS],
        )
        if not failing:
            self.state.save_watermark(self.state_key, mark)
            return
        try:
            self.state.save_watermark(self.state_key, mark)
        except Exception:  # the error that stopped the run is the one to report
            log.exception("%s: could not save the progress of a failed run", self.state_key)

    def _within_window(
        self, remembered: dict[str, datetime], newest: datetime | None, started: datetime
    ) -> dict[str, datetime]:
        """Only versions the next run can read again are kept; older ones are forgotten."""
        if newest is None:
            return {}
        floor = self._since(FeedWatermark(watermark=newest, last_run_at=started))
        return {k: v for k, v in remembered.items() if v >= floor}


@dataclass
class _Run:
    """What one poll has done so far."""

    newest: datetime | None
    remembered: dict[str, datetime]
    started: datetime
    seen: int = 0
    enqueued: int = 0


def crm_poller(crm: Crm, state: FeedState, queue: JobQueue, clock: Clock, overlap_seconds: int) -> ChangeFeed:
    """Flagged opportunities, read a page of the adapter's default size at a time."""
    return ChangeFeed(POLL_STATE_KEY, KIND_CRM, crm.changes_since, state, queue, clock, overlap_seconds)


def partner_center_reconciler(
    pc: PartnerCenter,
    state: FeedState,
    queue: JobQueue,
    clock: Clock,
    overlap_seconds: int,
    first_lookback_hours: int,
) -> ChangeFeed:
    """Referrals changed since the last run, to recover webhooks Partner Center gave up on."""

    def fetch(since: datetime | None) -> Iterable[Change]:
        for referral in pc.changed_since(since):
            if referral.id:
                yield Change(referral.id, referral.e_tag or "", referral.updated_at())

    return ChangeFeed(
        RECONCILE_STATE_KEY,
        KIND_REFERRAL,
        fetch,
        state,
        queue,
        clock,
        overlap_seconds,
        first_since=lambda now: now - timedelta(hours=first_lookback_hours),
    )
