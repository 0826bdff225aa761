"""The operator's view behind GET /api/status: sync counts, queue depths, last runs, credential health.

Counts come from the counters kept as jobs finish (:mod:`.tally`), never from reading every link, so a status
call costs a few Table and queue reads however many records are synchronised. It reports which credentials
are configured and how, never their values.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Protocol

from ..domain.deletions import LINK_DETACHED, LINK_REFERRAL_MISSING
from ..domain.tallies import LINKS_PREFIX, LINKS_TOTAL, Totals
from ..ports import CRM_TO_PC, PC_TO_CRM, FeedWatermark, Job
from .poller import POLL_STATE_KEY, RECONCILE_STATE_KEY

POISON_OLDEST = 5


class StatusStore(Protocol):
    def get_watermark(self, feed: str) -> FeedWatermark | None: ...


class PoisonItem(Protocol):
    job: Job | None
    message_id: str
    poisoned_at: datetime | None


class StatusQueue(Protocol):
    def depth(self) -> int: ...

    def poison_depth(self) -> int: ...

    def peek_poison(self, count: int) -> list[Any]: ...


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value else None)


def link_counts(totals: Totals) -> dict[str, int]:
    # Pairs that lost a side are always counted, zero included, so that an alert can watch them.
    by_status = Counter({LINK_DETACHED: 0, LINK_REFERRAL_MISSING: 0})
    for name, count in totals.link_counts().items():
        if name != LINKS_TOTAL and count:
            by_status[name.removeprefix(LINKS_PREFIX)] += count
    return {"total": totals.counts.get(LINKS_TOTAL, 0), **dict(sorted(by_status.items()))}


def job_counts(totals: Totals) -> dict[str, Any]:
    def prefixed(prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): v for k, v in sorted(totals.counts.items()) if k.startswith(prefix) and v}

    return {
        **prefixed("jobs."),
        "byDirection": {direction: prefixed(f"{direction}.") for direction in (PC_TO_CRM, CRM_TO_PC)},
        "failedAttempts": totals.counts.get("attempts.failed", 0),
        "poisoned": totals.counts.get("poisoned", 0),
    }


def poison_item(item: Any) -> dict[str, Any]:
    job = item.job
    return {
        "messageId": item.message_id,
        "poisonedAt": _iso(item.poisoned_at),
        "kind": job.kind if job else None,
        "recordId": job.record_id if job else None,
        "enqueuedAt": (job.enqueued_at or None) if job else None,
    }


def build_status(
    totals: Totals,
    store: StatusStore,
    queue: StatusQueue,
    credentials: dict[str, str],
    health: dict[str, Any] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    poll = store.get_watermark(POLL_STATE_KEY) or FeedWatermark()
    reconcile = store.get_watermark(RECONCILE_STATE_KEY) or FeedWatermark()
    poison_depth = queue.poison_depth()
    oldest = queue.peek_poison(POISON_OLDEST) if poison_depth else []
    return {
        "version": version,
        "links": link_counts(totals),
        "jobs": job_counts(totals),
        "lastSyncAt": _iso(totals.last_sync_at),
        "lastPollAt": _iso(poll.last_run_at),
        "lastReconcileAt": _iso(reconcile.last_run_at),
        "lastWebhookAt": _iso(totals.last_webhook_at),
        "queue": {"depth": queue.depth(), "poison": poison_depth},
        "poison": {"depth": poison_depth, "oldest": [poison_item(item) for item in oldest]},
        "recentFailures": [
            {
                "at": _iso(note.at),
                "kind": note.kind,
                "reason": note.reason,
                "direction": note.direction,
                "crmId": note.crm_id,
                "crmKind": note.crm_kind,
                "referralId": note.referral_id,
            }
            for note in totals.failures
        ],
        "credentials": {
            **credentials,
            "lastFailure": (health or {}).get("credentialFailure"),
            "refreshToken": (health or {}).get("refreshToken"),
        },
        "paused": (health or {}).get("paused"),
    }
