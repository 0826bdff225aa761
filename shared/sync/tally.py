"""Counts kept as jobs finish, for /api/status and the operator page, without reading every link.

Each worker process keeps its counts, its last failures and the time of the last webhook it received in
memory, and writes them to a row of its own at most once per ``flush_seconds`` (after a job or a webhook),
so a job or a webhook costs no Table operation of its own. The first write of
each hour also folds the rows of hours that are over into the base row. What a process has not written yet
is lost if it is killed; status adds the rows and what this process holds in memory.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from ..domain.deletions import LINK_DETACHED
from ..domain.tallies import (
    REASON_MAX_CHARS,
    RECENT_FAILURES,
    FailureNote,
    Totals,
    hour_key,
    latest,
    link_moves,
    newest_failures,
)
from ..ports import CRM_TO_PC, Clock, Job, job_crm_kind
from .deferral import is_deferred
from .recording import Outcome

log = logging.getLogger(__name__)

SYNCED = frozenset({"created", "updated", "unchanged", LINK_DETACHED})
# Rows of an hour are folded once the next hour is over too, so that a worker whose clock runs a little
# behind has written its last row of that hour before it is folded.
FOLD_AFTER = timedelta(hours=2)


class CounterStore(Protocol):
    def write(self, hour: str, instance: str, totals: Totals) -> None: ...

    def read(self) -> tuple[Totals | None, Totals]: ...

    def create_base(self, totals: Totals) -> bool: ...

    def fold(self, through: str) -> int: ...


@dataclass
class _Hour:
    key: str
    totals: Totals = field(default_factory=Totals)  # what this process has written to its row of that hour


class Tally:
    def __init__(
        self,
        rows: Callable[[], CounterStore],
        clock: Clock,
        count_links: Callable[[], Counter[str]],
        flush_seconds: float = 60.0,
        keep_failures: int = RECENT_FAILURES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rows, self.clock, self._count_links = rows, clock, count_links
        self.flush_seconds, self.keep = flush_seconds, keep_failures
        self._monotonic = monotonic
        self.instance = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        # One write at a time: two at once would each start the hour's row from what the other has not yet written.
        self._writing = threading.Lock()
        self._pending = Totals()  # counted since the last write
        self._failures: list[FailureNote] = []  # this process's newest, kept across hours
        self._hour: _Hour | None = None
        # Link changes saved before this process first saw the base row, with when: see _ensure_base.
        self._early_moves: list[tuple[datetime, Counter[str]]] | None = []
        self._last_flush = monotonic()

    # -- what happened ------------------------------------------------------------------------------------
    def job_finished(self, outcome: Outcome) -> None:
        change = Counter({f"jobs.{outcome.action}": 1, f"{outcome.direction}.{outcome.action}": 1})
        note = None
        if outcome.action == "failed":
            note = self._note(
                "failed", outcome.message, outcome.direction, outcome.crm_id, outcome.referral_id, outcome.crm_kind
            )
        synced = self.clock.now() if outcome.action in SYNCED else None
        self._add(change, note, synced_at=synced)

    def job_raised(self, job: Job, exc: BaseException, final_attempt: bool) -> None:
        """A failed attempt; on the last one the host moves the job to the poison queue."""
        change = Counter({"attempts.failed": 1})
        note = None
        if final_attempt and not is_deferred(exc):
            change["poisoned"] += 1
            crm = job.direction == CRM_TO_PC  # the job names a CRM record, an opportunity or a lead
            reason = f"{type(exc).__name__}: {exc}"
            note = self._note(
                "poisoned",
                reason,
                job.direction,
                job.record_id if crm else None,
                None if crm else job.record_id,
                job_crm_kind(job.kind),
            )
        self._add(change, note)

    def link_saved(self, previous: str | None, current: str | None, created: bool) -> None:
        change = link_moves(previous, current, created)
        if change:
            with self._lock:
                self._pending.counts.update(change)
                if self._early_moves is not None:
                    self._early_moves.append((self.clock.now(), change))

    def webhook_received(self) -> None:
        now = self.clock.now()
        with self._lock:
            self._pending.last_webhook_at = latest(self._pending.last_webhook_at, now)
        self.maybe_flush()

    def _note(
        self,
        kind: str,
        reason: str,
        direction: str,
        crm_id: str | None,
        referral_id: str | None,
        crm_kind: str | None = None,
    ) -> FailureNote:
        return FailureNote(self.clock.now(), kind, reason[:REASON_MAX_CHARS], direction, crm_id, referral_id, crm_kind)

    def _add(self, change: Counter[str], note: FailureNote | None, synced_at: datetime | None = None) -> None:
        with self._lock:
            self._pending.counts.update(change)
            if note is not None:
                self._failures = newest_failures([note, *self._failures], self.keep)
            self._pending.last_sync_at = latest(self._pending.last_sync_at, synced_at)
        self.maybe_flush()

    # -- writing ------------------------------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if self._monotonic() - self._last_flush >= self.flush_seconds:
            self.flush(wait=False)

    def close(self) -> None:
        """Write what is still unwritten (the container is being let go)."""
        with self._lock:
            p = self._pending
            unwritten = bool(p.counts or p.last_webhook_at or p.last_sync_at)
        if unwritten:
            self.flush()

    def flush(self, wait: bool = True) -> None:
        """Write what this process counted to its row of the current hour. A failed write keeps it for the
        next one: counting must never fail a job. ``wait=False``: skip when another thread is writing."""
        if not self._writing.acquire(blocking=wait):
            return
        try:
            self._flush()
        finally:
            self._writing.release()

    def _flush(self) -> None:
        with self._lock:
            self._last_flush = self._monotonic()
            now = self.clock.now()
            key = hour_key(now)
            new_hour = self._hour is None or self._hour.key != key
        try:
            rows = self._rows()
            if new_hour:
                self._ensure_base(rows)
                rows.fold(hour_key(now - FOLD_AFTER))
        except Exception as exc:  # Table Storage down must not fail the job that counted
            log.warning("could not write the status counters (kept for the next write): %s", exc)
            return
        with self._lock:
            hour = _Hour(key) if new_hour or self._hour is None else self._hour
            written = hour.totals.plus(self._pending, self.keep)
            written.failures = list(self._failures)
            pending, self._pending = self._pending, Totals()
        try:
            rows.write(key, self.instance, written)
        except Exception as exc:
            log.warning("could not write the status counters (kept for the next write): %s", exc)
            with self._lock:
                self._pending = pending.plus(self._pending, self.keep)
            return
        with self._lock:
            hour.totals = written
            self._hour = hour

    def _ensure_base(self, rows: CounterStore) -> None:
        """Before the first base row, links are counted once by a scan; the link changes already in rows and in
        this process's memory are taken off it, since they are counted from those. When another process took
        the scan, the changes this one saved before it are in the scan and are dropped here. Exact but for a
        link saved while the scan runs."""
        base, recent = rows.read()
        if base is None:
            seeded_at = self.clock.now()
            scanned = self._count_links()
            with self._lock:
                held = self._pending.link_counts()
            seed = Counter(scanned)
            seed.subtract(recent.link_counts())
            seed.subtract(held)
            if rows.create_base(Totals(seed, seeded_at=seeded_at)):
                with self._lock:
                    self._early_moves = None
                return
            base, _ = rows.read()
        self._drop_moves_before(base.seeded_at if base is not None else None)

    def _drop_moves_before(self, seeded_at: datetime | None) -> None:
        with self._lock:
            early, self._early_moves = self._early_moves, None
            for at, change in early or []:
                if seeded_at is not None and at < seeded_at:
                    self._pending.counts.subtract(change)

    # -- reading ------------------------------------------------------------------------------------------
    def totals(self) -> Totals:
        """Every process's written totals and what this one holds unwritten."""
        rows = self._rows()
        base, recent = rows.read()
        if base is None or self._early_moves is not None:
            self._ensure_base(rows)
            base, recent = rows.read()
        with self._lock:
            held = Totals(Counter(self._pending.counts), list(self._failures))
            held.last_webhook_at, held.last_sync_at = self._pending.last_webhook_at, self._pending.last_sync_at
        return (base or Totals()).plus(recent, self.keep).plus(held, self.keep)
