"""Counter rows in the state table (partition ``counters``): one row per worker process and hour, and a base row.

A worker writes only its own row (an upsert of its totals for that hour, no etag), so workers never conflict
and a job costs no Table operation of its own. Rows of hours that are over are folded into the ``base`` row
(one conditional write; a fold that loses the race to another worker's fold is simply dropped) and deleted;
the base row names the last hour it holds, so a row whose delete failed is never counted twice. Reading the
totals is one query of this partition: the base row and a few rows per running worker.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from ..domain.tallies import LINKS_PREFIX, LINKS_TOTAL, REASON_MAX_CHARS, FailureNote, Totals, add_all
from .tables import TableSyncStore, check_limits

log = logging.getLogger(__name__)

COUNTERS_PARTITION = "counters"
BASE_KEY = "base"
NOTHING_FOLDED = "0000000000"


def _note_to_json(note: FailureNote) -> dict[str, Any]:
    return {
        "at": note.at.isoformat(),
        "kind": note.kind,
        "reason": note.reason[:REASON_MAX_CHARS],
        "direction": note.direction,
        "crmId": note.crm_id,
        "referralId": note.referral_id,
        **({"crmKind": note.crm_kind} if note.crm_kind else {}),
    }


def _note_from_json(data: dict[str, Any]) -> FailureNote | None:
    try:
        at = datetime.fromisoformat(str(data["at"]))
    except (KeyError, ValueError):
        return None
    return FailureNote(
        at if at.tzinfo else at.replace(tzinfo=UTC),
        str(data.get("kind", "failed")),
        str(data.get("reason", "")),
        str(data.get("direction") or ""),
        data.get("crmId") or None,
        data.get("referralId") or None,
        data.get("crmKind") or None,
    )


def _moment(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None


def totals_columns(totals: Totals) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "Counts": json.dumps({k: v for k, v in sorted(totals.counts.items()) if v}, separators=(",", ":")),
        "Failures": json.dumps([_note_to_json(n) for n in totals.failures], separators=(",", ":")),
    }
    if totals.last_webhook_at is not None:
        columns["LastWebhookAt"] = totals.last_webhook_at
    if totals.last_sync_at is not None:
        columns["LastSyncAt"] = totals.last_sync_at
    if totals.seeded_at is not None:
        columns["SeededAt"] = totals.seeded_at
    return columns


def totals_from_row(row: dict[str, Any]) -> Totals:
    try:
        counts = Counter({str(k): int(v) for k, v in json.loads(row.get("Counts") or "{}").items()})
    except (ValueError, TypeError, AttributeError):
        counts = Counter()
    try:
        raw = json.loads(row.get("Failures") or "[]")
    except ValueError:
        raw = []
    notes = [n for n in (_note_from_json(d) for d in raw if isinstance(d, dict)) if n is not None]
    return Totals(
        counts, notes, _moment(row.get("LastWebhookAt")), _moment(row.get("LastSyncAt")), _moment(row.get("SeededAt"))
    )


class CounterRows:
    def __init__(self, state: TableClient, ensure: Callable[[], None]) -> None:
        self.state = state
        self._ensure = ensure

    def write(self, hour: str, instance: str, totals: Totals) -> None:
        """Replace this worker's row for ``hour`` with its totals for that hour."""
        self._ensure()
        row = {"PartitionKey": COUNTERS_PARTITION, "RowKey": f"{hour}-{instance}", "Hour": hour}
        row.update(totals_columns(totals))
        self.state.upsert_entity(check_limits(f"the counter row {row['RowKey']}", row), mode=UpdateMode.REPLACE)

    def _rows(self) -> list[Any]:
        try:
            return list(self.state.query_entities(f"PartitionKey eq '{COUNTERS_PARTITION}'"))
        except ResourceNotFoundError:  # no state table yet: nothing counted
            return []

    def read(self) -> tuple[Totals | None, Totals]:
        """The base row's totals (None before any) and the sum of the rows it does not hold yet."""
        rows = self._rows()
        base = next((r for r in rows if r["RowKey"] == BASE_KEY), None)
        folded = str(base.get("FoldedThrough", NOTHING_FOLDED)) if base is not None else NOTHING_FOLDED
        recent = [totals_from_row(r) for r in rows if r["RowKey"] != BASE_KEY and str(r.get("Hour", "")) > folded]
        return (totals_from_row(base) if base is not None else None), add_all(recent)

    def create_base(self, totals: Totals) -> bool:
        """The first base row (links counted once by a scan); False when another worker's was first (it stays)."""
        self._ensure()
        row = {"PartitionKey": COUNTERS_PARTITION, "RowKey": BASE_KEY, "FoldedThrough": NOTHING_FOLDED}
        row.update(totals_columns(totals))
        try:
            self.state.create_entity(check_limits("the counter base row", row))
        except ResourceExistsError:
            return False
        return True

    def fold(self, through: str) -> int:
        """Fold every row of an hour up to ``through`` into the base row, then delete them; the number folded."""
        rows = self._rows()
        base = next((r for r in rows if r["RowKey"] == BASE_KEY), None)
        if base is None:
            return 0
        folded = str(base.get("FoldedThrough", NOTHING_FOLDED))
        old = [r for r in rows if r["RowKey"] != BASE_KEY and str(r.get("Hour", "")) <= through]
        fresh = [r for r in old if str(r.get("Hour", "")) > folded]
        if fresh:
            total = add_all([totals_from_row(base), *(totals_from_row(r) for r in fresh)])
            newest = max(str(r["Hour"]) for r in fresh)
            row = {"PartitionKey": COUNTERS_PARTITION, "RowKey": BASE_KEY, "FoldedThrough": max(newest, folded)}
            total.seeded_at = totals_from_row(base).seeded_at
            row.update(totals_columns(total))
            try:
                self.state.update_entity(
                    check_limits("the counter base row", row),
                    mode=UpdateMode.REPLACE,
                    etag=base.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                return 0  # another worker folded meanwhile; these rows are its to delete
        for row in old:
            try:
                self.state.delete_entity(COUNTERS_PARTITION, row["RowKey"])
            except (ResourceNotFoundError, HttpResponseError) as exc:
                log.info("counter row %s left for the next fold: %s", row["RowKey"], type(exc).__name__)
        return len(fresh)


def counter_rows(store: TableSyncStore) -> CounterRows:
    return CounterRows(store.state, store.ensure)


def link_status_counts(store: TableSyncStore) -> Counter[str]:
    """Links per status by one scan of the links (done once, for the first base row)."""
    links = store.iter_links()
    counts: Counter[str] = Counter({LINKS_TOTAL: len(links)})
    counts.update(LINKS_PREFIX + (link.last_status or "unknown") for link in links)
    return counts
