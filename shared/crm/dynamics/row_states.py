"""What each opportunity row held when the adapter last read or wrote it: its state, customer and contact
lookups and close details, keyed by the row's etag.

An update needs them (to reopen a closed row, to keep its close date, to know whether the customer is an
account). The job has just read the row, so remembering saves a read before each write; a different etag
means the row changed since, and the adapter reads it again. The conditional write (``If-Match``) stays
the guard either way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .mapping import STATE_COLUMNS
from .webapi import LOOKUP_ANNOTATION

_KEPT = (*STATE_COLUMNS, f"_customerid_value@{LOOKUP_ANNOTATION}", "@odata.etag")


class RowStates:
    """A bounded memory (the rows of the jobs running in this process), safe across worker threads."""

    def __init__(self, capacity: int = 512) -> None:
        self._rows: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, row: dict[str, Any]) -> None:
        crm_id, etag = row.get("opportunityid"), row.get("@odata.etag")
        if not crm_id or not etag:
            return
        with self._lock:
            self._rows[(str(crm_id), str(etag))] = {k: row[k] for k in _KEPT if k in row}
            while len(self._rows) > self._capacity:
                self._rows.popitem(last=False)

    def get(self, crm_id: str, etag: str | None) -> dict[str, Any] | None:
        if not etag:
            return None
        with self._lock:
            found = self._rows.get((crm_id, etag))
        # Only a row read with every state column answers for a write.
        return dict(found) if found and all(k in found for k in STATE_COLUMNS) else None
