"""Change feeds: find records changed since a watermark, enqueue one job each, advance the watermark.

The CRM poll (opportunities flagged for sync) and the Partner Center reconciliation (referrals whose
webhooks may have been lost) both run on :class:`ChangeFeed`. It is safe against clock skew and equal
timestamps: every run re-reads an overlap window before the watermark and skips the (id, row version)
pairs it already enqueued. It is safe against a crash between enqueue and save: the next run enqueues
the same versions again, and the engine treats a repeated job as a no-op. A run that finds nothing
costs one query.

Both feeds read oldest change first, so a run keeps its progress: the state is saved every
``checkpoint_every`` changes and when the run stops early (a throttle, an outage), with the watermark
only over changes already enqueued. A throttled run is not an error: it returns what it did, marked
``throttled``, and the next run carries on.

The remembered versions must fit the state row whatever the burst (a bulk edit of thousands of rows
inside the overlap window): they are packed as binary, 5 bytes each, within a byte budget spread over
two properties, and past it the oldest are forgotten first (and may be enqueued again: a no-op).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..domain.errors import PermanentError
from ..domain.opportunity import Opportunity
from ..domain.referral import Referral
from ..ports import Clock, Crm, Job, JobQueue, PartnerCenter
from .deferral import throttle_delay
from .engine import KIND_CRM, KIND_REFERRAL

log = logging.getLogger(__name__)
POLL_STATE_KEY = "crm-poll"
RECONCILE_STATE_KEY = "reconcile"

# The state row's limits (our contract with Table Storage): a property at most 32,000 units (UTF-16 code
# units for a string, bytes for binary), the whole entity under 64 KiB counted as the service counts it
# (strings as UTF-16). Versions take at most two 28,000-byte binary properties; the other columns of the
# row take under 2 KiB, so the row stays under 58 KiB.
VERSION_PROPERTIES = ("Versions", "Versions2")
VERSION_PROPERTY_BYTES = 28_000
VERSIONS_BUDGET_BYTES = VERSION_PROPERTY_BYTES * len(VERSION_PROPERTIES)
INTERRUPTION_MAX_CHARS = 500
_FORMAT = 1  # first byte of the packed versions; the older text form ("digest:age,...") is still read
_GROUP = struct.Struct(">IH")  # age in seconds before the watermark, number of digests that follow
_DIGEST_BYTES = 5
_MAX_GROUP = 0xFFFF


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
    throttled: str = ""  # why the run stopped early ("" when it read everything); the next run carries on
    retry_after: float | None = None


def _digest(change: Change) -> str:
    """10 hex digits (40 bits) of the change's identity: a false "already enqueued" is a one in 10^8 event
    even with ten thousand versions remembered."""
    stamp = change.changed_at.isoformat() if change.changed_at else ""
    return hashlib.sha256(f"{change.record_id}|{change.version}|{stamp}".encode()).hexdigest()[: _DIGEST_BYTES * 2]


def _load_text_versions(text: str, newest: datetime) -> dict[str, datetime]:
    """The older form, ``"digest:age,..."`` where age is whole seconds before the watermark."""
    versions = {}
    for item in text.split(","):
        digest, _, age = item.partition(":")
        if digest:
            versions[digest] = newest - timedelta(seconds=int(age or 0))
    return versions


def _unpack_versions(blob: bytes, newest: datetime) -> dict[str, datetime]:
    if not blob or blob[0] != _FORMAT:
        return {}
    versions: dict[str, datetime] = {}
    at = 1
    while at + _GROUP.size <= len(blob):
        age, count = _GROUP.unpack_from(blob, at)
        at += _GROUP.size
        changed = newest - timedelta(seconds=age)
        for _ in range(count):
            digest = blob[at : at + _DIGEST_BYTES]
            if len(digest) < _DIGEST_BYTES:
                return versions
            versions[digest.hex()] = changed
            at += _DIGEST_BYTES
    return versions


def pack_versions(versions: dict[str, datetime], newest: datetime, budget: int = VERSIONS_BUDGET_BYTES) -> bytes:
    """The newest versions that fit in ``budget`` bytes, grouped by their age before ``newest``."""
    by_age: dict[int, list[bytes]] = {}
    for digest, changed in sorted(versions.items(), key=lambda item: item[1], reverse=True):
        age = min(0xFFFFFFFF, max(0, int((newest - changed).total_seconds())))
        by_age.setdefault(age, []).append(bytes.fromhex(digest))
    packed = bytearray([_FORMAT])
    for age, digests in by_age.items():  # youngest first: what does not fit is the oldest
        while digests:
            room = min(_MAX_GROUP, (budget - len(packed) - _GROUP.size) // _DIGEST_BYTES)
            if room <= 0:
                return bytes(packed)
            group, digests = digests[:room], digests[room:]
            packed += _GROUP.pack(age, len(group)) + b"".join(group)
    return bytes(packed)


def load_versions(saved: dict[str, Any], newest: datetime | None) -> dict[str, datetime]:
    """The remembered versions of a saved state row (either form)."""
    if newest is None:
        return {}
    first = saved.get(VERSION_PROPERTIES[0])
    if isinstance(first, str):
        return _load_text_versions(first, newest) if first else {}
    parts = [saved.get(name) for name in VERSION_PROPERTIES]
    return _unpack_versions(b"".join(p for p in parts if isinstance(p, bytes)), newest)


def version_columns(versions: dict[str, datetime], newest: datetime | None) -> dict[str, bytes]:
    """The state row's version properties; every one is written, so a shorter list leaves no stale part."""
    packed = pack_versions(versions, newest) if newest is not None else b""
    size = VERSION_PROPERTY_BYTES
    return {name: packed[i * size : (i + 1) * size] for i, name in enumerate(VERSION_PROPERTIES)}


