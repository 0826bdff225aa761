"""Salesforce REST API emulator: an in-memory org for tests and the local demo.

``python -m emulators.salesforce [--port N]`` (default 7103) serves ``/services/oauth2/token`` and
``/services/data/vNN.N/...`` with the objects the connector uses (Opportunity with the co-sell custom
fields, Account, Contact, OpportunityContactRole, CurrencyType, Organization). It is strict where the platform is
strict (unknown fields, restricted picklists, required fields, read-only system fields, unquoted
datetime literals in SOQL) so a client bug shows up here first. Errors are JSON arrays
``[{"message", "errorCode", "fields"}]``; every API response carries ``Sforce-Limit-Info``; a daily
quota turns into 403 ``REQUEST_LIMIT_EXCEEDED``; sessions can be expired on demand. The org is multi-currency
unless made a single-currency org (``multi_currency=False``, :meth:`configure`, ``{"multiCurrency": false}``):
then ``CurrencyType`` and ``CurrencyIsoCode`` do not exist, as in such a Salesforce org, and
``Organization.DefaultCurrencyIsoCode`` names its currency (the first of ``currencies``).

Tests drive it with Python methods (:meth:`SalesforceEmulator.reset`, :meth:`seed`, :meth:`update_record`,
:meth:`records`, :meth:`counters`, :meth:`writes`, :meth:`set_quota`, :meth:`restore_quota`,
:meth:`expire_sessions`, :meth:`issue_token`, :meth:`register_client`, :meth:`register_jwt_key`,
:meth:`inject_fault`, :meth:`configure`, :meth:`add_field`) or the same operations under ``/_emulator/...``
(:mod:`emulators.salesforce.control`). ``custom_fields=False`` starts an org without the connector's custom
Opportunity fields, which the Tooling API then creates (:mod:`emulators.salesforce.tooling`); permission sets and
their grants are records (``PermissionSet``, ``ObjectPermissions``, ``FieldPermissions``,
``PermissionSetAssignment``). The default client credentials are :data:`DEFAULT_CLIENT_ID` /
:data:`DEFAULT_CLIENT_SECRET`; JWT bearer clients are registered with their certificate.

This module is the emulator itself: configuration, the Python control API, authentication, the daily
quota, injected faults (:mod:`emulators.salesforce.faults`) and the token endpoint. The REST resources are
in :mod:`emulators.salesforce.rest`, over the org of :mod:`emulators.salesforce.store`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .._server import Emulator, Request, Response
from .control import register_control_routes
from .faults import Fault, Faults
from .leads import convert_lead
from .oauth import OAuthError, OAuthServer, Session
from .rest import MAX_BATCH_SIZE, Ledger, RestApi
from .schema import (
    DEFAULT_CURRENCIES,
    DEFAULT_HELP_VALUES,
    DEFAULT_STAGES,
    FIELD_TYPES,
    PICKLIST,
    CustomFields,
    FieldDef,
    SalesforceError,
    build_objects,
    stage_table,
)
from .sobject_collections import Collections
from .store import Org, Record
from .tooling import Tooling

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "MAX_BATCH_SIZE",
    "TOKEN_PATH",
    "SalesforceEmulator",
]

TOKEN_PATH = "/services/oauth2/token"
API_PREFIX = re.compile(r"^/services/data/v(?P<major>\d{2})\.0(?:/|$)")
LATEST_VERSION = 66
OLDEST_VERSION = 31
DEFAULT_CLIENT_ID = "cosell-connector-emulator"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"  # a published test credential, like the id
DEFAULT_DAILY_QUOTA = 15000
# Children of one row past this many come with a nextRecordsUrl of their own. Salesforce documents that subquery
# results may need more requests but not the size: the emulator pages early so that clients must follow them.
DEFAULT_SUBQUERY_BATCH_SIZE = 200
_SEASONS = ("Spring", "Winter", "Summer")


def error_response(exc: SalesforceError) -> Response:
    return Response(exc.status, [exc.item()], dict(exc.headers))


def _version_label(major: int) -> str:
    step = LATEST_VERSION - major
    return f"{_SEASONS[step % 3]} '{26 - (step + 1) // 3:02d}"


class SalesforceEmulator(Emulator):
    name = "salesforce"

    def __init__(
        self,
        *,
        fields: CustomFields | None = None,
        custom_fields: bool = True,
        stages: Iterable[tuple[str, bool, bool]] | Mapping[str, tuple[bool, bool]] = DEFAULT_STAGES,
        help_values: Iterable[str] = DEFAULT_HELP_VALUES,
        currencies: Iterable[str] = DEFAULT_CURRENCIES,
        daily_quota: int = DEFAULT_DAILY_QUOTA,
        query_batch_size: int = MAX_BATCH_SIZE,
        min_batch_size: int = 200,
        subquery_batch_size: int = DEFAULT_SUBQUERY_BATCH_SIZE,
        upsert_update_status: int = 200,
        session_seconds: int = 7200,
        clients: Mapping[str, str] | None = None,
        static_token: str | None = None,
        audiences: Iterable[str] = (),
        external_id_case_sensitive: bool = False,
        multi_currency: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        if upsert_update_status not in (200, 204):
            raise ValueError("upsert_update_status must be 200 or 204")
        self.fields = fields or CustomFields()
        self.stages = stage_table(stages)
        # custom_fields=False: an org not yet set up for the connector; setup-crm adds them through the Tooling API.
        self.objects = build_objects(self.fields if custom_fields else None, self.stages, help_values, currencies)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        # The org changes self.objects in place when its currency setting changes; REST, SOQL and the ledger read it.
        self.org = Org(self.objects, self.stages, currencies, self.clock, external_id_case_sensitive, multi_currency)
        self._configured_multi_currency = multi_currency
        self.collections = Collections(self.org)
        self.oauth = OAuthServer(self.clock, session_seconds, audiences)
        self.daily_quota = self._configured_quota = daily_quota
        self.query_batch_size, self.min_batch_size = query_batch_size, min_batch_size
        self.subquery_batch_size = subquery_batch_size
        self.upsert_update_status = upsert_update_status
        self._configured_clients = dict(clients if clients is not None else {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET})
        self._static_token = static_token
        self.api_used = 0
        self.faults = Faults()
        self.ledger = Ledger(self.objects)
        self.rest = RestApi(self)
        self.tooling = Tooling(self)
        self._register_routes()
        self.reset()

    # -- control (Python) ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the org (currencies re-seeded), sessions, quota, counters, faults, cursors and logs; only the
        constructor's clients and static token remain registered, and the org is multi-currency or not as the
        constructor made it (a shared emulator starts every test the same)."""
        with self.lock:
            self.org.set_multi_currency(self._configured_multi_currency)
            self.org.clear()
            self.oauth.clients.clear()
            self.oauth.expire_all()
            for client_id, secret in self._configured_clients.items():
                self.oauth.register_client(client_id, secret)
            if self._static_token:
                self.oauth.sessions[self._static_token] = self._static_session()
            self.daily_quota, self.api_used = self._configured_quota, 0
            self.faults.clear()
            self.rest.cursors.clear()
            self.ledger.writes.clear()
            self.request_log.clear()
            self.reset_counters()

    def _static_session(self) -> Session:
        return Session("static", "integration@emulator.example", "static", datetime.max.replace(tzinfo=UTC))

    def reset_counters(self) -> None:
        with self.lock:
            self.ledger.reset_counters()

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.ledger.counters))

    def writes(self) -> list[dict[str, Any]]:
        """Successful writes in order: operation, object, id, the field names sent, the route and conditions."""
        with self.lock:
            return json.loads(json.dumps(self.ledger.writes))

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

    def convert_lead(self, lead_id: str, **options: Any) -> Record:
        """Convert a lead as a seller does with the UI's Convert button (see :mod:`.leads`); not counted. Returns
        ``ConvertedAccountId``, ``ConvertedContactId`` and ``ConvertedOpportunityId``."""
        with self.lock:
            return convert_lead(self.org, lead_id, options, self.org.clock().astimezone(UTC).date())

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

    def add_field(
        self,
        object_name: str,
        name: str,
        kind: str,
        length: int | None = None,
        picklist: Iterable[str] = (),
        label: str = "",
    ) -> None:
        """Add a custom field (``string``, ``textarea``, ``currency``, ``picklist`` with its values, ...). Like a
        field an admin adds in Setup, it outlives :meth:`reset`, which empties the records only."""
        if kind not in FIELD_TYPES:
            raise ValueError(f"'{kind}' is not a field type of the emulator ({', '.join(sorted(FIELD_TYPES))})")
        values = tuple(picklist)
        definition = FieldDef(name, kind, length, picklist=values, restricted=kind == PICKLIST, label=label)
        with self.lock:
            self.org.sobject(object_name).add(definition)

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
            self.faults.add(
                Fault(
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
        subquery_batch_size: int | None = None,
        multi_currency: bool | None = None,
    ) -> None:
        """Change how updates by upsert are answered (200 with a body or 204), the SOQL batch sizes (of a
        query, its smallest, and of the children a subquery returns per row), and whether the org is
        multi-currency (:meth:`Org.set_multi_currency`; :meth:`reset` restores the constructor's choice)."""
        with self.lock:
            if multi_currency is not None:
                if not isinstance(multi_currency, bool):
                    raise ValueError("multi_currency must be true or false")
                self.org.set_multi_currency(multi_currency)
                self.ledger.track_objects()
            if upsert_update_status is not None:
                if int(upsert_update_status) not in (200, 204):
                    raise ValueError("upsert_update_status must be 200 or 204")
                self.upsert_update_status = int(upsert_update_status)
            if query_batch_size is not None:
                self.query_batch_size = int(query_batch_size)
            if min_batch_size is not None:
                self.min_batch_size = int(min_batch_size)
            if subquery_batch_size is not None:
                if int(subquery_batch_size) < 1:
                    raise ValueError("subquery_batch_size must be at least 1")
                self.subquery_batch_size = int(subquery_batch_size)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    @property
    def _latest(self) -> str:
        return f"v{LATEST_VERSION}.0"

    # -- dispatch ---------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_emulator/"):
            return self._control(request)
        with self.lock:
            self.ledger.counters["requests"] += 1
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
                self.ledger.counters["sessionRefusals"] += 1
                return error_response(exc)
            try:
                self._charge()
                self._raise_fault(request)
                response = self._route(request)
            except SalesforceError as exc:
                response = error_response(exc)
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.daily_quota}"
            return response

    def subrequest(self, request: Request) -> Response:
        """One subrequest of a composite call: routed, and hit by injected faults, like a request of its own, but
        neither authenticated nor charged again (the composite call was, once). The lock is held."""
        self._raise_fault(request)
        return self._route(request)

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
            self.ledger.counters["quotaRefusals"] += 1
            raise SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        self.api_used += 1
        self.ledger.counters["apiRequests"] += 1

    def _raise_fault(self, request: Request) -> None:
        error = self.faults.take(request, is_api=request.path != TOKEN_PATH)
        if error is not None:
            self.ledger.counters["faults"] += 1
            raise error

    def _register_routes(self) -> None:
        register_control_routes(self)
        for method, pattern, handler in [*self.tooling.routes(), *self.rest.routes()]:
            self.route(method, pattern, handler)

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
                self.ledger.counters["tokenRequests"]["refused"] += 1
                return Response(exc.status, exc.body())
            self.ledger.counters["tokenRequests"][flow] += 1
        return Response(200, body)

    def instance_url(self, request: Request) -> str:
        return f"http://{request.header('host') or f'127.0.0.1:{self.port}'}"

    # -- versions (not authenticated) -------------------------------------------------------------------------
    def _versions(self, request: Request) -> Response:
        return Response(
            200,
            [
                {"label": _version_label(major), "url": f"/services/data/v{major}.0", "version": f"{major}.0"}
                for major in range(OLDEST_VERSION, LATEST_VERSION + 1)
            ],
        )
