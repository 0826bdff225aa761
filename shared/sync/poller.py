"""Change feeds: find records changed since a watermark, enqueue one job each, advance the watermark.

The CRM poll (opportunities flagged for sync) and the Partner Center reconciliation (referrals whose
webhooks may have been lost) both run on :class:`ChangeFeed`. It is safe against clock skew and equal
timestamps: every run re-reads an overlap window before the watermark and skips the (id, row version)
pairs it already enqueued. It is safe against a crash between enqueue and save: the next run enqueues
the same versions again, and the engine treats a repeated job as a no-op. A run that finds nothing
costs one query.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..domain.errors import PermanentError
from ..domain.opportunity import Opportunity
from ..domain.referral import Referral
from ..ports import Clock, Crm, Job, JobQueue, PartnerCenter
from .engine import KIND_CRM, KIND_REFERRAL

log = logging.getLogger(__name__)
POLL_STATE_KEY = "crm-poll"
RECONCILE_STATE_KEY = "reconcile"
# Table Storage strings hold 32K characters; each remembered version takes about 14 ("digest:age,").
# Past this many versions inside the overlap window, the oldest are forgotten and may be enqueued again,
# which the engine treats as a no-op.
MAX_REMEMBERED = 2200


class FeedState(Protocol):
    def get_state(self, key: str) -> dict[str, Any] | None: ...

    def set_state(self, key: str, values: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Change:
    record_id: str
    version: str  # changes with every write (etag), so two writes in one timestamp tick differ
    changed_at: datetime | None


@dataclass(frozen=True)
class PollResult:
    seen: int
    enqueued: int
    watermark: datetime | None


def _digest(change: Change) -> str:
    stamp = change.changed_at.isoformat() if change.changed_at else ""
    return hashlib.sha256(f"{change.record_id}|{change.version}|{stamp}".encode()).hexdigest()[:10]


def _load_versions(text: str | None, newest: datetime | None) -> dict[str, datetime]:
    """``"digest:age,..."`` where age is whole seconds before the watermark."""
    if not text or newest is None:
        return {}
    versions = {}
    for item in text.split(","):
        digest, _, age = item.partition(":")
        versions[digest] = newest - timedelta(seconds=int(age or 0))
    return versions


def _dump_versions(versions: dict[str, datetime], newest: datetime | None) -> str:
    if newest is None:
        return ""
    return ",".join(f"{d}:{max(0, int((newest - at).total_seconds()))}" for d, at in versions.items())


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
    ) -> None:
        self.state_key, self.job_kind, self.fetch = state_key, job_kind, fetch
        self.state, self.queue, self.clock = state, queue, clock
        self.overlap = timedelta(seconds=overlap_seconds)
        self.first_since = first_since

    def poll(self) -> PollResult:
        saved = self.state.get_state(self.state_key) or {}
        watermark = saved.get("Watermark") if isinstance(saved.get("Watermark"), datetime) else None
        remembered = _load_versions(saved.get("Versions"), watermark)
        since = watermark - self.overlap if watermark else self.first_since(self.clock.now())
        seen = enqueued = 0
        newest = watermark
        for change in self.fetch(since):
            seen += 1
            digest = _digest(change)
            if digest not in remembered:
                self.queue.enqueue(Job(self.job_kind, change.record_id, reason=self.state_key))
                enqueued += 1
            if change.changed_at is not None:
                remembered[digest] = change.changed_at
                newest = change.changed_at if newest is None or change.changed_at > newest else newest
        self.state.set_state(
            self.state_key,
            {
                "Watermark": newest,
                "Versions": _dump_versions(self._within_window(remembered, newest), newest),
                "LastRunAt": self.clock.now(),
                "LastSeen": seen,
                "LastEnqueued": enqueued,
            },
        )
        return PollResult(seen, enqueued, newest)

    def _within_window(self, remembered: dict[str, datetime], newest: datetime | None) -> dict[str, datetime]:
        """Only versions inside the overlap window can come back; older ones are forgotten."""
        if newest is None:
            return {}
        floor = newest - self.overlap
        kept = {k: v for k, v in remembered.items() if v >= floor}
        if len(kept) > MAX_REMEMBERED:
            newest_first = sorted(kept.items(), key=lambda item: item[1], reverse=True)
            kept = dict(newest_first[:MAX_REMEMBERED])
        return kept


def _opportunity_change(record: Opportunity) -> Change | None:
    if record.crm_id is None:
        return None
    return Change(record.crm_id, record.etag or "", record.modified_at)


def crm_poller(
    crm: Crm, state: FeedState, queue: JobQueue, clock: Clock, overlap_seconds: int = 300, page_size: int = 500
) -> ChangeFeed:
    def fetch(since: datetime | None) -> Iterable[Change]:
        for record in crm.list_flagged_changed_since(since, page_size):
            change = _opportunity_change(record)
            if change is not None:
                yield change

    return ChangeFeed(POLL_STATE_KEY, KIND_CRM, fetch, state, queue, clock, overlap_seconds)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def partner_center_reconciler(
    pc: PartnerCenter,
    state: FeedState,
    queue: JobQueue,
    clock: Clock,
    overlap_seconds: int = 300,
    first_lookback_hours: int = 24,
) -> ChangeFeed:
    """Referrals changed since the last run, to recover webhooks Partner Center gave up on."""

    def changed_since(since: datetime | None) -> list[Referral]:
        if since is None:
            return list(pc.list_referrals(None, orderby="updatedDateTime asc"))
        try:
            return list(
                pc.list_referrals(
                    f"updatedDateTime ge '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'", orderby="updatedDateTime asc"
                )
            )
        except PermanentError:
            # Filtering on updatedDateTime is documented only in older pages; a service that refuses it is
            # read newest first instead, up to the watermark.
            log.warning("Partner Center refused the updatedDateTime filter; reading newest first instead")
            recent = []
            for referral in pc.list_referrals(None, orderby="updatedDateTime desc"):
                changed = _parse_time(referral.updated_date_time)
                if changed is not None and changed < since:
                    break
                recent.append(referral)
            return recent[::-1]

    def fetch(since: datetime | None) -> Iterable[Change]:
        for referral in changed_since(since):
            if referral.id:
                yield Change(referral.id, referral.e_tag or "", _parse_time(referral.updated_date_time))

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


def backfill(crm: Crm, queue: JobQueue, progress: Any = None, page_size: int = 500) -> int:
    """Enqueue every flagged opportunity once (the initial sync)."""
    count = 0
    for record in crm.list_flagged_changed_since(None, page_size):
        if record.crm_id:
            queue.enqueue(Job(KIND_CRM, record.crm_id, reason="backfill"))
            count += 1
            if progress is not None and count % 100 == 0:
                progress(count)
    if progress is not None:
        progress(count)
    return count
