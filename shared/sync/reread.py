"""``cosell reconcile --since DATE``: read again every referral Partner Center changed since DATE, one job each.

For a gap the scheduled reconciliation cannot see: an app that was stopped (or not configured) for longer than its
overlap, webhooks lost before the first run, a restore. The reconciliation's own watermark and remembered versions
are left alone, so the next scheduled run carries on where it was; a referral enqueued twice, or one already in
step, is a no-op for the worker.
"""

from __future__ import annotations

from datetime import datetime

from ..ports import KIND_REFERRAL, Job, JobQueue, PartnerCenter
from .deferral import throttle_delay
from .poller import PollResult

REASON = "reconcile --since"


def reconcile_since(pc: PartnerCenter, queue: JobQueue, since: datetime) -> PollResult:
    """Enqueue one job per referral changed at or after ``since``, oldest first. A throttle stops the run early:
    the result says why, and what was read is enqueued."""
    seen = enqueued = 0
    newest: datetime | None = None
    try:
        for referral in pc.changed_since(since):
            seen += 1
            if not referral.id:
                continue
            queue.enqueue(Job(KIND_REFERRAL, referral.id, reason=REASON, version=referral.e_tag or ""))
            enqueued += 1
            changed = referral.updated_at()
            if changed is not None and (newest is None or changed > newest):
                newest = changed
    except Exception as exc:
        if throttle_delay(exc, 0.0) is None:
            raise
        return PollResult(seen, enqueued, newest, str(exc), getattr(exc, "retry_after", None))
    return PollResult(seen, enqueued, newest)
