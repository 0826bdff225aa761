"""The CRM poll: find opportunities flagged for sync that changed since the watermark, enqueue one job
each, then advance the watermark.

Safe against clock skew and equal timestamps: every poll re-reads an overlap window before the
watermark and skips the (id, change time) versions it already enqueued. Safe against a crash between
enqueue and save: the next poll enqueues the same versions again, and the engine treats a repeated job
as a no-op. A poll that finds nothing costs one query.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..domain.opportunity import Opportunity
from ..ports import Clock, Crm, Job, JobQueue
from .engine import KIND_CRM

POLL_STATE_KEY = "crm-poll"
# Table Storage strings hold 32K characters; each remembered version takes about 14 ("digest:age,").
# Past this many versions inside the overlap window, the oldest are forgotten and may be enqueued again,
# which the engine treats as a no-op.
MAX_REMEMBERED = 2200


class PollState(Protocol):
    def get_state(self, key: str) -> dict[str, Any] | None: ...

    def set_state(self, key: str, values: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class PollResult:
    seen: int
    enqueued: int
    watermark: datetime | None


def _version(record: Opportunity) -> str:
    # The row version (etag) changes on every write, even two writes within one timestamp tick.
    text = f"{record.crm_id}|{record.etag or ''}|{record.modified_at.isoformat() if record.modified_at else ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


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


class CrmPoller:
    def __init__(
        self,
        crm: Crm,
        state: PollState,
        queue: JobQueue,
        clock: Clock,
        overlap_seconds: int = 300,
        page_size: int = 500,
    ) -> None:
        self.crm, self.state, self.queue, self.clock = crm, state, queue, clock
        self.overlap = timedelta(seconds=overlap_seconds)
        self.page_size = page_size

    def poll(self) -> PollResult:
        saved = self.state.get_state(POLL_STATE_KEY) or {}
        watermark = saved.get("Watermark") if isinstance(saved.get("Watermark"), datetime) else None
        remembered = _load_versions(saved.get("Versions"), watermark)
        since = watermark - self.overlap if watermark else None
        seen = enqueued = 0
        newest = watermark
        for record in self.crm.list_flagged_changed_since(since, self.page_size):
            seen += 1
            if record.crm_id is None:
                continue
            version = _version(record)
            if version not in remembered:
                self.queue.enqueue(Job(KIND_CRM, record.crm_id, reason="crm-poll"))
                enqueued += 1
            if record.modified_at is not None:
                remembered[version] = record.modified_at
                newest = record.modified_at if newest is None or record.modified_at > newest else newest
        self.state.set_state(
            POLL_STATE_KEY,
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
