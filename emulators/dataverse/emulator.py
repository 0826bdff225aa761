"""Dataverse (Dynamics 365) Web API emulator: an in-memory OData v4 subset for tests and the local demo.

``python -m emulators.dataverse [--port N]`` serves ``/api/data/v9.2/`` with the tables the connector
uses (opportunities, accounts, contacts, transactioncurrencies, opportunitycloses). It is strict where
the real service is strict (types in ``$filter``, unknown columns, lookups written only through
``@odata.bind``, closed opportunities read-only) so a client bug shows up here, not in a customer's org.

Tests drive it through the ``/_emulator/...`` routes or the same operations as Python methods:
:meth:`DataverseEmulator.reset`, :meth:`seed`, :meth:`counters`, :meth:`inject_fault`, :meth:`table`,
:meth:`writes`, :meth:`add_column` (a custom column, as an admin adds one in the maker portal),
:meth:`set_request_limit` (the service protection limit on the number of requests, off unless set),
:meth:`set_change_tracking` (a table without change tracking, the delta token expiry: :mod:`.delta`).
``custom_columns=False`` starts an organisation without the connector's custom columns and key, which the metadata
API then creates (:mod:`emulators.dataverse.customization`: columns, option values, keys, security roles).

This module is the emulator itself: configuration, the Python control API, authentication and injected
faults. The parts live next to it: the tables and value rules (:mod:`emulators.dataverse.schema`), the
query language (:mod:`emulators.dataverse.odata`), the rows and write rules (:mod:`emulators.dataverse.store`),
the Web API operations (:mod:`emulators.dataverse.webapi`) and the control routes
(:mod:`emulators.dataverse.control`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from .._server import Emulator, Request, Response
from .control import register_control_routes
from .customization import Customization
from .delta import DEFAULT_EXPIRY, ChangeTracking, ChangeTrackingSettings
from .leads import LeadQualification
from .schema import (
    CHOICE,
    CODE_EXECUTION_TIME,
    CODE_THROTTLED,
    DEFAULT_HELP_OPTIONS,
    EDM,
    INTEGRATION_USER_ID,
    CustomColumns,
    ODataError,
    bad_request,
    build_tables,
)
from .store import Store
from .webapi import API, Ledger, WebApi

__all__ = ["API", "CustomColumns", "DataverseEmulator", "ODataError"]

THROTTLED_MESSAGE = "Number of requests exceeded the limit of {requests} over time window of {window:g} seconds."
# An injected 429: a throttle that is not about the number of requests (those come from set_request_limit).
EXECUTION_TIME_MESSAGE = (
    "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over time window of 300 "
    "seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later."
)
CODE_PRIVILEGE_DENIED = "0x80040220"
PRIVILEGE_DENIED = (
    f"Principal user (Id={INTEGRATION_USER_ID}, type=8) is missing the privilege this request needs "
    "(SecLib::AccessCheckEx failed)."
)


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path: re.Pattern[str] | None


@dataclass
class RequestLimit:
    """Dataverse's service protection limit on the number of requests: at most ``requests`` in any sliding
    ``window_seconds`` (the service counts per user and web server; the emulator is one server serving one
    user). A request over the limit is refused with 429 and a ``Retry-After`` of when one would be admitted;
    refused requests do not count towards the limit."""

    requests: int
    window_seconds: float
    admitted: deque[float] = field(default_factory=deque)

    def admit(self, now: float) -> float | None:
        """None when the request may go ahead (it is counted), else the seconds until one would be admitted."""
        while self.admitted and self.admitted[0] <= now - self.window_seconds:
            self.admitted.popleft()
        if len(self.admitted) >= self.requests:
            return self.admitted[0] + self.window_seconds - now
        self.admitted.append(now)
        return None


class DataverseEmulator(Emulator):
    name = "dataverse"

    def __init__(
        self,
        *,
        columns: CustomColumns | None = None,
        account_country_column: str = "address1_country",
        help_options: Iterable[int] = DEFAULT_HELP_OPTIONS,
        custom_columns: bool = True,
        required_token: str | None = None,
        base_currency: str | None = "USD",
        clock: Callable[[], datetime] | None = None,
        change_tracking_off: Iterable[str] = (),
        change_tracking_expiry: timedelta = DEFAULT_EXPIRY,
    ) -> None:
        """``change_tracking_off``: entity sets whose table has no change tracking (delta reads refused);
        ``change_tracking_expiry``: how long a delta token is honoured."""
        super().__init__()
        self.columns = columns or CustomColumns()
        # custom_columns=False: an organisation not yet set up for the connector (no custom columns, no key).
        self.tables = build_tables(self.columns if custom_columns else None, account_country_column, help_options)
        self._configured_token = required_token
        self.required_token = required_token
        self.store = Store(self.tables, clock or (lambda: datetime.now(UTC)), base_currency)
        self.ledger = Ledger(self.tables)
        self.web_api = WebApi(self.store, self.ledger, self.lock, lambda: self.port)
        self._tracking_config = (frozenset(change_tracking_off), change_tracking_expiry)
        self.change_tracking = ChangeTracking(self.store, self.lock, ChangeTrackingSettings())
        self.web_api.change_tracking = self.change_tracking
        self.customization = Customization(self.store, self.lock, self.web_api._base)
        self._faults: list[_Fault] = []
        self.request_limit: RequestLimit | None = None
        self._throttled = 0
        self._register_routes()
        self.reset()

    @property
    def base_currency(self) -> str | None:
        """ISO code of the organisation's base currency, stamped on new opportunities (None: not stamped)."""
        return self.store.base_currency

    @base_currency.setter
    def base_currency(self, code: str | None) -> None:
        self.store.base_currency = code

    # -- control (Python) ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty every table (currencies re-seeded), counters, faults and logs; restore the configured token."""
        with self.lock:
            self._faults.clear()
            self.ledger.writes.clear()
            self.request_log.clear()
            self.required_token = self._configured_token
            untracked, expiry = self._tracking_config
            self.change_tracking.settings = ChangeTrackingSettings(set(untracked), expiry)
            self.reset_counters()
            self.store.clear()
            self.customization.reset()

    def reset_counters(self) -> None:
        with self.lock:
            self.ledger.reset_counters()
            self._throttled = 0
            self.change_tracking.counts = dict.fromkeys(self.change_tracking.counts, 0)

    def counters(self) -> dict[str, Any]:
        """The ledger's counters, ``throttled``: requests refused by the request limit (also in ``requests``), and
        ``changeTracking``: pages of full and delta reads, and refused change-tracking requests."""
        with self.lock:
            return {
                **json.loads(json.dumps(self.ledger.counters)),
                "throttled": self._throttled,
                "changeTracking": dict(self.change_tracking.counts),
            }

    def set_request_limit(self, requests: int | None, window_seconds: float = 300.0) -> None:
        """At most ``requests`` API requests in any ``window_seconds`` (the real service: 6000 in 300), None: off.
        Survives :meth:`reset`, like the org's configuration."""
        with self.lock:
            self.request_limit = None if requests is None else RequestLimit(int(requests), float(window_seconds))

    def set_change_tracking(
        self, entity_set: str, enabled: bool | None = None, expiry: timedelta | None = None
    ) -> None:
        """Turn change tracking on or off for a table, and set how long a delta token is honoured; both last
        until :meth:`reset`, which restores the constructor's configuration."""
        self.store.table(entity_set)
        with self.lock:
            settings = self.change_tracking.settings
            if enabled is not None:
                (settings.untracked.discard if enabled else settings.untracked.add)(entity_set)
            if expiry is not None:
                settings.expiry = expiry

    def seed(self, entity_set: str, records: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert rows as given (system columns and ``_x_value`` lookups may be set); not counted as writes."""
        table = self.store.table(entity_set)
        items = [records] if isinstance(records, dict) else list(records)
        with self.lock:
            created = []
            for record in items:
                values, targets = self.store.parse_body(table, record, seeding=True)
                created.append(self.store.render(table, self.store.insert(table, values, targets, seeding=True)))
            return created

    def inject_fault(
        self,
        status: int = 429,
        count: int = 1,
        retry_after: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` API requests (matching ``method`` / the ``path`` regex) with ``status``. A 429
        is the execution-time throttle; the request limit's own 429 comes from :meth:`set_request_limit`."""
        if retry_after is None and status in (429, 503):
            retry_after = 1
        with self.lock:
            self._faults.append(
                _Fault(
                    status, count, retry_after, method.upper() if method else None, re.compile(path) if path else None
                )
            )

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def table(self, entity_set: str) -> list[dict[str, Any]]:
        table = self.store.table(entity_set)
        with self.lock:
            return [self.store.render(table, row) for row in self.store.rows[entity_set].values()]

    def add_column(self, entity_set: str, name: str, kind: str, options: Iterable[int] = ()) -> None:
        """Add a custom column of ``kind`` (``string``, ``memo``, ``money``, ``choice`` with its ``options``, ...)
        to a table. Like a column an admin adds, it outlives :meth:`reset`, which empties rows only."""
        table = self.store.table(entity_set)
        if kind not in EDM:
            raise bad_request(f"'{kind}' is not a column type of the emulator ({', '.join(EDM)})")
        if name in table.columns:
            raise bad_request(f"A column named '{name}' already exists on '{table.logical_name}'.")
        with self.lock:
            table.columns[name] = kind
            if kind == CHOICE and options:
                table.choices[name] = frozenset(options)

    def record(self, entity_set: str, record_id: str) -> dict[str, Any] | None:
        table = self.store.table(entity_set)
        with self.lock:
            row = self.store.rows[entity_set].get(record_id.lower())
            return self.store.render(table, row) if row else None

    def writes(self) -> list[dict[str, Any]]:
        """Successful writes in order: operation, table, id, the body keys sent and the conditional headers."""
        with self.lock:
            return json.loads(json.dumps(self.ledger.writes))

    def set_required_token(self, token: str | None) -> None:
        with self.lock:
            self.required_token = token

    # -- dispatch ---------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_emulator/"):
            return super().dispatch(request)
        try:
            with self.lock:
                self.ledger.counters["requests"] += 1
                self._enforce_limit()
                self._raise_fault(request)
            self._check_headers(request)
            response = super().dispatch(request)
        except ODataError as exc:
            response = exc.response()
        response.headers.setdefault("OData-Version", "4.0")
        if isinstance(response.body, dict):
            response.headers.setdefault("Content-Type", "application/json; odata.metadata=minimal")
        return response

    def _enforce_limit(self) -> None:
        limit = self.request_limit
        if limit is None:
            return
        wait = limit.admit(time.monotonic())
        if wait is None:
            return
        self._throttled += 1
        message = THROTTLED_MESSAGE.format(requests=limit.requests, window=limit.window_seconds)
        raise ODataError(429, message, CODE_THROTTLED, {"Retry-After": str(max(1, math.ceil(wait)))})

    def _raise_fault(self, request: Request) -> None:
        for fault in self._faults:
            if fault.remaining <= 0 or (fault.method and fault.method != request.method):
                continue
            if fault.path and not fault.path.search(unquote(request.path)):
                continue
            fault.remaining -= 1
            self.ledger.counters["faults"] += 1
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            if fault.status == 429:
                raise ODataError(429, EXECUTION_TIME_MESSAGE, CODE_EXECUTION_TIME, headers)
            if fault.status == 401:
                raise ODataError(401, "The access token has expired.", "", headers)
            if fault.status == 403:
                raise ODataError(403, PRIVILEGE_DENIED, CODE_PRIVILEGE_DENIED, headers)
            raise ODataError(fault.status, "The service is temporarily unavailable. Try again later.", "", headers)
        self._faults[:] = [f for f in self._faults if f.remaining > 0]

    def _check_headers(self, request: Request) -> None:
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        challenge = {
            "WWW-Authenticate": "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize"
        }
        if scheme.lower() != "bearer" or not token.strip():
            raise ODataError(401, "Request is not authenticated: send 'Authorization: Bearer <token>'.", "", challenge)
        if self.required_token is not None and token.strip() != self.required_token:
            raise ODataError(401, "The access token is not valid for this organization.", "", challenge)
        for name in ("odata-version", "odata-maxversion"):
            value = request.header(name)
            if value is not None and not value.strip().startswith("4."):
                raise bad_request(f"The {name} header value '{value}' is not supported; use 4.0.")

    def _count_action(self, action: str) -> None:
        actions = self.ledger.counters["actions"]
        actions[action] = actions.get(action, 0) + 1

    def _register_routes(self) -> None:
        register_control_routes(self)
        qualification = LeadQualification(self.store, self.lock, self.ledger.log_write, self._count_action)
        for method, pattern, handler in [
            *self.customization.routes(API),
            *qualification.routes(API),
            *self.change_tracking.routes(API, self.web_api._base),
            *self.web_api.routes(),
        ]:
            self.route(method, pattern, handler)
