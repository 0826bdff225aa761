"""The CRM poll through change tracking (Dataverse delta links), with the poll by modification time as fallback.

Each run reads the saved link: an unchanged organisation costs one request, whatever its size. Every flagged
opportunity added or changed becomes a job carrying its version (so the echo of our own write ends on the link
it already matches, see :mod:`shared.sync.echoes`), and every deleted opportunity that has a pair becomes a job
too, so the pair is detached on the next poll. The link is saved after every page, the next page's while paging
and the new delta link at the end: a crash or a throttle resumes where the run stopped.

A token the CRM refuses (expired: 7 days without a poll by default, or unknown) starts a full read again: every
flagged opportunity is enqueued with its version, and those already synchronised end as echoes after one Table
read each. A table without change tracking falls back to the modification-time poll
(:func:`shared.sync.poller.crm_poller`), which cannot see deletions; the fallback is remembered in the state row
and change tracking is tried again once a day, not on every poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from ..domain.deletions import LINK_DETACHED
from ..domain.errors import ChangeTrackingUnavailable, DeltaLinkRefused
from ..ports import KIND_CRM, ChangeTracking, Clock, DeltaProgress, Job, JobQueue, Link
from .poller import INTERRUPTION_MAX_CHARS, POLL_STATE_KEY, PollResult, stopped_run

log = logging.getLogger(__name__)
RETRY_CHANGE_TRACKING = timedelta(days=1)
DELETED_REASON = f"{POLL_STATE_KEY}: deleted"


class DeltaState(Protocol):
    def get_delta(self, feed: str) -> DeltaProgress | None: ...

    def save_delta(self, feed: str, progress: DeltaProgress) -> None: ...


class Poll(Protocol):
    def poll(self) -> PollResult: ...


@dataclass
class _Run:
    started: datetime
    link: str
    seen: int = 0
    enqueued: int = 0
    newest: datetime | None = None


class DeltaFeed:
    """Polls like :class:`~shared.sync.poller.ChangeFeed`; ``fallback`` is the poll by modification time and
    ``link_state`` tells whether a deleted opportunity has a pair (one Table read, from the CRM-id index)."""

    def __init__(
        self,
        source: ChangeTracking,
        state: DeltaState,
        queue: JobQueue,
        clock: Clock,
        fallback: Poll,
        link_state: Callable[[str], Link | None],
        page_size: int = 5000,
        retry_after: timedelta = RETRY_CHANGE_TRACKING,
        state_key: str = POLL_STATE_KEY,
    ) -> None:
        self.source, self.state, self.queue, self.clock = source, state, queue, clock
        self.fallback, self.link_state = fallback, link_state
        self.page_size, self.retry_after, self.state_key = page_size, retry_after, state_key
        # Known once read: while it lasts, a run goes straight to the fallback without reading the row again.
        self._fallback_until: datetime | None = None

    def poll(self) -> PollResult:
        now = self.clock.now()
        if self._fallback_until is not None and now < self._fallback_until:
            return self.fallback.poll()
        saved = self.state.get_delta(self.state_key) or DeltaProgress()
        if saved.fallback_until is not None and now < saved.fallback_until:
            self._fallback_until = saved.fallback_until
            return self.fallback.poll()
        run = _Run(now, saved.link)
        try:
            self._read(run)
        except ChangeTrackingUnavailable as exc:
            return self._fall_back(run, str(exc))
        except Exception as exc:
            return stopped_run(
                self.state_key,
                run,
                exc,
                lambda reason, failing: self._save(run, interruption=reason, failing=failing),
                "the next run carries on from the saved link",
            )
        self._fallback_until = None
        return PollResult(run.seen, run.enqueued, run.newest)

    def _read(self, run: _Run) -> None:
        try:
            self._pages(run)
        except DeltaLinkRefused as exc:
            if not run.link:
                raise
            log.warning(
                "%s: the delta link was refused (%s); reading every flagged opportunity again", self.state_key, exc
            )
            run.link = ""
            self._pages(run)

    def _pages(self, run: _Run) -> None:
        for page in self.source.delta_pages(run.link or None, self.page_size):
            for change in page.changed:
                run.seen += 1
                hint = change.referral_hint or ""
                self.queue.enqueue(
                    Job(KIND_CRM, change.record_id, self.state_key, version=change.version, referral_hint=hint)
                )
                run.enqueued += 1
                if change.changed_at is not None and (run.newest is None or change.changed_at > run.newest):
                    run.newest = change.changed_at
            for crm_id in page.deleted:
                run.seen += 1
                link = self.link_state(crm_id)
                if link is not None and link.last_status != LINK_DETACHED:
                    self.queue.enqueue(Job(KIND_CRM, crm_id, reason=DELETED_REASON))
                    run.enqueued += 1
            run.link = page.next_link
            self._save(run)

    def _fall_back(self, run: _Run, reason: str) -> PollResult:
        until = run.started + self.retry_after
        log.warning(
            "%s: change tracking is not available (%s); polling by modification time until %s",
            self.state_key,
            reason,
            until.isoformat(),
        )
        progress = replace(self._progress(run), link="", fallback_until=until, fallback_reason=reason)
        self.state.save_delta(self.state_key, progress)
        self._fallback_until = until
        return self.fallback.poll()

    def _progress(self, run: _Run, interruption: str = "") -> DeltaProgress:
        return DeltaProgress(
            link=run.link,
            last_run_at=run.started,
            last_seen=run.seen,
            last_enqueued=run.enqueued,
            last_interruption=interruption[:INTERRUPTION_MAX_CHARS],
        )

    def _save(self, run: _Run, interruption: str = "", failing: bool = False) -> None:
        if not failing:
            self.state.save_delta(self.state_key, self._progress(run, interruption))
            return
        try:
            self.state.save_delta(self.state_key, self._progress(run, interruption))
        except Exception:  # the error that stopped the run is the one to report
            log.exception("%s: could not save the progress of a failed run", self.state_key)
