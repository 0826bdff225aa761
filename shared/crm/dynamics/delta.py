"""Flagged opportunities through Dataverse change tracking: a delta link returns only what changed since the last
read, deletions included, so an unchanged organisation costs one request whatever its size.

The first read (``Prefer: odata.track-changes``) returns every row of the table and, on its last page, a delta
link; each later read of the saved link returns the rows added or changed since, and ``$deletedEntity`` entries
for rows deleted. The service refuses ``$filter`` with track-changes, so every row comes back with only its id,
``modifiedon`` and the sync flag, and the unflagged ones are dropped here. A deleted row no longer says whether it
was flagged: every deletion is reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from ...domain.errors import ChangeTrackingUnavailable, DeltaLinkRefused, PermanentError
from ...ports import Change, DeltaPage
from ..setup_report import SetupReport
from .auth import SERVICE
from .changes import hint_of
from .mapping import parse_datetime
from .webapi import MAX_PAGE_SIZE, DataverseRows

TRACK_CHANGES = "odata.track-changes"
DELETED_ENTITY = "/$deletedEntity"
# The service's wording for a column it does not know: a mapping or setup problem, not missing change tracking.
UNKNOWN_PROPERTY = "Could not find a property"


def delta_pages(
    web: DataverseRows,
    entity_set: str,
    id_column: str,
    flag_column: str,
    link: str | None,
    page_size: int = MAX_PAGE_SIZE,
    hint_column: str | None = None,
) -> Iterator[DeltaPage]:
    """The pages of a change-tracking read of ``entity_set`` from ``link`` (None: a full read that starts
    tracking). Each page carries the link to read next: the next page's, and on the last page the delta link."""
    prefer = f"{TRACK_CHANGES},odata.maxpagesize={max(1, min(page_size, MAX_PAGE_SIZE))}"
    full_read = link is None
    path = entity_set if link is None else web.pinned(link)  # the token goes only back into this Web API
    # The columns are the first read's: a delta link reads what its full read selected.
    columns = [id_column, "modifiedon", flag_column, *([hint_column] if hint_column else [])]
    params: dict[str, str] | None = {"$select": ",".join(columns)} if link is None else None
    first = True
    while True:
        try:
            response = web.api.request("GET", path, params=params, headers={"Prefer": prefer})
        except PermanentError as exc:
            if exc.status != 400 or UNKNOWN_PROPERTY in str(exc):
                raise
            # Refused at the start of a full read: the table does not track changes. Anywhere else: the link's
            # token (or paging state) is no longer honoured, and a full read starts over.
            refused = ChangeTrackingUnavailable if full_read and first else DeltaLinkRefused
            raise refused(SERVICE, _message(exc), exc.status, exc.code) from None
        if first and full_read and TRACK_CHANGES not in response.headers.get("Preference-Applied", ""):
            raise ChangeTrackingUnavailable(SERVICE, f"{entity_set} was read without change tracking (not applied)")
        first = False
        body: dict[str, Any] = response.json(parse_float=Decimal)
        next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
        if not next_link and not delta_link:
            raise ChangeTrackingUnavailable(SERVICE, f"the change-tracking read of {entity_set} gave no delta link")
        changed, deleted = _split(body.get("value", []), id_column, flag_column, hint_column)
        yield DeltaPage(changed, deleted, str(next_link or delta_link), last=not next_link)
        if not next_link:
            return
        path, params = web.pinned(str(next_link)), None


def _split(
    rows: list[dict[str, Any]], id_column: str, flag_column: str, hint_column: str | None
) -> tuple[list[Change], list[str]]:
    changed: list[Change] = []
    deleted: list[str] = []
    for row in rows:
        if str(row.get("@odata.context", "")).endswith(DELETED_ENTITY) or row.get("reason") == "deleted":
            if row.get("id"):
                deleted.append(str(row["id"]))
        elif row.get(flag_column) is True and row.get(id_column):
            version = str(row.get("@odata.etag") or "")
            changed_at = parse_datetime(row.get("modifiedon"))
            changed.append(Change(str(row[id_column]), version, changed_at, hint_of(row, hint_column)))
    return changed, deleted


def _message(exc: PermanentError) -> str:
    """The service's message without the "Dataverse 400: " prefix and the code the error carries already."""
    return str(exc).split(": ", 1)[-1].removesuffix(f" ({exc.code})" if exc.code else "")


def report_change_tracking(report: SetupReport, web: DataverseRows, entity: str) -> None:
    """For ``setup-crm``: whether the table tracks changes. Not required (the poll falls back to ``modifiedon``),
    and not switched on here: it is a table property an administrator sets, and cannot be turned off again."""
    what = f"change tracking on {entity}"
    definition = web.get(f"EntityDefinitions(LogicalName='{entity}')", {"$select": "ChangeTrackingEnabled"}) or {}
    if definition.get("ChangeTrackingEnabled") is True:
        report.add(what, "exists", "the poll reads only what changed, deletions included")
        return
    report.add(
        what,
        "manual",
        "turn on 'Track changes' in the table's properties (Power Apps, Tables, Properties, Advanced options) so "
        "that an unchanged poll costs one request and deleted opportunities are seen; until then the poll reads "
        "by modifiedon",
    )
