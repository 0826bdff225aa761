"""Row-level calls of the Dataverse Web API, on top of the shared :class:`~shared.httpclient.ApiClient`.

Reads ask for a page size with ``Prefer: odata.maxpagesize`` and follow ``@odata.nextLink``; creates
return the new row; updates are conditional on the etag the caller read. Numbers are parsed as
:class:`~decimal.Decimal` so that money keeps the digits Dataverse stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from ...domain.errors import PermanentError, PreconditionFailed
from ...httpclient import ApiClient

MAX_PAGE_SIZE = 5000
LOOKUP_ANNOTATION = "Microsoft.Dynamics.CRM.lookuplogicalname"
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
_DEFAULT_PORTS = {"https": 443, "http": 80}
PRIMARY_KEYS = {"opportunities": "opportunityid", "accounts": "accountid", "contacts": "contactid"}


def web_api_root(org_url: str, api_version: str) -> str:
    """The Web API's address in an organisation, e.g. ``https://org.crm.dynamics.com/api/data/v9.2``."""
    return f"{org_url.rstrip('/')}/api/data/{api_version}"


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
            next_link = page.get("@odata.nextLink")
            path, query = (self.pinned(str(next_link)) if next_link else None), None

    def pinned(self, link: str) -> str:
        """The next link, if it points back into this environment's Web API: same scheme, host, port and
        API path. The bearer token goes with every page request, so anything else is refused unsent."""
        base = urlsplit(self.api.base_url)
        try:
            parts = urlsplit(link)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            parts, port = None, None
        if (
            parts is None
            or parts.scheme.lower() != base.scheme.lower()
            or (parts.hostname or "") != (base.hostname or "").lower()
            or port != (base.port or _DEFAULT_PORTS.get(base.scheme.lower()))
            or "@" in parts.netloc
            or not parts.path.startswith(base.path.rstrip("/") + "/")
            or ".." in parts.path.split("/")
        ):
            origin = (
                f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
                if parts and parts.netloc
                else "a relative or unreadable link"
            )
            raise PermanentError(
                self.api.service,
                f"the @odata.nextLink points outside {base.scheme}://{base.netloc}{base.path} (to {origin}); "
                "it was not followed, so the access token was not sent there",
            )
        return link

    def first(self, entity_set: str, select: str, odata_filter: str) -> dict[str, Any] | None:
        params = {"$select": select, "$filter": odata_filter, "$orderby": "createdon asc"}
        return next(iter(self.rows(entity_set, params, page_size=1)), None)

    def create(self, entity_set: str, body: dict[str, Any], select: str) -> dict[str, Any]:
        """Create a row under an id chosen here, with a create-only upsert (``PATCH <set>(<id>)`` with
        ``If-None-Match: *``). A lost answer is then harmless: the client sends the PATCH again, and a
        412 means the row under our id exists, so the first attempt made it and that row is the answer."""
        path = f"{entity_set}({uuid.uuid4()})"
        try:
            response = self.api.request(
                "PATCH",
                path,
                params={"$select": select},
                json=body,
                headers={"If-None-Match": "*", "Prefer": "return=representation"},
            )
        except PreconditionFailed:
            # 412 can also be another row holding the same alternate key: then nothing is under our id.
            existing = self.get(path, {"$select": select}, missing_ok=True)
            if existing is None:
                raise
            return existing
        created: dict[str, Any] = response.json(parse_float=Decimal)
        return created

    def patch(
        self,
        entity_set: str,
        record_id: str,
        body: dict[str, Any],
        etag: str | None,
        select: str | None = None,
        prefer: str | None = None,
    ) -> dict[str, Any]:
        """Conditional update; returns the row as written (``select``, or only its key and etag), so nothing
        needs reading again. ``If-Match: *`` at least forbids an accidental create."""
        response = self.api.request(
            "PATCH",
            f"{entity_set}({record_id})",
            params={"$select": select or PRIMARY_KEYS[entity_set]},
            json=body,
            headers={
                "If-Match": etag or "*",
                "Prefer": ",".join(["return=representation", *([prefer] if prefer else [])]),
            },
        )
        row: dict[str, Any] = response.json(parse_float=Decimal)
        row.setdefault("@odata.etag", response.headers.get("ETag") or "")
        return row
