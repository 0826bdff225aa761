"""Dataverse emulator: the ``/api/data/v9.2`` operations, and the counters and write log tests read.

Collections are read with ``$select`` / ``$filter`` / ``$orderby`` / ``$top`` / ``$count`` and paged by
``Prefer: odata.maxpagesize`` with an ``@odata.nextLink``; single rows are read, created (POST, or PATCH by
key as an upsert), updated with ``If-Match`` / ``If-None-Match``, and deleted; ``WinOpportunity`` and
``LoseOpportunity`` close an opportunity with its close activity. The rows and their rules are the
:class:`~emulators.dataverse.store.Store`'s; this module is the HTTP on top of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC
from functools import cmp_to_key
from typing import Any
from urllib.parse import unquote

from .._server import Handler, Request, Response
from .deep_insert import insert_tree
from .delta import ChangeTracking
from .expand import expanded, parse_expands
from .metadata import attributes, table_named
from .odata import (
    encode_skiptoken,
    json_body,
    parse_expand,
    parse_key,
    parse_prefer,
    parse_query,
    parse_select,
    sort_comparator,
    wants_annotations,
)
from .schema import (
    CODE_ALREADY_CLOSED,
    CODE_CONCURRENCY,
    CODE_DUPLICATE,
    CODE_QUERY,
    INTEGRATION_USER_ID,
    OPPORTUNITY_STATUSES,
    READ_ONLY,
    STATE_NAMES,
    ODataError,
    Table,
    bad_request,
    coerce,
    property_error,
)
from .store import Row, Store

API = "/api/data/v9.2"
MAX_PAGE_SIZE = 5000


class Ledger:
    """Request, read, write and action counters, and the successful writes in order."""

    def __init__(self, entity_sets: Iterable[str]) -> None:
        self.entity_sets = tuple(entity_sets)
        self.counters: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []
        self.reset_counters()

    def reset_counters(self) -> None:
        self.counters = {
            "tables": {
                name: {"creates": 0, "updates": 0, "deletes": 0, "actions": 0, "reads": 0} for name in self.entity_sets
            },
            "actions": {"WinOpportunity": 0, "LoseOpportunity": 0},
            "requests": 0,
            "faults": 0,
        }

    def log_write(
        self,
        operation: str,
        table: Table,
        record_id: str,
        request: Request,
        body: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        counter = {"create": "creates", "update": "updates", "delete": "deletes", "action": "actions"}[operation]
        self.counters["tables"][table.entity_set][counter] += 1
        self.writes.append(
            {
                "operation": operation,
                "table": table.entity_set,
                "id": record_id,
                "method": request.method,
                "path": unquote(request.path),
                "columns": sorted(body) if body else [],
                "if_match": request.header("if-match"),
                "if_none_match": request.header("if-none-match"),
                **extra,
            }
        )


class WebApi:
    """The Web API handlers over a :class:`Store`; every handler takes the emulator's lock around state."""

    def __init__(
        self, store: Store, ledger: Ledger, lock: AbstractContextManager[Any], port: Callable[[], int]
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.lock = lock
        self.port = port
        self.change_tracking: ChangeTracking | None = None  # delta reads (emulators.dataverse.delta), when set

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path regex, handler) of every Web API operation, in matching order."""
        entity = rf"{API}/(?P<set>[A-Za-z_]+)\((?P<key>.*)\)"
        return [
            ("GET", rf"{API}/?", self._service_document),
            ("GET", rf"{API}/WhoAmI(?:\(\))?", self._who_am_i),
            (
                "GET",
                rf"{API}/EntityDefinitions\(LogicalName='(?P<logical>\w+)'\)/Attributes"
                rf"(?:/Microsoft\.Dynamics\.CRM\.(?P<cast>\w+AttributeMetadata))?",
                self._attributes,
            ),
            (
                "POST",
                rf"{API}/(?:Microsoft\.Dynamics\.CRM\.)?(?P<action>WinOpportunity|LoseOpportunity)",
                self._close_opportunity,
            ),
            ("GET", rf"{API}/(?P<set>[A-Za-z_]+)/(?:\$|%24)count", self._count),
            ("DELETE", rf"{entity}/(?P<prop>[A-Za-z_]+)(?P<ref>/(?:\$|%24)ref)?", self._delete_property),
            ("GET", entity, self._get_entity),
            ("PATCH", entity, self._patch_entity),
            ("DELETE", entity, self._delete_entity),
            ("GET", rf"{API}/(?P<set>[A-Za-z_]+)", self._get_collection),
            ("POST", rf"{API}/(?P<set>[A-Za-z_]+)", self._post_collection),
        ]

    # -- helpers ----------------------------------------------------------------------------------------------
    def _entity_key(self, request: Request) -> tuple[Table, str | dict[str, Any]]:
        table = self.store.table(request.params["set"])
        return table, parse_key(unquote(request.params["key"]))

    def _base(self, request: Request) -> str:
        return f"http://{request.header('host') or f'127.0.0.1:{self.port()}'}{API}"

    def _context(self, request: Request, table: Table, select: list[str] | None) -> str:
        suffix = f"({','.join(select)})" if select else ""
        return f"{self._base(request)}/$metadata#{table.entity_set}{suffix}"

    def _next_link(self, request: Request, table: Table, token: str) -> str:
        raw_query = request.raw_path.partition("?")[2]
        kept = [part for part in raw_query.split("&") if part and unquote(part.partition("=")[0]) != "$skiptoken"]
        return f"{self._base(request)}/{table.entity_set}?{'&'.join([*kept, f'$skiptoken={token}'])}"

    def _write_response(self, request: Request, table: Table, row: Row, created: bool) -> Response:
        prefer = parse_prefer(request.header("prefer"))
        headers = {
            "OData-EntityId": f"{self._base(request)}/{table.entity_set}({row.values[table.pk]})",
            "ETag": self.store.etag(row),
        }
        if prefer.get("return") != "representation":
            return Response(204, None, headers)
        select = parse_select(table, request.query["$select"]) if request.query.get("$select") else None
        body = {
            "@odata.context": f"{self._base(request)}/$metadata#{table.entity_set}/$entity",
            **self.store.render(table, row, select, wants_annotations(prefer)),
        }
        headers["Preference-Applied"] = "return=representation"
        del headers["OData-EntityId"]
        return Response(201 if created else 200, body, headers)

    def _check_if_match(self, row: Row, if_match: str | None) -> None:
        if if_match is None or if_match.strip() == "*":
            return
        offered = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
        if self.store.etag(row).removeprefix("W/") not in offered:
            raise ODataError(
                412,
                "The version of the existing record doesn't match the RowVersion property provided.",
                CODE_CONCURRENCY,
            )

    # -- reads ------------------------------------------------------------------------------------------------
    def _service_document(self, request: Request) -> Response:
        return Response(
            200,
            {
                "@odata.context": f"{self._base(request)}/$metadata",
                "value": [{"name": n, "kind": "EntitySet", "url": n} for n in self.store.tables],
            },
        )

    def _who_am_i(self, request: Request) -> Response:
        ids = {
            name: str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/{name}"))
            for name in ("BusinessUnitId", "OrganizationId")
        }
        ids["UserId"] = INTEGRATION_USER_ID  # the seeded application user, owner of what it creates
        return Response(
            200, {"@odata.context": f"{self._base(request)}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", **ids}
        )

    def _attributes(self, request: Request) -> Response:
        table = table_named(self.store.tables, request.params["logical"])
        cast = request.params.get("cast")
        with self.lock:
            value = attributes(table, cast, dict(request.query))
        kind = f"/Microsoft.Dynamics.CRM.{cast}" if cast else ""
        context = f"{self._base(request)}/$metadata#EntityDefinitions('{table.logical_name}')/Attributes{kind}"
        return Response(200, {"@odata.context": context, "value": value})

    def _get_collection(self, request: Request) -> Response:
        table = self.store.table(request.params["set"])
        tracking, wanted = self.change_tracking, parse_prefer(request.header("prefer"))
        if tracking is not None and tracking.handles(request, wanted):
            with self.lock:
                self.ledger.counters["tables"][table.entity_set]["reads"] += 1
            return tracking.read(request, table, self._base(request), wanted)
        options = dict(request.query)
        expand_text = options.pop("$expand", None)
        query = parse_query(table, options)
        expansions = parse_expands(table, expand_text, self.store.tables) if expand_text is not None else []
        prefer = parse_prefer(request.header("prefer"))
        max_page = prefer.get("odata.maxpagesize")
        if max_page is not None and (not max_page.isdigit() or int(max_page) < 1):
            raise bad_request(f"Invalid odata.maxpagesize '{max_page}'.")
        annotations = wants_annotations(prefer)
        order = [*query.order, (table.pk, False)]
        with self.lock:
            self.ledger.counters["tables"][table.entity_set]["reads"] += 1
            rows = [row for row in self.store.rows[table.entity_set].values() if query.predicate(row.values)]
            compare = sort_comparator(table, order)

            def sort_values(row: Row) -> list[Any]:
                return [row.values.get(column) for column, _ in order]

            rows.sort(key=cmp_to_key(lambda a, b: compare(sort_values(a), sort_values(b))))
            total = len(rows)
            if query.token is not None:
                after = query.token["after"]
                if len(after) != len(order):
                    raise bad_request("The $skiptoken does not match this query.", CODE_QUERY)
                rows = [row for row in rows if compare(sort_values(row), after) > 0]
            # $top is ignored when a page size is requested, as the service does.
            remaining = (
                None
                if max_page is not None
                else (query.token.get("remaining") if query.token is not None else query.top)
            )
            page_size = min(int(max_page) if max_page is not None else MAX_PAGE_SIZE, MAX_PAGE_SIZE)
            if remaining is not None:
                page_size = min(page_size, int(remaining))
            page = rows[:page_size]
            body: dict[str, Any] = {"@odata.context": self._context(request, table, query.select)}
            if query.count:
                body["@odata.count"] = min(total, MAX_PAGE_SIZE)
            body["value"] = [
                self.store.render(table, row, query.select, annotations)
                | expanded(self.store, table, row, expansions, annotations)
                for row in page
            ]
            more = len(rows) > page_size and (remaining is None or int(remaining) > page_size)
            if more and page:
                token = {
                    "after": sort_values(page[-1]),
                    "remaining": None if remaining is None else int(remaining) - page_size,
                }
                body["@odata.nextLink"] = self._next_link(request, table, encode_skiptoken(token))
        headers = {}
        if max_page is not None:
            headers["Preference-Applied"] = f"odata.maxpagesize={min(int(max_page), MAX_PAGE_SIZE)}"
        return Response(200, body, headers)

    def _count(self, request: Request) -> Response:
        table = self.store.table(request.params["set"])
        query = parse_query(table, {k: v for k, v in request.query.items() if k == "$filter"})
        with self.lock:
            self.ledger.counters["tables"][table.entity_set]["reads"] += 1
            count = sum(1 for row in self.store.rows[table.entity_set].values() if query.predicate(row.values))
        return Response(200, str(min(count, MAX_PAGE_SIZE)), {"Content-Type": "text/plain"})

    def _get_entity(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        unsupported = [n for n in request.query if n.startswith("$") and n not in ("$select", "$expand")]
        if unsupported:
            raise bad_request(
                f"The query option {unsupported[0]} is not supported by the Dataverse emulator.", CODE_QUERY
            )
        select = parse_select(table, request.query["$select"]) if request.query.get("$select") else None
        expand = parse_expand(table, request.query["$expand"], self.store.tables) if "$expand" in request.query else {}
        prefer = parse_prefer(request.header("prefer"))
        with self.lock:
            self.ledger.counters["tables"][table.entity_set]["reads"] += 1
            row = self.store.find(table, key)
            if row is None:
                raise self.store.not_found(table, key)
            etag = self.store.etag(row)
            if request.header("if-none-match") == etag:
                return Response(304, None, {"ETag": etag})
            body = {
                "@odata.context": f"{self._context(request, table, select)}/$entity",
                **self.store.render(table, row, select, wants_annotations(prefer)),
            }
            for name, nested in expand.items():
                # One request reads the related row too; a lookup pointing at another table expands to null.
                nav = table.navs[name]
                related = row.values.get(nav.column)
                target_row = None
                if related is not None and row.targets.get(nav.column) == nav.target:
                    target_row = self.store.find(self.store.table(nav.target), str(related))
                if target_row is not None:
                    self.ledger.counters["tables"][nav.target]["reads"] += 1
                target_table = self.store.table(nav.target)
                body[name] = None if target_row is None else self.store.render(target_table, target_row, nested)
        return Response(200, body, {"ETag": etag})

    # -- writes -----------------------------------------------------------------------------------------------
    def _post_collection(self, request: Request) -> Response:
        table = self.store.table(request.params["set"])
        body = json_body(request)
        with self.lock:
            # A deep insert: the related rows nested in the body are created with the row, all or nothing.
            rows = insert_tree(self.store, table, body)
            for position, (made_in, made) in enumerate(rows):
                logged = body if position == 0 else None
                self.ledger.log_write("create", made_in, made.values[made_in.pk], request, logged)
            return self._write_response(request, table, rows[0][1], created=True)

    def _patch_entity(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        body = json_body(request)
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        if_match, if_none_match = request.header("if-match"), request.header("if-none-match")
        key_columns = {table.pk} | (set(key) if isinstance(key, dict) else set())
        # Key columns come from the URL: the service drops them from the body.
        body = {k: v for k, v in body.items() if k not in key_columns}
        with self.lock:
            row = self.store.find(table, key)
            values, targets = self.store.parse_body(table, body)
            if row is None:
                if if_match is not None:
                    raise self.store.not_found(table, key)
                url_values = (
                    {table.pk: key}
                    if isinstance(key, str)
                    else {name: coerce(table, name, value) for name, value in key.items()}
                )
                row = self.store.insert(table, {**values, **url_values}, targets)
                self.ledger.log_write("create", table, row.values[table.pk], request, body)
                return self._write_response(request, table, row, created=True)
            if if_none_match is not None and if_none_match.strip() == "*":
                raise ODataError(412, "A record with matching key values already exists.", CODE_DUPLICATE)
            self._check_if_match(row, if_match)
            self.store.update(table, row, values, targets)
            self.ledger.log_write("update", table, row.values[table.pk], request, body)
            return self._write_response(request, table, row, created=False)

    def _delete_entity(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        with self.lock:
            row = self.store.find(table, key)
            if row is None:
                raise self.store.not_found(table, key)
            self._check_if_match(row, request.header("if-match"))
            record_id = self.store.delete(table, row)
            self.ledger.log_write("delete", table, record_id, request)
        return Response(204)

    def _delete_property(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        prop, is_ref = request.params["prop"], "ref" in request.params
        if is_ref:
            if prop not in table.navs:
                raise bad_request(f"'{prop}' is not a navigation property of {table.type_name}.", CODE_QUERY)
            change: dict[str, Any] = {prop: None}
        elif prop in table.columns and prop not in table.lookups and prop not in READ_ONLY and prop != table.pk:
            change = {prop: None}
        else:
            raise property_error(table, prop)
        with self.lock:
            row = self.store.find(table, key)
            if row is None:
                raise self.store.not_found(table, key)
            values, targets = self.store.parse_body(table, change)
            self.store.update(table, row, values, targets)
            self.ledger.log_write("update", table, row.values[table.pk], request, change)
        return Response(204)

    def _close_opportunity(self, request: Request) -> Response:
        action = request.params["action"]
        state = 1 if action == "WinOpportunity" else 2
        body = json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("OpportunityClose"), dict):
            raise bad_request(f"{action} needs an 'OpportunityClose' object.")
        status = body.get("Status")
        if isinstance(status, bool) or not isinstance(status, int):
            raise bad_request(f"{action} needs an integer 'Status'.")
        if status not in OPPORTUNITY_STATUSES[state]:
            raise bad_request(
                f"{status} is not a valid status code for state code OpportunityState."
                f"{STATE_NAMES[state]} on opportunity."
            )
        opportunities, closes = self.store.tables["opportunities"], self.store.tables["opportunitycloses"]
        with self.lock:
            close_values, close_targets = self.store.parse_body(closes, body["OpportunityClose"])
            opportunity_id = close_values.get("_opportunityid_value")
            if opportunity_id is None:
                raise bad_request("OpportunityClose needs 'opportunityid@odata.bind'.")
            row = self.store.rows["opportunities"][opportunity_id]
            if row.values["statecode"] != 0:
                # The service's OpportunityIsAlreadyClosed error, whatever the state it was closed in.
                raise ODataError(400, "The opportunity is already closed.", CODE_ALREADY_CLOSED)
            close_values.setdefault("subject", "Won" if state == 1 else "Lost")
            close_values.setdefault("actualend", self.store.clock().astimezone(UTC).date().isoformat())
            close_values.update({"statecode": 1, "statuscode": 2})  # the close activity is completed
            self.store.insert(closes, close_values, close_targets, seeding=True)
            revenue = close_values.get("actualrevenue")
            if revenue is None and state == 1:
                revenue = row.values.get("estimatedvalue")
            row.values.update(
                {
                    "statecode": state,
                    "statuscode": status,
                    "actualclosedate": close_values["actualend"],
                    "actualvalue": revenue,
                    "modifiedon": self.store.now(),
                    "versionnumber": self.store.next_version(),
                }
            )
            self.ledger.counters["actions"][action] += 1
            self.ledger.log_write("action", opportunities, opportunity_id, request, body, action=action, status=status)
        return Response(204)
