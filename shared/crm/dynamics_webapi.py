"""Row-level calls of the Dataverse Web API, on top of the shared :class:`~shared.httpclient.ApiClient`.

Reads ask for a page size with ``Prefer: odata.maxpagesize`` and follow ``@odata.nextLink``; creates
return the new row; updates are conditional on the etag the caller read. Numbers are parsed as
:class:`~decimal.Decimal` so that money keeps the digits Dataverse stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from ..httpclient import ApiClient

MAX_PAGE_SIZE = 5000
LOOKUP_ANNOTATION = "Microsoft.Dynamics.CRM.lookuplogicalname"
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
PRIMARY_KEYS = {"opportunities": "opportunityid", "accounts": "accountid", "contacts": "contactid"}


class DataverseRows:
    """GET, paged reads, create and conditional update of rows through one :class:`ApiClient`."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def get(
        self, path: str, params: Mapping[str, str] | None = None, prefer: str | None = None, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        headers = {"Prefer": prefer} if prefer else None
        response = self.api.request(
            "GET", path, params=params, headers=headers, ok_statuses=(404,) if missing_ok else ()
        )
        if response.status_code == 404:
            return None
        data: dict[str, Any] = response.json(parse_float=Decimal)
        return data

    def rows(
        self, entity_set: str, params: Mapping[str, str], page_size: int = MAX_PAGE_SIZE, annotations: bool = False
    ) -> Iterator[dict[str, Any]]:
        prefer = f"odata.maxpagesize={max(1, min(page_size, MAX_PAGE_SIZE))}"
        if annotations:
            prefer += f',odata.include-annotations="{LOOKUP_ANNOTATION}"'
        path: str | None = entity_set
        query: Mapping[str, str] | None = params
        while path:
            page = self.get(path, query, prefer) or {}
            yield from page.get("value", [])
            # The nextLink is used as given: re-encoding its skiptoken breaks paging.
            path, query = page.get("@odata.nextLink"), None

    def first(self, entity_set: str, select: str, odata_filter: str) -> dict[str, Any] | None:
        params = {"$select": select, "$filter": odata_filter, "$orderby": "createdon asc"}
        return next(iter(self.rows(entity_set, params, page_size=1)), None)

    def create(self, entity_set: str, body: dict[str, Any], select: str) -> dict[str, Any]:
        response = self.api.request(
            "POST", entity_set, params={"$select": select}, json=body, headers={"Prefer": "return=representation"}
        )
        created: dict[str, Any] = response.json(parse_float=Decimal)
        return created

    def patch(self, entity_set: str, record_id: str, body: dict[str, Any], etag: str | None) -> str:
        """Conditional update; returns the new etag. ``If-Match: *`` at least forbids an accidental create."""
        response = self.api.request(
            "PATCH",
            f"{entity_set}({record_id})",
            params={"$select": PRIMARY_KEYS[entity_set]},
            json=body,
            headers={"If-Match": etag or "*", "Prefer": "return=representation"},
        )
        return str(response.json().get("@odata.etag") or response.headers.get("ETag") or "")
