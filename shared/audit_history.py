"""One record's audit trail for ``cosell history``: every SyncAudit row of a pair, oldest first, as text.

The trail of a pair lives under two keys: the CRM id until the referral exists (a create from the CRM side), the
referral id from then on. Given either id, the link names the other, and both keys are read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

from .ports import CRM_TO_PC, PC_TO_CRM, AuditEntry, Link

DIRECTIONS = {PC_TO_CRM: "Partner Center -> CRM", CRM_TO_PC: "CRM -> Partner Center"}


class AuditSource(Protocol):
    def get_link(self, referral_id: str) -> Link | None: ...

    def find_link_by_crm_id(self, crm_id: str) -> Link | None: ...

    def audit_trail(self, record_key: str, limit: int = 50) -> list[AuditEntry]: ...


def record_trail(store: AuditSource, record_id: str, limit: int) -> tuple[Link | None, list[AuditEntry]]:
    """The record's link (None when it was never paired) and its newest ``limit`` audit entries, oldest first."""
    record_id = record_id.strip()
    link = store.get_link(record_id) or store.find_link_by_crm_id(record_id)
    keys = dict.fromkeys(k for k in (record_id, link.referral_id if link else None, link.crm_id if link else None) if k)
    entries = [entry for key in keys for entry in store.audit_trail(key, limit=limit)]
    entries.sort(key=lambda e: _utc(e.at))
    return link, entries[-limit:]


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.min.replace(tzinfo=UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def render(record_id: str, link: Link | None, entries: Iterable[AuditEntry]) -> str:
    """Readable text: a heading naming the pair, then one block per entry."""
    entries = list(entries)
    if link is not None:
        heading = f"referral {link.referral_id or '-'} <-> CRM opportunity {link.crm_id or '-'}"
    else:
        heading = f"{record_id} (not linked)"
    lines = [f"History of {heading}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, oldest first"]
    if not entries:
        lines.append(f"No audit entries for {record_id}: no job has handled it yet, or the id is not one we know.")
    for entry in entries:
        when = _utc(entry.at).strftime("%Y-%m-%d %H:%M:%S UTC") if entry.at else "(no time)"
        direction = DIRECTIONS.get(entry.direction, entry.direction)
        lines.append(f"{when}  {entry.action:<10} {direction}")
        lines.append(f"    {entry.message}")
        if entry.fields:
            lines.append(f"    fields: {', '.join(entry.fields)}")
        for key, value in sorted(entry.extra.items()):
            lines.append(f"    {key}: {value}")
    return "\n".join(lines)
