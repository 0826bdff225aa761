"""Salesforce REST API emulator: an in-memory org for tests and the local demo.

``python -m emulators.salesforce [--port N]`` (default 7103) serves ``/services/oauth2/token`` and
``/services/data/vNN.N/...`` with the objects the connector uses (Opportunity with the co-sell custom
fields, Account, Contact, OpportunityContactRole, CurrencyType). It is strict where the platform is
strict (unknown fields, restricted picklists, required fields, read-only system fields, unquoted
datetime literals in SOQL) so a client bug shows up here first. Errors are JSON arrays
``[{"message", "errorCode", "fields"}]``; every API response carries ``Sforce-Limit-Info``; a daily
quota turns into 403 ``REQUEST_LIMIT_EXCEEDED``; sessions can be expired on demand.

Tests drive it with Python methods (:meth:`SalesforceEmulator.reset`, :meth:`seed`, :meth:`update_record`,
:meth:`records`, :meth:`counters`, :meth:`writes`, :meth:`set_quota`, :meth:`restore_quota`,
:meth:`expire_sessions`, :meth:`issue_token`, :meth:`register_client`, :meth:`register_jwt_key`,
:meth:`inject_fault`, :meth:`configure`) or the same operations under ``/_emulator/...``
(:mod:`emulators.salesforce_control`). The default client credentials are :data:`DEFAULT_CLIENT_ID` /
:data:`DEFAULT_CLIENT_SECRET`; JWT bearer clients are registered with their certificate.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime as http_date
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

from ._server import Emulator, Request, Response, main
from .salesforce_collections import CollectionResult, Collections
from .salesforce_control import register_control_routes
from .salesforce_oauth import OAuthError, OAuthServer, Session
from .salesforce_schema import (
    DEFAULT_CURRENCIES,
    DEFAULT_HELP_VALUES,
    DEFAULT_STAGES,
    CustomFields,
    FieldDef,
    SalesforceError,
    bad_request,
    build_objects,
    render_value,
    stage_table,
)
from .salesforce_soql import Query, compile_query, sort_rows
from .salesforce_store import Org, Record

TOKEN_PATH = "/services/oauth2/token"
API_PREFIX = re.compile(r"^/services/data/v(?P<major>\d{2})\.0(?:/|$)")
API = r"/services/data/(?P<version>v\d{2}\.0)"
LATEST_VERSION = 66
OLDEST_VERSION = 31
DEFAULT_CLIENT_ID = "cosell-connector-emulator"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"  # a published test credential, like the id
DEFAULT_DAILY_QUOTA = 15000
MAX_BATCH_SIZE = 2000
_SEASONS = ("Spring", "Winter", "Summer")


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None
    path: re.Pattern[str] | None
    retry_after: int | None
    code: str | None
    message: str | None


@dataclass
class _Cursor:
    object_name: str
    records: list[Record]
    batch_size: int


FAULT_DEFAULTS = {
    401: ("INVALID_SESSION_ID", "Session expired or invalid"),
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    500: ("UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId if you contact support."),
    502: ("SERVER_UNAVAILABLE", "Bad gateway"),
    503: ("SERVER_UNAVAILABLE", "Server is temporarily unavailable. Please try again later."),
}


def error_response(exc: SalesforceError) -> Response:
    return Response(exc.status, [exc.item()], dict(exc.headers))


def _json_body(request: Request) -> Any:
    try:
        return request.json()
    except ValueError:
        raise bad_request("JSON_PARSER_ERROR", "The request body is not valid JSON") from None


def _version_label(major: int) -> str:
    step = LATEST_VERSION - major
    return f"{_SEASONS[step % 3]} '{26 - (step + 1) // 3:02d}"


class SalesforceEmulator(Emulator):
    name = "salesforce"

    def __init__(
        self,
        *,
        fields: CustomFields | None = None,
        stages: Iterable[tuple[str, bool, bool]] | Mapping[str, tuple[bool, bool]] = DEFAULT_STAGES,
        help_values: Iterable[str] = DEFAULT_HELP_VALUES,
        currencies: Iterable[str] = DEFAULT_CURRENCIES,
        daily_quota: int = DEFAULT_DAILY_QUOTA,
        query_batch_size: int = MAX_BATCH_SIZE,
        min_batch_size: int = 200,
        upsert_update_status: int = 200,
        session_seconds: int = 7200,
        clients: Mapping[str, str] | None = None,
        static_token: str | None = None,
        audiences: Iterable[str] = (),
        external_id_case_sensitive: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        if upsert_update_status not in (200, 204):
            raise ValueError("upsert_update_status must be 200 or 204")
        self.fields = fields or CustomFields()
        self.stages = stage_table(stages)
        self.objects = build_objects(self.fields, self.stages, help_values, currencies)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.org = Org(self.objects, self.stages, currencies, self.clock, external_id_case_sensitive)
        self.collections = Collections(self.org)
        self.oauth = OAuthServer(self.clock, session_seconds, audiences)
        self.daily_quota = self._configured_quota = daily_quota
        self.query_batch_size, self.min_batch_size = query_batch_size, min_batch_size
        self.upsert_update_status = upsert_update_status
        self._configured_clients = dict(clients if clients is not None else {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET})
        self._static_token = static_token
        self.api_used = 0
        self._faults: list[_Fault] = []
        self._cursors: dict[str, _Cursor] = {}
        self._writes: list[dict[str, Any]] = []
        self._counters: dict[str, Any] = {}
        self._register_routes()
        self.reset()

    # -- control (Python) ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the org (currencies re-seeded), sessions, quota, counters, faults, cursors and logs; only the
        constructor's clients and static token remain registered."""
        with self.lock:
            self.org.clear()
            self.oauth.clients.clear()
            self.oauth.expire_all()
            for client_id, secret in self._configured_clients.items():
                self.oauth.register_client(client_id, secret)
            if self._static_token:
                self.oauth.sessions[self._static_token] = self._static_session()
            self.daily_quota, self.api_used = self._configured_quota, 0
            self._faults.clear()
            self._cursors.clear()
            self._writes.clear()
            self.request_log.clear()
            self.reset_counters()

    def _static_session(self) -> Session:
        return Session("static", "integration@emulator.example", "static", datetime.max.replace(tzinfo=UTC))

    def reset_counters(self) -> None:
        with self.lock:
            self._counters = {
                "objects": {name: {"creates": 0, "updates": 0, "deletes": 0, "reads": 0} for name in self.objects},
                "requests": 0,
                "apiRequests": 0,
                "queries": 0,
                "tokenRequests": {"client_credentials": 0, "jwt_bearer": 0, "refused": 0},
                "sessionRefusals": 0,
                "quotaRefusals": 0,
                "faults": 0,
            }

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self._counters))

    def writes(self) -> list[dict[str, Any]]:
        """Successful writes in order: operation, object, id, the field names sent, the route and conditions."""
        with self.lock:
            return json.loads(json.dumps(self._writes))

    def seed(self, object_name: str, records: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[Record]:
        """Insert records as given (system fields such as Id or SystemModstamp may be set); not counted."""
        items = [records] if isinstance(records, Mapping) else list(records)
        with self.lock:
            name = self.org.sobject(object_name).name
            return [self.org.render(name, self.org.insert(name, item, seeding=True), self._latest) for item in items]

    def update_record(self, object_name: str, record_id: str, changes: Mapping[str, Any]) -> Record:
        """Change a record as a seller would in the UI (bumps SystemModstamp); not counted."""
        with self.lock:
            name = self.org.sobject(object_name).name
            return self.org.render(name, self.org.update(name, record_id, changes), self._latest)

    def records(self, object_name: str, include_deleted: bool = False) -> list[Record]:
        with self.lock:
            name = self.org.sobject(object_name).name
            rows = self.org.rows(name, include_deleted)
            return [self.org.render(name, row, self._latest) for row in rows]

    def record(self, object_name: str, record_id: str) -> Record | None:
        with self.lock:
            name = self.org.sobject(object_name).name
            row = self.org.get(name, record_id)
            return self.org.render(name, row, self._latest) if row else None

    def set_quota(self, maximum: int | None = None, used: int | None = None) -> None:
        """Change the daily allocation and/or what is used of it; ``used >= maximum`` blocks the API."""
        with self.lock:
            if maximum is not None:
                self.daily_quota = maximum
            if used is not None:
                self.api_used = used

    def restore_quota(self) -> None:
        """The rolling 24 hours have passed: the allocation is free again."""
        with self.lock:
            self.api_used = 0

    def api_usage(self) -> tuple[int, int]:
        with self.lock:
            return self.api_used, self.daily_quota

    def expire_sessions(self) -> None:
        """Every access token issued so far (and the static one) now gets 401 INVALID_SESSION_ID."""
        with self.lock:
            self.oauth.expire_all()

    def issue_token(self, username: str = "integration@emulator.example") -> str:
        """A valid access token without a token request (for static-token configurations)."""
        with self.lock:
            return self.oauth.issue("emulator", username, "issued")

    def register_client(self, client_id: str, client_secret: str, username: str | None = None) -> None:
        with self.lock:
            self.oauth.register_client(client_id, client_secret, username)

    def register_jwt_key(self, client_id: str, public_key_pem: str | bytes, usernames: Iterable[str]) -> None:
        """The certificate (or public key) of a Connected App and the users pre-authorised for it."""
        with self.lock:
            self.oauth.register_jwt_key(client_id, public_key_pem, usernames)

    def inject_fault(
        self,
        status: int = 503,
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: int | None = None,
        error_code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (matching ``method`` and the ``path`` regex) with ``status``.

        Without ``path`` only REST API requests are hit; a ``path`` such as ``oauth2`` reaches the token endpoint.
        """
        with self.lock:
            self._faults.append(
                _Fault(
                    status,
                    count,
                    method.upper() if method else None,
                    re.compile(path) if path else None,
                    retry_after,
                    error_code,
                    message,
                )
            )

    def configure(
        self,
        *,
        upsert_update_status: int | None = None,
        query_batch_size: int | None = None,
        min_batch_size: int | None = None,
    ) -> None:
        """Change how updates by upsert are answered (200 with a body or 204) and the SOQL batch sizes."""
        with self.lock:
            if upsert_update_status is not None:
                if int(upsert_update_status) not in (200, 204):
                    raise ValueError("upsert_update_status must be 200 or 204")
                self.upsert_update_status = int(upsert_update_status)
            if query_batch_size is not None:
                self.query_batch_size = int(query_batch_size)
            if min_batch_size is not None:
                self.min_batch_size = int(min_batch_size)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    @property
    def _latest(self) -> str:
        return f"v{LATEST_VERSION}.0"

    # -- dispatch ---------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_emulator/"):
            return self._control(request)
        with self.lock:
            self._counters["requests"] += 1
        if request.path == TOKEN_PATH:
            return self._token(request)
        if request.path.rstrip("/") == "/services/data":
            return self._versions(request)  # not authenticated, not counted, no Sforce-Limit-Info
        match = API_PREFIX.match(request.path)
        if match is None or not OLDEST_VERSION <= int(match.group("major")) <= LATEST_VERSION:
            return error_response(SalesforceError(404, "NOT_FOUND", "The requested resource does not exist"))
        with self.lock:
            try:
                self._authenticate(request)
            except SalesforceError as exc:
                self._counters["sessionRefusals"] += 1
                return error_response(exc)
            try:
                self._charge()
                self._raise_fault(request)
                response = self._route(request)
            except SalesforceError as exc:
                response = error_response(exc)
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.daily_quota}"
            return response

    def _route(self, request: Request) -> Response:
        response = super().dispatch(request)
        if response.status == 404 and isinstance(response.body, dict):
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        if response.status == 405 and isinstance(response.body, dict):
            raise SalesforceError(
                405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed for {request.path}"
            )
        return response

    def _control(self, request: Request) -> Response:
        try:
            return super().dispatch(request)
        except SalesforceError as exc:
            return error_response(exc)
        except (ValueError, KeyError, TypeError) as exc:
            return Response(400, [{"message": f"bad control request: {exc}", "errorCode": "EMULATOR_CONTROL"}])

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() not in ("bearer", "oauth") or not self.oauth.valid(token.strip()):
            raise SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")

    def _charge(self) -> None:
        if self.api_used >= self.daily_quota:
            self._counters["quotaRefusals"] += 1
            raise SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        self.api_used += 1
        self._counters["apiRequests"] += 1

    def _raise_fault(self, request: Request) -> None:
        is_api = request.path != TOKEN_PATH
        for fault in self._faults:
            if fault.remaining <= 0 or (fault.method and fault.method != request.method):
                continue
            if (fault.path and not fault.path.search(unquote(request.path))) or (not fault.path and not is_api):
                continue
            fault.remaining -= 1
            self._counters["faults"] += 1
            code, message = FAULT_DEFAULTS.get(fault.status, ("UNKNOWN_EXCEPTION", "Injected fault"))
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._faults[:] = [f for f in self._faults if f.remaining > 0]
            raise SalesforceError(fault.status, fault.code or code, fault.message or message, headers=headers)
        self._faults[:] = [f for f in self._faults if f.remaining > 0]

    def _register_routes(self) -> None:
        obj = r"(?P<type>[A-Za-z][A-Za-z0-9_]*)"
        register_control_routes(self)
        self.route("GET", rf"{API}/?", self._resources)
        self.route("GET", rf"{API}/limits/?", self._limits)
        self.route("GET", rf"{API}/(?P<kind>query|queryAll)/?", self._query)
        self.route(
            "GET", rf"{API}/(?P<kind>query|queryAll)/(?P<locator>[A-Za-z0-9]+)-(?P<offset>\d+)", self._query_more
        )
        self.route("GET", rf"{API}/sobjects/?", self._describe_global)
        self.route("GET", rf"{API}/sobjects/{obj}/describe/?", self._describe)
        self.route("POST", rf"{API}/sobjects/{obj}/?", self._create)
        self.route("GET", rf"{API}/sobjects/{obj}/(?P<id>[^/]+)", self._get)
        self.route("PATCH", rf"{API}/sobjects/{obj}/(?P<id>[^/]+)", self._patch)
        self.route("DELETE", rf"{API}/sobjects/{obj}/(?P<id>[^/]+)", self._delete)
        self.route("GET", rf"{API}/sobjects/{obj}/(?P<field>[A-Za-z0-9_]+)/(?P<value>[^/]+)", self._get_by_external)
        self.route("PATCH", rf"{API}/sobjects/{obj}/(?P<field>[A-Za-z0-9_]+)/(?P<value>[^/]+)", self._upsert)
        self.route("POST", rf"{API}/composite/sobjects/?", self._collection_create)
        self.route("PATCH", rf"{API}/composite/sobjects/?", self._collection_update)
        self.route("DELETE", rf"{API}/composite/sobjects/?", self._collection_delete)
        self.route("GET", rf"{API}/composite/sobjects/{obj}/?", self._collection_retrieve)
        self.route("PATCH", rf"{API}/composite/sobjects/{obj}/(?P<field>[A-Za-z0-9_]+)/?", self._collection_upsert)

    # -- OAuth ------------------------------------------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, {"error": "invalid_request", "error_description": "must use HTTP POST"})
        with self.lock:
            try:
                self._raise_fault(request)
            except SalesforceError as exc:
                return error_response(exc)
            try:
                flow, body = self.oauth.token(request.body, request.headers, self.instance_url(request))
            except OAuthError as exc:
                self._counters["tokenRequests"]["refused"] += 1
                return Response(exc.status, exc.body())
            self._counters["tokenRequests"][flow] += 1
        return Response(200, body)

    def instance_url(self, request: Request) -> str:
        return f"http://{request.header('host') or f'127.0.0.1:{self.port}'}"

    # -- resources, limits, describe --------------------------------------------------------------------------
    def _versions(self, request: Request) -> Response:
        return Response(
            200,
            [
                {"label": _version_label(major), "url": f"/services/data/v{major}.0", "version": f"{major}.0"}
                for major in range(OLDEST_VERSION, LATEST_VERSION + 1)
            ],
        )

    def _resources(self, request: Request) -> Response:
        base = f"/services/data/{request.params['version']}"
        names = ("sobjects", "query", "queryAll", "limits", "composite")
        return Response(200, {name: f"{base}/{name}" for name in names})

    def _limits(self, request: Request) -> Response:
        return Response(
            200,
            {
                "DailyApiRequests": {"Max": self.daily_quota, "Remaining": max(0, self.daily_quota - self.api_used)},
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
        self._counters["objects"][sobject.name]["reads"] += 1
        currencies = tuple(str(r["IsoCode"]) for r in self.org.rows("CurrencyType") if r.get("IsActive"))
        fields = []
        for definition in sobject.fields.values():
            values = currencies if definition.name == "CurrencyIsoCode" else definition.picklist
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
        return Response(
            200, {"name": sobject.name, "label": sobject.name, "keyPrefix": sobject.key_prefix, "fields": fields}
        )

    # -- SOQL -------------------------------------------------------------------------------------------------
    def _query(self, request: Request) -> Response:
        text = request.query.get("q")
        if not text:
            raise bad_request("MALFORMED_QUERY", "A query string has to be specified")
        query: Query = compile_query(text, self.objects, self.org.resolve)
        name = query.sobject.name
        self._counters["queries"] += 1
        self._counters["objects"][name]["reads"] += 1
        include_deleted = request.params["kind"] == "queryAll"
        rows = [row for row in self.org.rows(name, include_deleted) if query.predicate(row)]
        rows = sort_rows(rows, [*query.order], self.org.resolve) if query.order else rows
        rows = rows[query.offset :]
        if query.limit is not None:
            rows = rows[: query.limit]
        version = request.params["version"]
        # The result set is fixed when the query runs, as a server-side cursor is.
        records = [self.org.render_columns(name, row, query.columns, version) for row in rows]
        cursor = _Cursor(name, records, self._batch_size(request))
        locator = "01g" + secrets.token_hex(8)[:15]
        if len(records) > cursor.batch_size:
            self._cursors[locator] = cursor
        return Response(200, self._page(cursor, locator, 0, request))

    def _query_more(self, request: Request) -> Response:
        cursor = self._cursors.get(request.params["locator"])
        offset = int(request.params["offset"])
        if cursor is None or offset > len(cursor.records):
            raise bad_request("INVALID_QUERY_LOCATOR", "invalid query locator")
        self._counters["objects"][cursor.object_name]["reads"] += 1
        return Response(200, self._page(cursor, request.params["locator"], offset, request))

    def _page(self, cursor: _Cursor, locator: str, offset: int, request: Request) -> dict[str, Any]:
        end = offset + cursor.batch_size
        body: dict[str, Any] = {"totalSize": len(cursor.records), "done": end >= len(cursor.records)}
        if end < len(cursor.records):
            body["nextRecordsUrl"] = (
                f"/services/data/{request.params['version']}/{request.params['kind']}/{locator}-{end}"
            )
        else:
            self._cursors.pop(locator, None)
        body["records"] = cursor.records[offset:end]
        return body

    def _batch_size(self, request: Request) -> int:
        options = request.header("sforce-query-options") or ""
        match = re.search(r"batchSize\s*=\s*(\d+)", options)
        if match is None:
            return self.query_batch_size
        # Salesforce treats the size as a hint between 200 and 2000.
        return max(self.min_batch_size, min(MAX_BATCH_SIZE, int(match.group(1))))

    # -- single records -----------------------------------------------------------------------------------------
    def _create(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        body = _json_body(request)
        row = self.org.insert(name, body)
        self._log("create", name, row["Id"], body, "sobject")
        return Response(201, {"id": row["Id"], "success": True, "errors": []})

    def _get(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        row = self.org.get(name, unquote(request.params["id"]))
        if row is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        self._counters["objects"][name]["reads"] += 1
        since = self._http_date(request, "if-modified-since")
        if since is not None and row["SystemModstamp"].replace(microsecond=0) <= since:
            return Response(304)
        fields = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()] or None
        body = self.org.render(name, row, request.params["version"], fields)
        return Response(200, body, {"Last-Modified": http_date(row["SystemModstamp"], usegmt=True)})

    def _patch(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        body = _json_body(request)
        row = self.org.get(name, unquote(request.params["id"]))
        if row is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        self._check_unmodified(request, row)
        self.org.update(name, row["Id"], body)
        self._log("update", name, row["Id"], body, "sobject", request)
        return Response(204)

    def _delete(self, request: Request) -> Response:
        name = self.org.sobject(request.params["type"]).name
        row = self.org.delete(name, unquote(request.params["id"]))
        self._log("delete", name, row["Id"], {}, "sobject")
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
        self._counters["objects"][name]["reads"] += 1
        if len(rows) > 1:
            return self._multiple_choices(name, rows, request.params["version"])
        if not rows:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        fields = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()] or None
        return Response(200, self.org.render(name, rows[0], request.params["version"], fields))

    def _upsert(self, request: Request) -> Response:
        name, definition = self._external_field(request)
        value = unquote(request.params["value"])
        body = _json_body(request)
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
            self._log("create", name, row["Id"], {**body, definition.name: value}, "upsert")
            return Response(201, {"id": row["Id"], "success": True, "errors": [], "created": True})
        row = rows[0]
        self._check_unmodified(request, row)
        self.org.update(name, row["Id"], body)
        self._log("update", name, row["Id"], body, "upsert", request)
        if self.upsert_update_status == 204:
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
        body = _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise bad_request("JSON_PARSER_ERROR", "The request body needs a 'records' array")
        return body["records"], bool(body.get("allOrNone", False))

    def _finish(self, result: CollectionResult) -> Response:
        for operation, name, record_id, body, via in result.committed:
            self._log(operation, name, record_id, body, via)
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
        self._counters["objects"][name]["reads"] += 1
        version = request.params["version"]
        rows = [self.org.get(name, record_id) for record_id in ids]
        return Response(200, [self.org.render(name, row, version, fields) if row else None for row in rows])

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def _log(
        self, operation: str, name: str, record_id: str, body: Any, via: str, request: Request | None = None
    ) -> None:
        counter = {"create": "creates", "update": "updates", "delete": "deletes"}[operation]
        self._counters["objects"][name][counter] += 1
        sobject = self.objects[name]
        keys = [k for k in (body if isinstance(body, dict) else {}) if k not in ("attributes", "id")]
        sent = sorted(getattr(sobject.field(k), "name", k) for k in keys)
        entry: dict[str, Any] = {"operation": operation, "object": name, "id": record_id, "fields": sent, "via": via}
        if request is not None and request.header("if-unmodified-since"):
            entry["ifUnmodifiedSince"] = request.header("if-unmodified-since")
        self._writes.append(entry)


def _main() -> None:
    main(SalesforceEmulator, 7103)


if __name__ == "__main__":
    _main()
