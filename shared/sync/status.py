"""The operator's view behind GET /api/status: sync counts, queue depths, last runs, credential health.

It reports which credentials are configured and how, never their values.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Protocol

from ..domain.deletions import LINK_DETACHED, LINK_REFERRAL_MISSING
from ..ports import FeedWatermark, Link
from .poller import POLL_STATE_KEY, RECONCILE_STATE_KEY


class StatusStore(Protocol):
    def iter_links(self) -> list[Link]: ...

    def get_watermark(self, feed: str) -> FeedWatermark | None: ...


class StatusQueue(Protocol):
    def depth(self) -> int: ...

    def poison_depth(self) -> int: ...


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value else None)


def build_status(
    store: StatusStore, queue: StatusQueue, credentials: dict[str, str], health: dict[str, Any] | None = None
) -> dict[str, Any]:
    links = store.iter_links()
    # Pairs that lost a side are always counted, zero included, so that an alert can watch them.
    by_status = Counter({LINK_DETACHED: 0, LINK_REFERRAL_MISSING: 0})
    by_status.update(link.last_status or "unknown" for link in links)
    last_sync = max((link.last_synced_at for link in links if link.last_synced_at), default=None)
    poll = store.get_watermark(POLL_STATE_KEY) or FeedWatermark()
    reconcile = store.get_watermark(RECONCILE_STATE_KEY) or FeedWatermark()
    return {
        "links": {"total": len(links), **dict(sorted(by_status.items()))},
        "lastSyncAt": _iso(last_sync),
        "lastPollAt": _iso(poll.last_run_at),
        "lastReconcileAt": _iso(reconcile.last_run_at),
        "queue": {"depth": queue.depth(), "poison": queue.poison_depth()},
        "credentials": {**credentials, "lastFailure": (health or {}).get("credentialFailure")},
        "paused": (health or {}).get("paused"),
    }
