"""Where the change-tracking feed stands (:class:`~shared.ports.DeltaProgress`), kept in the CRM poll's state row.

The feed shares the row of the poll by modification time, its fallback: the status page reads the last run from
the same columns (``LastRunAt``, ``LastSeen``, ...) whichever feed ran, and a row written by one never loses the
other's columns, since every write merges. The delta link is a URL of a few hundred characters, well inside the
row's budget (see :mod:`shared.store.state_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..domain.bounded import cap_utf16
from ..ports import DeltaProgress
from .state_rows import count_from, moment_from

LINK_MAX_UNITS = 8_000  # a Dataverse delta link is far shorter; a longer one is not a link we can keep
REASON_MAX_UNITS = 500
MODE_DELTA, MODE_FALLBACK = "delta", "modifiedon"


class StateRows(Protocol):
    def get_state(self, key: str) -> dict[str, Any] | None: ...

    def set_state(self, key: str, values: dict[str, Any]) -> None: ...


def delta_columns(progress: DeltaProgress) -> dict[str, Any]:
    if len(progress.link) > LINK_MAX_UNITS:
        raise ValueError(f"a delta link of {len(progress.link)} characters is longer than {LINK_MAX_UNITS}")
    return {
        "DeltaLink": progress.link,
        # A merge cannot remove a property (a None is not sent): the mode says whether the date still counts.
        "DeltaMode": MODE_FALLBACK if progress.fallback_until is not None else MODE_DELTA,
        "DeltaFallbackUntil": progress.fallback_until,
        "DeltaFallbackReason": cap_utf16(progress.fallback_reason, REASON_MAX_UNITS),
        "LastRunAt": progress.last_run_at,
        "LastSeen": progress.last_seen,
        "LastEnqueued": progress.last_enqueued,
        "LastInterruption": cap_utf16(progress.last_interruption, REASON_MAX_UNITS),
    }


def delta_from_row(row: Mapping[str, Any]) -> DeltaProgress:
    return DeltaProgress(
        link=str(row.get("DeltaLink") or ""),
        fallback_until=moment_from(row.get("DeltaFallbackUntil")) if row.get("DeltaMode") == MODE_FALLBACK else None,
        fallback_reason=str(row.get("DeltaFallbackReason") or ""),
        last_run_at=moment_from(row.get("LastRunAt")),
        last_seen=count_from(row.get("LastSeen")),
        last_enqueued=count_from(row.get("LastEnqueued")),
        last_interruption=str(row.get("LastInterruption") or ""),
    )


class DeltaRows:
    """``get_delta`` / ``save_delta`` over a store's state rows."""

    def __init__(self, rows: StateRows) -> None:
        self.rows = rows

    def get_delta(self, feed: str) -> DeltaProgress | None:
        row = self.rows.get_state(feed)
        return delta_from_row(row) if row is not None else None

    def save_delta(self, feed: str, progress: DeltaProgress) -> None:
        self.rows.set_state(feed, delta_columns(progress))
