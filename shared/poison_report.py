"""What ``python -m shared poison list`` shows: each poisoned job with the last error of its record.

The poison message itself only names the record; why it failed is in the bookkeeping: the link row's
``LastError`` (a record one side refused) or the newest ``failed`` audit entry (which also holds the
"gave up after repeated transient errors" note written on the last attempt). The newer of the two wins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from .ports import CRM_JOB_KINDS, KIND_REFERRAL, AuditEntry, Link
from .store.queue import PoisonedJob

TABLE_ERROR_CHARS = 100
AUDIT_LOOKBACK = 50


class FailureSource(Protocol):
    def get_link(self, referral_id: str) -> Link | None: ...

    def find_link_by_crm_id(self, crm_id: str) -> Link | None: ...

    def audit_trail(self, record_key: str, limit: int = 50) -> list[AuditEntry]: ...


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def last_error(kind: str, record_id: str, store: FailureSource) -> tuple[str, datetime | None] | None:
    """(message, when) of the record's most recent failure, or None when nothing failed on record."""
    link = None
    if kind == KIND_REFERRAL:
        link = store.get_link(record_id)
    elif kind in CRM_JOB_KINDS:  # an opportunity's or a lead's job
        link = store.find_link_by_crm_id(record_id)
    found: list[tuple[str, datetime | None]] = []
    if link is not None and link.last_error:
        found.append((link.last_error, link.last_synced_at))
    # The trail is keyed by the referral once there is one, by the CRM id before.
    keys = dict.fromkeys(k for k in (record_id, link.referral_id if link else None) if k)
    for key in keys:
        failure = next((e for e in store.audit_trail(key, AUDIT_LOOKBACK) if e.action == "failed"), None)
        if failure is not None:
            found.append((failure.message, failure.at))
    if not found:
        return None
    return max(found, key=lambda item: item[1].timestamp() if item[1] else float("-inf"))


def poison_rows(poisoned: list[PoisonedJob], store: FailureSource) -> list[dict[str, Any]]:
    rows = []
    for item in poisoned:
        job = item.job
        error = last_error(job.kind, job.record_id, store) if job else None
        rows.append(
            {
                "kind": job.kind if job else None,
                "recordId": job.record_id if job else None,
                "reason": job.reason if job else None,
                "enqueuedAt": (job.enqueued_at or None) if job else None,
                "poisonedAt": _iso(item.poisoned_at),
                "messageId": item.message_id,
                "lastError": error[0] if error else None,
                "lastErrorAt": _iso(error[1]) if error else None,
                "unreadable": None if job else item.text[:200],
            }
        )
    return rows


def _when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value  # a message written by someone else: shown as it is
    return (when.astimezone(UTC) if when.tzinfo else when).strftime("%Y-%m-%d %H:%M:%S")


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def render_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns for a terminal; the full error text is in ``--json``."""
    if not rows:
        return "the poison queue 'sync-jobs-poison' is empty"
    header = ("POISONED AT (UTC)", "KIND", "RECORD", "ENQUEUED AT (UTC)", "LAST ERROR")
    lines = [
        (
            _when(row["poisonedAt"]),
            row["kind"] or "(unreadable)",
            row["recordId"] or _one_line(row["unreadable"] or "", 40),
            _when(row["enqueuedAt"]),
            _one_line(row["lastError"], TABLE_ERROR_CHARS) if row["lastError"] else "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    ]
    out.append(f"{len(rows)} poisoned job(s); 'python -m shared replay-poison' moves them back to 'sync-jobs'")
    return "\n".join(out)
