"""The change feed of one Salesforce object: records matching a condition, read by ``SystemModstamp``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from ...ports import Change
from .api import SalesforceApi
from .mapping import parse_modstamp, soql, soql_datetime


def modstamp_changes(
    api: SalesforceApi, sobject: str, where: str, since: datetime | None, page_size: int, hint_field: str | None = None
) -> Iterator[Change]:
    """Records of ``sobject`` matching ``where`` with ``SystemModstamp`` at or after ``since`` (whole seconds), oldest
    first, ties broken by Id so that paging is stable: the Id, the stamp (also the version) and the referral id the
    record names (``hint_field``), nothing else."""
    if since is not None:
        where += f" AND SystemModstamp >= {soql_datetime(since)}"
    fields = ["Id", "SystemModstamp", *([hint_field] if hint_field else [])]
    query = soql(sobject, fields, where, "SystemModstamp ASC, Id ASC")
    for page in api.query_pages(query, page_size):
        for row in page:
            stamp, hint = row.get("SystemModstamp"), row.get(hint_field) if hint_field else None
            changed_at = parse_modstamp(stamp) if stamp else None
            yield Change(str(row["Id"]), str(stamp or ""), changed_at, str(hint) if hint else None)
