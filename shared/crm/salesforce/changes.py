"""The change feed of one Salesforce object: records matching a condition, read by ``SystemModstamp``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from ...ports import Change
from .api import SalesforceApi
from .mapping import parse_modstamp, soql, soql_datetime


def modstamp_changes(
    api: SalesforceApi, sobject: str, where: str, since: datetime | None, page_size: int
) -> Iterator[Change]:
    """Records of ``sobject`` matching ``where`` with ``SystemModstamp`` at or after ``since`` (whole seconds), oldest
    first, ties broken by Id so that paging is stable: the Id and the stamp (also the version), nothing else."""
    if since is not None:
        where += f" AND SystemModstamp >= {soql_datetime(since)}"
    query = soql(sobject, ["Id", "SystemModstamp"], where, "SystemModstamp ASC, Id ASC")
    for page in api.query_pages(query, page_size):
        for row in page:
            stamp = row.get("SystemModstamp")
            yield Change(str(row["Id"]), str(stamp or ""), parse_modstamp(stamp) if stamp else None)
