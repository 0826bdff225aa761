"""Dataverse emulator: change tracking, the delta queries an external system synchronises with.

``GET <set>?$select=...`` with ``Prefer: odata.track-changes`` reads every row of the table, answers
``Preference-Applied: odata.track-changes``, and ends (on its last page) with an ``@odata.deltaLink`` carrying an
opaque ``$deltatoken``. A GET of that link returns what changed since: rows added or changed as normal entities,
deleted rows as ``$deletedEntity`` entries (``{"id", "reason": "deleted"}``), with an ``@odata.context`` ending in
``/$delta`` and a new deltaLink; nothing changed is an empty ``value``. Pages follow ``Prefer: odata.maxpagesize``
with an ``@odata.nextLink`` like any read. As on the service, ``$filter``, ``$orderby``, ``$expand`` and ``$top``
are refused with track-changes (so a client cannot track only some rows), a table without change tracking refuses
the request, and a token older than the organisation's expiry (7 days by default) is refused: do a full read.

``GET EntityDefinitions(LogicalName='<table>')?$select=ChangeTrackingEnabled`` says whether a table tracks changes.

A change is a row whose version (the etag's number, one counter for the organisation) is newer than the token's;
a delete takes a version too (:attr:`Store.deleted`), so a row created and deleted between two reads shows up as
deleted, as the service documents.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

from .._server import Handler, Request, Response
from .metadata import table_named
from .odata import decode_skiptoken, encode_skiptoken, parse_select
from .schema import CODE_QUERY, ODataError, Table, bad_request
from .store import Row, Store

TRACK_CHANGES = "odata.track-changes"
DEFAULT_EXPIRY = timedelta(days=7)  # organization.ExpireChangeTrackingInDays
MAX_PAGE_SIZE = 5000
REFUSED_OPTIONS = ("$filter", "$orderby", "$expand", "$top", "$count", "$skip", "$apply", "$search")
_TOKEN_TIME = "%m/%d/%Y %H:%M:%S"
COUNTS = ("full", "delta", "refused")  # pages of full reads, pages of delta reads, refused requests
_PAGE_MARK = "delta"  # in a delta read's $skiptoken: the next page is served here too

# Neither error's exact code and text are confirmed against a live organisation (the documentation only says the
# table must have change tracking enabled, and that an expired token raises an error and needs a full sync); these
# are plausible forms, and a client must not depend on them beyond the status.
CODE_NOT_TRACKED = "0x80044351"
CODE_TOKEN_EXPIRED = "0x80044352"


@dataclass
class ChangeTrackingSettings:
    """The organisation's change tracking: tables without it (entity sets) and how long a token lasts."""

    untracked: set[str] = field(default_factory=set)
    expiry: timedelta = DEFAULT_EXPIRY


@dataclass(frozen=True)
class _Token:
    version: int
    issued: datetime


