"""The change feed of one Dataverse table: rows matching a filter, read by ``modifiedon``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from ...ports import Change
from .mapping import odata_datetime, parse_datetime
from .webapi import DataverseRows


def modified_changes(
    web: DataverseRows, entity_set: str, id_column: str, odata_filter: str, since: datetime | None, page_size: int
) -> Iterator[Change]:
    """Rows of ``entity_set`` matching ``odata_filter`` modified at or after ``since``, oldest change first, ties
    broken by id so that paging is stable: the id, the etag (the row version) and ``modifiedon``, nothing else."""
    if since is not None:
        odata_filter += f" and modifiedon ge {odata_datetime(since)}"
    params = {
        "$select": f"{id_column},modifiedon",
        "$filter": odata_filter,
        "$orderby": f"modifiedon asc,{id_column} asc",
    }
    for row in web.rows(entity_set, params, page_size):
        yield Change(str(row[id_column]), str(row.get("@odata.etag") or ""), parse_datetime(row.get("modifiedon")))
