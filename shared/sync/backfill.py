"""Day-one loads: one job for each record that should be in sync, whenever it last changed.

Webhooks and the change feeds only see what changes from now on (the first reconciliation looks back a day), so
the records that were there before the connector are brought in by a backfill, from either side:

- from the CRM: every opportunity flagged "Sync with Partner Center";
- from Partner Center: every open referral of the partner that the sync would take (the same rules as the
  engine: never Microsoft's copy of an engagement, only co-sell opportunities while ``SYNC_COSELL_ONLY`` is on).

Both enqueue the same jobs the poll and the webhook do and leave every decision to the engine, so a backfill is
safe to run again: a record already synchronised costs one job and writes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..domain.classification import should_sync_to_crm
from ..domain.errors import ExternalServiceError
from ..domain.referral import Referral, ReferralStatus
from ..domain.referral_rules import is_microsoft_copy
from ..ports import KIND_CRM, KIND_REFERRAL, Crm, Job, JobQueue

REASON = "backfill"
PROGRESS_EVERY = 100
OPEN_STATUSES = frozenset({ReferralStatus.NEW, ReferralStatus.ACTIVE})

# Why a referral read was not enqueued (the keys of ReferralBackfill.skipped).
SKIP_CLOSED = "not open"
SKIP_MICROSOFT_COPY = "Microsoft's copy"
SKIP_LEAD = "lead (SYNC_COSELL_ONLY is on)"
SKIP_OLDER = "not updated since --since"
SKIP_REPEATED = "read twice"
SKIP_NO_ID = "without an id"


def backfill_opportunities(
    crm: Crm, queue: JobQueue, progress: Callable[[int], None] | None = None, page_size: int = 500
) -> int:
    """Enqueue every flagged opportunity once (the initial sync from the CRM); ``progress`` gets the count every
    hundred jobs and at the end."""
    count = 0
    for change in crm.changes_since(None, page_size):
        queue.enqueue(Job(KIND_CRM, change.record_id, reason=REASON))
        count += 1
        if progress is not None and count % PROGRESS_EVERY == 0:
            progress(count)
    if progress is not None:
        progress(count)
    return count


@dataclass
class ReferralBackfill:
    """What a referral backfill did so far: referrals read, jobs enqueued, and why the others were left out."""

    read: int = 0
    enqueued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    stopped: str = ""  # why the run stopped early ("" when it read everything)


def skip_reason(referral: Referral, since: datetime | None, cosell_only: bool) -> str | None:
    """Why ``referral`` is not for the day-one load, or None when it is.

    The listing is asked for open referrals updated since ``since`` already; these checks are what decides, so a
    service that answers more than it was asked (or a listing read without the date filter) changes nothing.
    """
    if not referral.id:
        return SKIP_NO_ID
    if referral.status not in OPEN_STATUSES:
        return SKIP_CLOSED
    if is_microsoft_copy(referral.target):
        return SKIP_MICROSOFT_COPY
    if not should_sync_to_crm(referral, cosell_only):
        return SKIP_LEAD
    if since is not None:
        changed = referral.updated_at()
        if changed is None or changed < since:
            return SKIP_OLDER
    return None


def backfill_referrals(
    read: Callable[[datetime | None], Iterable[Referral]],
    queue: JobQueue,
    *,
    since: datetime | None = None,
    cosell_only: bool = True,
    progress: Callable[[ReferralBackfill], None] | None = None,
) -> ReferralBackfill:
    """Enqueue one referral job (the webhook's kind) for each open referral ``read(since)`` yields that the sync
    takes; ``progress`` gets the running result every hundred referrals read and at the end.

    ``since`` is compared at whole seconds, as Partner Center's ``updatedDateTime`` filter is sent. A failure
    part way (a throttle, an outage) ends the run with what was enqueued kept and ``stopped`` saying why: running
    it again is harmless.
    """
    floor = since.replace(microsecond=0) if since is not None else None
    result = ReferralBackfill()
    enqueued: set[str] = set()  # a referral moving from New to Active while the run reads can be listed twice
    try:
        for referral in read(floor):
            result.read += 1
            reason = skip_reason(referral, floor, cosell_only)
            if reason is None and referral.id in enqueued:
                reason = SKIP_REPEATED
            if reason is not None:
                result.skipped[reason] += 1
            else:
                assert referral.id is not None
                # The eTag as version: a referral already synchronised at this version is an echo to the engine,
                # which drops the job before any API call.
                queue.enqueue(Job(KIND_REFERRAL, referral.id, reason=REASON, version=referral.e_tag or ""))
                enqueued.add(referral.id)
                result.enqueued += 1
            if progress is not None and result.read % PROGRESS_EVERY == 0:
                progress(result)
    except ExternalServiceError as exc:
        result.stopped = str(exc)
    if progress is not None:
        progress(result)
    return result