class ChangeTracking:
    """Track-changes reads and delta-link reads over a :class:`Store`; the caller holds nothing, this takes the
    emulator's lock around state."""

    def __init__(self, store: Store, lock: AbstractContextManager[Any], settings: ChangeTrackingSettings) -> None:
        self.store = store
        self.lock = lock
        self.settings = settings
        self.counts = dict.fromkeys(COUNTS, 0)

    def routes(self, api: str, base: Callable[[Request], str]) -> list[tuple[str, str, Handler]]:
        """``GET EntityDefinitions(LogicalName='<table>')``: the table's metadata, where a client reads
        ``ChangeTrackingEnabled`` (only that and the table's names and metadata id)."""

        def definition(request: Request) -> Response:
            return self._definition(request, base(request))

        return [("GET", rf"{api}/EntityDefinitions\(LogicalName='(?P<logical>\w+)'\)", definition)]

    def _definition(self, request: Request, base: str) -> Response:
        table = table_named(self.store.tables, request.params["logical"])
        unsupported = [name for name in request.query if name.startswith("$") and name != "$select"]
        if unsupported:
            raise bad_request(f"The query option {unsupported[0]} is not supported by the Dataverse emulator.")
        with self.lock:
            values: dict[str, Any] = {
                "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/entity/{table.logical_name}")),
                "LogicalName": table.logical_name,
                "EntitySetName": table.entity_set,
                "ChangeTrackingEnabled": table.entity_set not in self.settings.untracked,
            }
        wanted = [n.strip() for n in request.query.get("$select", "").split(",") if n.strip()] or list(values)
        for name in wanted:
            if name not in values:
                raise bad_request(
                    f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.EntityMetadata'.",
                    CODE_QUERY,
                )
        body = {"@odata.context": f"{base}/$metadata#EntityDefinitions({','.join(wanted)})/$entity"}
        return Response(200, body | {name: values[name] for name in dict.fromkeys([*wanted, "MetadataId"])})

    def handles(self, request: Request, prefer: dict[str, str]) -> bool:
        """Whether a collection GET is a delta read: the preference, a delta link, or a page of one."""
        if TRACK_CHANGES in prefer or "$deltatoken" in request.query:
            return True
        skiptoken = request.query.get("$skiptoken")
        return bool(skiptoken) and _page_mark(skiptoken)

    def read(self, request: Request, table: Table, base: str, prefer: dict[str, str]) -> Response:
        try:
            response = self._read(request, table, base, prefer)
        except ODataError:
            with self.lock:
                self.counts["refused"] += 1
            raise
        with self.lock:
            self.counts["delta" if "$deltatoken" in request.query else "full"] += 1
        return response

    def _read(self, request: Request, table: Table, base: str, prefer: dict[str, str]) -> Response:
        for name in request.query:
            if name in REFUSED_OPTIONS:
                # The service's words for $filter; the same sentence for the other options is assumed.
                raise bad_request(f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.')
            if name.startswith("$") and name not in ("$select", "$deltatoken", "$skiptoken"):
                raise bad_request(f"The query option {name} is not supported by the Dataverse emulator.", CODE_QUERY)
        select_text = request.query.get("$select", "")
        select = parse_select(table, select_text) if select_text else None
        max_page = prefer.get("odata.maxpagesize")
        if max_page is not None and (not max_page.isdigit() or int(max_page) < 1):
            raise bad_request(f"Invalid odata.maxpagesize '{max_page}'.")
        page_size = min(int(max_page) if max_page is not None else MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        with self.lock:
            if table.entity_set in self.settings.untracked:
                raise bad_request(
                    f"Change tracking is not enabled for the entity '{table.logical_name}'. Enable 'Track changes' "
                    "on the table to use odata.track-changes.",
                    CODE_NOT_TRACKED,
                )
            token = self._token(request.query["$deltatoken"]) if "$deltatoken" in request.query else None
            after = self._position(request.query.get("$skiptoken"))
            entries = self._entries(table, token)
            pending = [entry for entry in entries if entry[0] > after]
            page, more = pending[:page_size], len(pending) > page_size
            value = [self._render(table, base, entry[1], select) for entry in page]
            body: dict[str, Any] = {"@odata.context": self._context(base, table, select, token)}
            body["value"] = value
            kept = [f"$select={quote(select_text, safe=',')}"] if select_text else []
            if token is not None:
                kept.append(f"$deltatoken={_quote_token(token)}")
            if more:
                mark = encode_skiptoken({"after": [page[-1][0]], _PAGE_MARK: True})
                body["@odata.nextLink"] = f"{base}/{table.entity_set}?{'&'.join([*kept, f'$skiptoken={mark}'])}"
            else:
                fresh = _Token(self.store.version, self.store.clock())
                links = [part for part in kept if not part.startswith("$deltatoken=")]
                body["@odata.deltaLink"] = (
                    f"{base}/{table.entity_set}?{'&'.join([*links, f'$deltatoken={_quote_token(fresh)}'])}"
                )
        applied = [TRACK_CHANGES] if TRACK_CHANGES in prefer else []
        if max_page is not None:
            applied.append(f"odata.maxpagesize={page_size}")
        return Response(200, body, {"Preference-Applied": ",".join(applied)} if applied else {})

    # -- the rows --------------------------------------------------------------------------------------------
    def _entries(self, table: Table, token: _Token | None) -> list[tuple[int, Row | str]]:
        """(version, live row or deleted id) in version order: every row for a full read; for a delta read, the
        rows written and deleted after the token."""
        since = token.version if token is not None else 0
        entries: list[tuple[int, Row | str]] = [
            (int(row.values["versionnumber"]), row)
            for row in self.store.rows[table.entity_set].values()
            if int(row.values["versionnumber"]) > since
        ]
        if token is not None:
            entries += [
                (version, record_id)
                for entity_set, record_id, version in self.store.deleted
                if entity_set == table.entity_set and version > since
            ]
        entries.sort(key=lambda entry: entry[0])
        return entries

    def _render(self, table: Table, base: str, entry: Row | str, select: list[str] | None) -> dict[str, Any]:
        if isinstance(entry, str):
            return {
                "@odata.context": f"{base}/$metadata#{table.entity_set}/$deletedEntity",
                "id": entry,
                "reason": "deleted",
            }
        return self.store.render(table, entry, select)

    @staticmethod
    def _context(base: str, table: Table, select: list[str] | None, token: _Token | None) -> str:
        columns = f"({','.join(select)})" if select else ""
        return f"{base}/$metadata#{table.entity_set}{columns}" + ("/$delta" if token is not None else "")

    # -- tokens ----------------------------------------------------------------------------------------------
    def _token(self, text: str) -> _Token:
        version_text, _, issued_text = unquote(text).partition("!")
        try:
            token = _Token(int(version_text), datetime.strptime(issued_text, _TOKEN_TIME).replace(tzinfo=UTC))
        except ValueError:
            raise bad_request("The $deltatoken is not valid.", CODE_QUERY) from None
        if token.version > self.store.version:  # a token of another organisation (or from before a reset)
            raise bad_request("The $deltatoken is not valid.", CODE_QUERY)
        if self.store.clock() - token.issued > self.settings.expiry:
            raise ODataError(
                400,
                "Version stamp associated with the client has expired. Please perform a full sync.",
                CODE_TOKEN_EXPIRED,
            )
        return token

    @staticmethod
    def _position(skiptoken: str | None) -> int:
        """The version the page starts after: 0 for the first page of a read (every version is newer)."""
        if not skiptoken:
            return 0
        payload = decode_skiptoken(skiptoken)
        after = payload["after"]
        if not payload.get(_PAGE_MARK) or len(after) != 1 or not isinstance(after[0], int):
            raise bad_request("The $skiptoken does not match this query.", CODE_QUERY)
        return int(after[0])


def _quote_token(token: _Token) -> str:
    return quote(f"{token.version}!{token.issued.astimezone(UTC).strftime(_TOKEN_TIME)}", safe="")


def _page_mark(skiptoken: str) -> bool:
    try:
        return bool(decode_skiptoken(skiptoken).get(_PAGE_MARK))
    except ODataError:
        return False
