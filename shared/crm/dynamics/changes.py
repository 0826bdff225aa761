"""The change feed of one Dataverse table: rows matching a filter, read by ``modifiedon``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ...ports import Change
from .mapping import odata_datetime, parse_datetime
from .webapi import DataverseRows


def modified_changes(
    web: DataverseRows,
    entity_set: str,
    id_column: str,
    odata_filter: str,
    since: datetime | None,
    page_size: int,
    hint_column: str | None = None,
) -> Iterator[Change]:
    """Rows of ``entity_set`` matching ``odata_filter`` modified at or after ``since``, oldest change first, ties
    broken by id so that paging is stable: the id, the etag (the row version), ``modifiedon`` and the referral id
    the row names (``hint_column``), nothing else."""
    if since is not None:
        odata_filter += f" and modifiedon ge {odata_datetime(since)}"
    params = {
        "$select": ",".join([id_column, "modifiedon", *([hint_column] if hint_column else [])]),
        "$filter": odata_filter,
        "$orderby": f"modifiedon asc,{id_column} asc",
    }
    for row in web.rows(entity_set, params, page_size):
        version, changed_at = str(row.get("@odata.etag") or ""), parse_datetime(row.get("modifiedon"))
        yield Change(str(row[id_column]), version, changed_at, hint_of(row, hint_column))


def hint_of(row: dict[str, Any], hint_column: str | None) -> str | None:
    """The referral id a row names, if it was read and holds one."""
    value = row.get(hint_column) if hint_column else None
    return str(value) if value else None