def _whole_seconds(moment: datetime) -> datetime:
    """Feeds filter to whole seconds (``modifiedon``, ``SystemModstamp`` and ``updatedDateTime`` filters are
    sent that way), so the window starts on one: a version between that second and the exact floor would
    otherwise be read again, forgotten and enqueued on every run."""
    return moment.replace(microsecond=0)


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
        saved = self.state.get_state(self.state_key) or {}
        watermark = saved.get("Watermark") if isinstance(saved.get("Watermark"), datetime) else None
        run = _Run(watermark, load_versions(saved, watermark))
        since = _whole_seconds(watermark - self.overlap) if watermark else self.first_since(self.clock.now())
        try:
            for change in self.fetch(since):
                self._take(change, run)
                if run.seen % self.checkpoint_every == 0:
                    self._save(run)
        except Exception as exc:
            delay = throttle_delay(exc, 0.0)
            self._save(run, interruption=str(exc), failing=delay is None)
            if delay is None:
                raise
            log.warning(
                "%s throttled after %s change(s), %s enqueued (%s); progress saved up to %s, the next run carries on",
                self.state_key,
                run.seen,
                run.enqueued,
                exc,
                run.newest.isoformat() if run.newest else "the start",
            )
            return PollResult(run.seen, run.enqueued, run.newest, str(exc), getattr(exc, "retry_after", None))
        self._save(run)
        return PollResult(run.seen, run.enqueued, run.newest)

    def _take(self, change: Change, run: _Run) -> None:
        run.seen += 1
        digest = _digest(change)
        if digest not in run.remembered:
            self.queue.enqueue(Job(self.job_kind, change.record_id, reason=self.state_key))
            run.enqueued += 1
        if change.changed_at is not None:
            # The watermark moves only over what is enqueued: changes come oldest first, so every change
            # not read yet is at least as new as this one, and the next run re-reads from here on.
            run.remembered[digest] = change.changed_at
            if run.newest is None or change.changed_at > run.newest:
                run.newest = change.changed_at

    def _save(self, run: _Run, interruption: str = "", failing: bool = False) -> None:
        values: dict[str, Any] = {
            "Watermark": run.newest,
            **version_columns(self._within_window(run.remembered, run.newest), run.newest),
            "LastRunAt": self.clock.now(),
            "LastSeen": run.seen,
            "LastEnqueued": run.enqueued,
            "LastInterruption": interruption[:INTERRUPTION_MAX_CHARS],
        }
        if not failing:
            self.state.set_state(self.state_key, values)
            return
        try:
            self.state.set_state(self.state_key, values)
        except Exception:  # the error that stopped the run is the one to report
            log.exception("%s: could not save the progress of a failed run", self.state_key)

    def _within_window(self, remembered: dict[str, datetime], newest: datetime | None) -> dict[str, datetime]:
        """Only versions inside the overlap window can come back; older ones are forgotten."""
        if newest is None:
            return {}
        # The same floor the next run asks from: whatever that run can see again is remembered.
        floor = _whole_seconds(newest - self.overlap)
        return {k: v for k, v in remembered.items() if v >= floor}


@dataclass
class _Run:
    """What one poll has done so far."""

    newest: datetime | None
    remembered: dict[str, datetime]
    seen: int = 0
    enqueued: int = 0


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

    def changed_since(since: datetime | None) -> Iterator[Referral]:
        """Oldest first, page by page, so that a run stopped part way keeps what it enqueued."""
        if since is None:
            yield from pc.list_referrals(None, orderby="updatedDateTime asc")
            return
        pages = pc.list_referrals(
            f"updatedDateTime ge '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'", orderby="updatedDateTime asc"
        )
        try:
            first = next(pages, None)
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
            yield from recent[::-1]
            return
        if first is not None:
            yield first
            yield from pages

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
