"""The CRM poll with leads: flagged opportunities first, then leads made from Partner Center leads, each a change
feed with its own watermark. Wired only when ``SYNC_COSELL_ONLY`` is off, so an org without leads pays nothing."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ..ports import KIND_CRM_LEAD, Change, Clock, Crm, JobQueue
from .poller import ChangeFeed, FeedState, PollResult

LEAD_POLL_STATE_KEY = "crm-lead-poll"


class PollWithLeads:
    """Polls both feeds as one: the counts add up, the watermark is the opportunities' (what the status page shows).
    A throttled opportunity feed stops the run before the leads: the next run carries on with both."""

    def __init__(self, opportunities: ChangeFeed, leads: ChangeFeed) -> None:
        self.opportunities, self.leads = opportunities, leads

    def poll(self) -> PollResult:
        first = self.opportunities.poll()
        if first.throttled:
            return first
        second = self.leads.poll()
        return PollResult(
            first.seen + second.seen,
            first.enqueued + second.enqueued,
            first.watermark,
            second.throttled,
            second.retry_after,
        )


def lead_poller(crm: Crm, state: FeedState, queue: JobQueue, clock: Clock, overlap_seconds: int) -> ChangeFeed:
    """Leads made from Partner Center leads, read a page of the adapter's default size at a time."""

    def changes(since: datetime | None) -> Iterable[Change]:
        return crm.lead_records().lead_changes_since(since)

    return ChangeFeed(LEAD_POLL_STATE_KEY, KIND_CRM_LEAD, changes, state, queue, clock, overlap_seconds)
