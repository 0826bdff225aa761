"""What the operator's status adds up: counters kept as jobs finish, the last failures, the last webhook.

Each worker process keeps a :class:`Totals` in memory and writes it now and then to a row of its own, so
status adds a handful of rows instead of reading every link. Counts are plain names: ``jobs.<action>``,
``<direction>.<action>``, ``attempts.failed``, ``poisoned``, and ``links.<status>`` / ``links.total``, which
are changes (+1 and -1 as a link moves from one status to another), so their sum over all rows is the number
of links in each status now.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

RECENT_FAILURES = 20
REASON_MAX_CHARS = 500
LINKS_PREFIX = "links."
LINKS_TOTAL = "links.total"


@dataclass(frozen=True)
class FailureNote:
    """One failed job: a record refused (``failed``) or given up after repeated errors (``poisoned``)."""

    at: datetime
    kind: str
    reason: str
    direction: str = ""
    crm_id: str | None = None
    referral_id: str | None = None
    crm_kind: str | None = None  # the CRM record's kind, as Link.crm_kind spells it (None: an opportunity)

    def key(self) -> tuple[str, str, str, str | None, str | None]:
        return (self.at.isoformat(), self.kind, self.reason, self.crm_id, self.referral_id)


@dataclass
class Totals:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[FailureNote] = field(default_factory=list)  # newest first
    last_webhook_at: datetime | None = None
    last_sync_at: datetime | None = None
    # The base row only: when its link counts were taken by a scan. A link saved before then is in the scan.
    seeded_at: datetime | None = None

    def plus(self, other: Totals, keep: int = RECENT_FAILURES) -> Totals:
        counts = Counter(self.counts)
        counts.update(other.counts)
        return Totals(
            counts,
            newest_failures([*self.failures, *other.failures], keep),
            latest(self.last_webhook_at, other.last_webhook_at),
            latest(self.last_sync_at, other.last_sync_at),
        )

    def link_counts(self) -> Counter[str]:
        return Counter({k: v for k, v in self.counts.items() if k.startswith(LINKS_PREFIX)})


def add_all(parts: Iterable[Totals], keep: int = RECENT_FAILURES) -> Totals:
    total = Totals()
    for part in parts:
        total = total.plus(part, keep)
    return total


def newest_failures(notes: Iterable[FailureNote], keep: int = RECENT_FAILURES) -> list[FailureNote]:
    """The ``keep`` newest, each once (the same note reaches several rows of one worker)."""
    unique = {note.key(): note for note in notes}
    return sorted(unique.values(), key=lambda n: n.at, reverse=True)[:keep]


def latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def link_moves(previous: str | None, current: str | None, created: bool) -> Counter[str]:
    """The counter changes of one link saved: created, or moved from one status to another."""
    change: Counter[str] = Counter()
    if created:
        change[LINKS_TOTAL] += 1
    if created or previous != current:
        if not created:
            change[LINKS_PREFIX + (previous or "unknown")] -= 1
        change[LINKS_PREFIX + (current or "unknown")] += 1
    return change


def hour_key(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H")
