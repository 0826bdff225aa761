"""Salesforce emulator: the REST resources under ``/services/data/vNN.0`` and the counters tests read.

Describe and limits; SOQL ``query`` / ``queryAll`` with server-side cursors (``nextRecordsUrl``, batch size
from ``Sforce-Query-Options``), parent-to-child subqueries answered per row as a query result of their own
(null when the row has no such children, paged with ``nextRecordsUrl`` past the subquery batch size);
single records by Id or by external id (upsert answers 201, 200 or 204, and 300 when the external id
matches several records), with ``If-Modified-Since`` / ``If-Unmodified-Since``; sObject Collections; and
``composite`` (:mod:`emulators.salesforce.composite`). The records and their rules are the
:class:`~emulators.salesforce.store.Org`'s; authentication, quota and faults are the emulator's, which
calls these handlers with its lock held.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime as http_date
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .._server import Handler, Request, Response
from .composite import Composite
from .schema import CURRENCY_FIELD, FieldDef, SalesforceError, SObjectType, bad_request, render_value
from .sobject_collections import CollectionResult
from .soql import AllOf, ChildQuery, Lookup, Query, compile_query, sort_rows
from .store import Record

if TYPE_CHECKING:
    from .emulator import SalesforceEmulator

API = r"/services/data/(?P<version>v\d{2}\.0)"
MAX_BATCH_SIZE = 2000


@dataclass
class Cursor:
    object_name: str
    records: list[Record]
    batch_size: int


def json_body(request: Request) -> Any:
    try:
        return request.json()
    except ValueError:
        raise bad_request("JSON_PARSER_ERROR", "The request body is not valid JSON") from None


class Ledger:
    """Request, refusal, read and write counters, and the successful writes in order."""

    def __init__(self, objects: Mapping[str, SObjectType]) -> None:
        self.objects = objects
        self.counters: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []
        self.reset_counters()

    def reset_counters(self) -> None:
        self.counters = {
            "objects": {},
            "requests": 0,
            "apiRequests": 0,
            "queries": 0,
            "tokenRequests": {"client_credentials": 0, "jwt_bearer": 0, "refused": 0},
            "sessionRefusals": 0,
            "quotaRefusals": 0,
            "faults": 0,
        }
        self.track_objects()

    def track_objects(self) -> None:
        """Counters, at zero, for objects the org has gained since they were reset (multi-currency switched on)."""
        for name in self.objects:
            self.counters["objects"].setdefault(name, {"creates": 0, "updates": 0, "deletes": 0, "reads": 0})

    def checkpoint(self) -> tuple[int, dict[str, Any]]:
        """Where the writes stand, so that a rolled-back composite call can take its writes back."""
        return len(self.writes), copy.deepcopy(self.counters["objects"])

    def rollback(self, checkpoint: tuple[int, dict[str, Any]]) -> None:
        # Rolled-back writes never happened; the reads did.
        length, objects = checkpoint
        del self.writes[length:]
        for name, counts in objects.items():
            for key in ("creates", "updates", "deletes"):
                self.counters["objects"][name][key] = counts[key]

    def log(
        self, operation: str, name: str, record_id: str, body: Any, via: str, request: Request | None = None
    ) -> None:
        counter = {"create": "creates", "update": "updates", "delete": "deletes"}[operation]
        self.counters["objects"][name][counter] += 1
        sobject = self.objects[name]
        keys = [k for k in (body if isinstance(body, dict) else {}) if k not in ("attributes", "id")]
        sent = sorted(getattr(sobject.field(k), "name", k) for k in keys)
        entry: dict[str, Any] = {"operation": operation, "object": name, "id": record_id, "fields": sent, "via": via}
        if request is not None and request.header("if-unmodified-since"):
            entry["ifUnmodifiedSince"] = request.header("if-unmodified-since")
        self.writes.append(entry)


class RestApi:
    """The REST handlers; they read the emulator's live settings (batch sizes, upsert status, quota)."""

    def __init__(self, emu: SalesforceEmulator) -> None:
        self.emu = emu
        self.org = emu.org
        self.objects = emu.objects
        self.collections = emu.collections
        self.ledger = emu.ledger
        self.cursors: dict[str, Cursor] = {}
        self.composite = Composite(emu.org, emu.subrequest, emu.ledger.checkpoint, emu.ledger.rollback)

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path regex, handler) of every REST resource, in matching order."""
        obj = r"(?P<type>[A-Za-z][A-Za-z0-9_]*)"
        return [
            ("GET", rf"{API}/?", self._resources),
            ("GET", rf"{API}/limits/?", self._limits),
            ("GET", rf"{API}/(?P<kind>query|queryAll)/?", self._query),
            ("GET", rf"{API}/(?P<kind>query|queryAll)/(?P<locator>[A-Za-z0-9]+)-(?P<offset>\d+)", self._query_more),
            ("GET", rf"{API}/sobjects/?", self._describe_global),
            ("GET", rf"{API}/sobjects/{obj}/describe/?", self._describe),
            ("POST", rf"{API}/sobjects/{obj}/?", self._create),
            ("GET", rf"{API}/sobjects/{obj}/(?P<id>[^/]+)", self._get),
            ("PATCH", rf"{API}/sobjects/{obj}/(?P<id>[^/]+)", self._patch),
            ("DELETE", rf"{API}/sobjects/{obj}/(?P<id>[^/]+)", self._delete),
            ("GET", rf"{API}/sobjects/{obj}/(?P<field>[A-Za-z0-9_]+)/(?P<value>[^/]+)", self._get_by_external),
            ("PATCH", rf"{API}/sobjects/{obj}/(?P<field>[A-Za-z0-9_]+)/(?P<value>[^/]+)", self._upsert),
            ("POST", rf"{API}/composite/sobjects/?", self._collection_create),
            ("PATCH", rf"{API}/composite/sobjects/?", self._collection_update),
            ("DELETE", rf"{API}/composite/sobjects/?", self._collection_delete),
            ("GET", rf"{API}/composite/sobjects/{obj}/?", self._collection_retrieve),
            ("PATCH", rf"{API}/composite/sobjects/{obj}/(?P<field>[A-Za-z0-9_]+)/?", self._collection_upsert),
            ("POST", rf"{API}/composite/?", self._composite),
        ]

    # -- resources, limits, describe --------------------------------------------------------------------------
    def _resources(self, request: Request) -> Response:
        base = f"/services/data/{request.params['version']}"
        names = ("sobjects", "query", "queryAll", "limits", "composite")
        return Response(200, {name: f"{base}/{name}" for name in names})

    def _limits(self, request: Request) -> Response:
        return Response(
            200,
            {
                "DailyApiRequests": {
                    "Max": self.emu.daily_quota,
                    "Remaining": max(0, self.emu.daily_quota - self.emu.api_used),
                },
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            },
        )

    def _describe_global(self, request: Request) -> Response:
        return Response(
            200,
            {
                "encoding": "UTF-8",
                "maxBatchSize": 200,
                "sobjects": [
                    {"name": o.name, "label": o.name, "keyPrefix": o.key_prefix, "queryable": True}
                    for o in self.objects.values()
                ],
            },
        )

    def _describe(self, request: Request) -> Response:
        sobject = self.org.sobject(request.params["type"])
        self.ledger.counters["objects"][sobject.name]["reads"] += 1
        fields = []
        for definition in sobject.fields.values():
            values = self.org.active_currencies() if definition.name == CURRENCY_FIELD else definition.picklist
            fields.append(
                {
                    "name": definition.name,
                    "label": definition.label or definition.name,
                    "type": definition.type,
                    "length": definition.length or 0,
                    "nillable": not definition.required and definition.type != "boolean",
                    "createable": definition.createable,
                    "updateable": definition.updateable,
                    "externalId": definition.external_id,
                    "idLookup": definition.external_id or definition.name == "Id",
                    "caseSensitive": False,
                    "restrictedPicklist": definition.restricted,
                    "picklistValues": [{"value": v, "label": v, "active": True, "defaultValue": False} for v in values],
                    "referenceTo": [definition.reference_to] if definition.reference_to else [],
                    "relationshipName": definition.relationship,
                }
            )
        children = [
            {"childSObject": c.child, "field": c.field.name, "relationshipName": c.name} for c in sobject.children
        ]
        return Response(
            200,
            {
                "name": sobject.name,
                "label": sobject.name,
                "keyPrefix": sobject.key_prefix,
                "fields": fields,
                "childRelationships": children,
            },
        )

    # -- SOQL -------------------------------------------------------------------------------------------------
    def _query(self, request: Request) -> Response:
        text = request.query.get("q")
        if not text:
            raise bad_request("MALFORMED_QUERY", "A query string has to be specified")
        query: Query = compile_query(text, self.objects, self.org.resolve)
        name = query.sobject.name
        self.ledger.counters["queries"] += 1
        self.ledger.counters["objects"][name]["reads"] += 1
        include_deleted = request.params["kind"] == "queryAll"
        # The index only narrows the rows; the full condition still decides on each.
        rows = [row for row in self.org.candidates(name, query.narrowing, include_deleted) if query.predicate(row)]
        rows = sort_rows(rows, [*query.order], self.org.resolve) if query.order else rows
        rows = rows[query.offset :]
        if query.limit is not None:
            rows = rows[: query.limit]
        version, kind = request.params["version"], request.params["kind"]
        # The result set is fixed when the query runs, as a server-side cursor is; so are the children's.
        for child in query.children:
            self.ledger.counters["objects"][child.sobject.name]["reads"] += 1
        records = []
        for row in rows:
            record = self.org.render_columns(name, row, query.columns, version)
            for child in query.children:
                record[child.relation.name] = self._children(child, row, include_deleted, version, kind)
            records.append(record)
        return Response(200, self._result(Cursor(name, records, self._batch_size(request)), version, kind))

    def _children(
        self, child: ChildQuery, parent: Record, include_deleted: bool, version: str, kind: str
    ) -> dict[str, Any] | None:
        name, link = child.sobject.name, child.relation.field.name
        by_parent = Lookup(link, (parent["Id"],))
        narrowing = by_parent if child.narrowing is None else AllOf((by_parent, child.narrowing))
        candidates = self.org.candidates(name, narrowing, include_deleted)
        rows = [r for r in candidates if r.get(link) == parent["Id"] and child.predicate(r)]
        rows = sort_rows(rows, [*child.order], self.org.resolve) if child.order else rows
        if child.limit is not None:
            rows = rows[: child.limit]
        if not rows:
            return None  # Salesforce answers null, not an empty result, for a row without such children
        records = [self.org.render_columns(name, row, child.columns, version) for row in rows]
        return self._result(Cursor(name, records, self.emu.subquery_batch_size), version, kind)

    def _result(self, cursor: Cursor, version: str, kind: str) -> dict[str, Any]:
        """The first page of a result set; a cursor (query locator) keeps the rest."""
        locator = "01g" + secrets.token_hex(8)[:15]
        if len(cursor.records) > cursor.batch_size:
            self.cursors[locator] = cursor
        return self._page(cursor, locator, 0, version, kind)

    def _query_more(self, request: Request) -> Response:
        cursor = self.cursors.get(request.params["locator"])
        offset = int(request.params["offset"])
        if cursor is None or offset > len(cursor.records):
            raise bad_request("INVALID_QUERY_LOCATOR", "invalid query locator")
        self.ledger.counters["objects"][cursor.object_name]["reads"] += 1
        page = self._page(cursor, request.params["locator"], offset, request.params["version"], request.params["kind"])
        return Response(200, page)

    def _page(self, cursor: Cursor, locator: str, offset: int, version: str, kind: str) -> dict[str, Any]:
        end = offset + cursor.batch_size
        body: dict[str, Any] = {"totalSize": len(cursor.records), "done": end >= len(cursor.records)}
        if end < len(cursor.records):
            body["nextRecordsUrl"] = f"/services/data/{version}/{kind}/{locator}-{end}"
        else:
            self.cursors.pop(locator, None)
        body["records"] = cursor.records[offset:end]
        return body

    # -- composite ----------------------------------------------------------------------------------------------
    def _composite(self, request: Request) -> Response:
        return self.composite.run(request, json_body(request))

    def _batch_size(self, request: Request) -> int:
        options = request.header("sforce-query-options") or ""
        match = re.search(r"batchSize\s*=\s*(\d+)", options)
        if match is None:
            return self.emu.query_batch_size
        # Salesforce treats the size as a hint between 200 and 2000.
        return max(self.emu.min_batch_size, min(MAX_BATCH_SIZE, int(match.group(1))))

    # -- single records -----------------------------------------------------------------------------------------
    def _create(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        body = json_body(request)
        row = self.org.insert(name, body)
        self.ledger.log("create", name, row["Id"], body, "sobject")
        return Response(201, {"id": row["Id"], "success": True, "errors": []})

    def _get(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        row = self.org.get(name, unquote(request.params["id"]))
        if row is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        self.ledger.counters["objects"][name]["reads"] += 1
        since = self._http_date(request, "if-modified-since")
        if since is not None and row["SystemModstamp"].replace(microsecond=0) <= since:
            return Response(304)
        fields = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()] or None
        body = self.org.render(name, row, request.params["version"], fields)
        return Response(200, body, {"Last-Modified": http_date(row["SystemModstamp"], usegmt=True)})

    def _patch(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        body = json_body(request)
        row = self.org.get(name, unquote(request.params["id"]))
        if row is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        self._check_unmodified(request, row)
        self.org.update(name, row["Id"], body)
        self.ledger.log("update", name, row["Id"], body, "sobject", request)
        return Response(204)

    def _delete(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        row = self.org.delete(name, unquote(request.params["id"]))
        self.ledger.log("delete", name, row["Id"], {}, "sobject")
        return Response(204)

    def _external_field(self, request: Request) -> tuple[str, FieldDef]:
        sobject = self.org.sobject(request.params["type"])
        definition = sobject.field(request.params["field"])
        if definition is None or not (definition.external_id or definition.name == "Id"):
            raise SalesforceError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {request.params['field']}",
            )
        return sobject.name, definition

    def _matches(self, name: str, definition: FieldDef, value: str) -> list[Record]:
        if definition.name == "Id":
            row = self.org.get(name, value)
            return [row] if row else []
        return self.org.match_external(name, definition, value)

    def _multiple_choices(self, name: str, rows: list[Record], version: str) -> Response:
        # Nothing is written; the body lists the matching records so a person can merge them.
        return Response(300, [f"/services/data/{version}/sobjects/{name}/{row['Id']}" for row in rows])

    def _get_by_external(self, request: Request) -> Response:
        name, definition = self._external_field(request)
        rows = self._matches(name, definition, unquote(request.params["value"]))
        self.ledger.counters["objects"][name]["reads"] += 1
        if len(rows) > 1:
            return self._multiple_choices(name, rows, request.params["version"])
        if not rows:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        fields = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()] or None
        return Response(200, self.org.render(name, rows[0], request.params["version"], fields))

    def _upsert(self, request: Request) -> Response:
        name, definition = self._external_field(request)
        value = unquote(request.params["value"])
        body = json_body(request)
        if not isinstance(body, dict):
            raise bad_request("JSON_PARSER_ERROR", "The request body must be a JSON object")
        for key in body:
            if key.lower() in ("id", definition.name.lower()):
                raise bad_request(
                    "INVALID_FIELD",
                    f"The {key} field should not be specified in the sobject data when upserting by "
                    f"{definition.name}: it is taken from the URL",
                    [key],
                )
        rows = self._matches(name, definition, value)
        if len(rows) > 1:
            return self._multiple_choices(name, rows, request.params["version"])
        if not rows:
            if definition.name == "Id":
                raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
            row = self.org.insert(name, {**body, definition.name: value})
            self.ledger.log("create", name, row["Id"], {**body, definition.name: value}, "upsert")
            return Response(201, {"id": row["Id"], "success": True, "errors": [], "created": True})
        row = rows[0]
        self._check_unmodified(request, row)
        self.org.update(name, row["Id"], body)
        self.ledger.log("update", name, row["Id"], body, "upsert", request)
        if self.emu.upsert_update_status == 204:
            return Response(204)
        return Response(200, {"id": row["Id"], "success": True, "errors": [], "created": False})

    def _http_date(self, request: Request, header: str) -> datetime | None:
        raw = request.header(header)
        if raw is None:
            return None
        try:
            moment = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            moment = None
        if moment is None or moment.tzinfo is None:
            raise bad_request("INVALID_HEADER_VALUE", f"{header} is not a valid HTTP date: {raw}")
        return moment.astimezone(UTC)

    def _check_unmodified(self, request: Request, row: Record) -> None:
        since = self._http_date(request, "if-unmodified-since")
        # HTTP dates have whole seconds, so the record's stamp is compared at that precision.
        if since is not None and row["SystemModstamp"].replace(microsecond=0) > since:
            raise SalesforceError(
                412,
                "PRECONDITION_FAILED",
                f"The requested resource has been modified since {request.header('if-unmodified-since')} "
                f"(SystemModstamp {render_value(row['SystemModstamp'])})",
            )

    # -- collections --------------------------------------------------------------------------------------------
    def _collection_body(self, request: Request) -> tuple[list[Any], bool]:
        body = json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise bad_request("JSON_PARSER_ERROR", "The request body needs a 'records' array")
        return body["records"], bool(body.get("allOrNone", False))

    def _finish(self, result: CollectionResult) -> Response:
        for operation, name, record_id, body, via in result.committed:
            self.ledger.log(operation, name, record_id, body, via)
        return Response(200, result.results)

    def _collection_create(self, request: Request) -> Response:
        records, all_or_none = self._collection_body(request)
        return self._finish(self.collections.create(records, all_or_none))

    def _collection_update(self, request: Request) -> Response:
        records, all_or_none = self._collection_body(request)
        return self._finish(self.collections.update(records, all_or_none))

    def _collection_upsert(self, request: Request) -> Response:
        records, all_or_none = self._collection_body(request)
        name, definition = self._external_field(request)
        return self._finish(self.collections.upsert(name, definition, records, all_or_none))

    def _collection_delete(self, request: Request) -> Response:
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        all_or_none = request.query.get("allOrNone", "false").lower() == "true"
        return self._finish(self.collections.delete(ids, all_or_none))

    def _collection_retrieve(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        fields = [f for f in request.query.get("fields", "").split(",") if f]
        if not ids or not fields:
            raise bad_request("MISSING_ARGUMENT", "ids and fields are required")
        self.ledger.counters["objects"][name]["reads"] += 1
        version = request.params["version"]
        rows = [self.org.get(name, record_id) for record_id in ids]
        return Response(200, [self.org.render(name, row, version, fields) if row else None for row in rows])
