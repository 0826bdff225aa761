"""The HTTP plumbing every adapter shares: one session, timeouts, Retry-After, typed errors.

Adapters call :meth:`ApiClient.request`; it returns the response for 2xx/304 and raises one of the
errors in :mod:`shared.domain.errors` otherwise. A 429 (or 503 with ``Retry-After``, in seconds or as
an HTTP date) is retried inline when the server asks for a short wait, and raised as
:class:`Throttled` when the wait is longer than the job should block (the job runner then defers the
job by that delay); a job that already has answers may block longer (:mod:`shared.inline_wait`).

**Only idempotent requests are sent twice.** A request whose answer was lost (connection dropped or
reset after it was sent, read timeout, a gateway 502/504 or a 500) may have taken effect. GET, HEAD,
PUT, DELETE and PATCH (conditional writes and upserts by key) are safe to send again; a POST is not,
unless the caller says so. A POST whose answer was lost raises :class:`OutcomeUnknown`, and the caller
finds what the first attempt made (:func:`create_once`) instead of making a second record. A POST is
still retried when the server certainly did not act on it: the connection could not be opened, or the
server answered 429/503 (throttled, nothing done).

Every write first passes :func:`shared.write_fence.check_write_allowed`: a job that lost its pair
lease stops before it writes.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests

from .domain.errors import (
    AuthenticationError,
    Conflict,
    ExternalServiceError,
    NotFound,
    OutcomeUnknown,
    PermanentError,
    PreconditionFailed,
    Throttled,
    TransientError,
)
from .inline_wait import allowed_wait, answered
from .request_pacing import RequestPacer
from .write_fence import check_write_allowed

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Statuses after which the server may have acted on the request (it reached the application).
_UNKNOWN_OUTCOME_STATUSES = frozenset({500, 502, 504})
T = TypeVar("T")

TokenProvider = Callable[[], str]
ErrorParser = Callable[[requests.Response], tuple[str, str | None]]


def _default_error(response: requests.Response) -> tuple[str, str | None]:
    """(message, code) from an ``{"error": {"code", "message"}}`` body, else the reason phrase."""
    try:
        body = response.json()
    except ValueError:
        return (response.reason or "error", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return (str(err.get("message") or response.reason), str(err.get("code")) if err.get("code") else None)
    if isinstance(body, dict) and body.get("message"):
        return (str(body["message"]), None)
    return (response.reason or "error", None)


def parse_retry_after(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (the connection was never opened)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__name__ in ("NewConnectionError", "ConnectionRefusedError", "NameResolutionError"):
            return True
        reason = getattr(cause, "reason", None)
        cause = reason if isinstance(reason, BaseException) else (cause.__cause__ or cause.__context__)
    return False


class ApiClient:
    def __init__(
        self,
        service: str,
        base_url: str,
        token: TokenProvider | None,
        *,
        timeout: float = 30.0,
        max_inline_wait: float = 20.0,
        max_attempts: int = 4,
        default_headers: Mapping[str, str] | None = None,
        error_parser: ErrorParser = _default_error,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        extra_headers: Callable[[], Mapping[str, str]] | None = None,
        pacer: RequestPacer | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.max_inline_wait = max_inline_wait
        self.max_attempts = max_attempts
        self.default_headers = dict(default_headers or {})
        self._error_parser = error_parser
        self.session = session or requests.Session()
        self._sleep = sleep
        # Headers that depend on the work at hand, read per request (the job's correlation id).
        self._extra_headers = extra_headers
        # Shared by every thread of the process: keeps them together under the service's request limit.
        self._pacer = pacer
        self.calls = 0  # requests actually sent: benchmarks read it

    def held_back_for(self) -> float:
        """Seconds before the service lets this process send again, as it last said (0.0 when it has not)."""
        return self._pacer.closed_for() if self._pacer is not None else 0.0

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        ok_statuses: tuple[int, ...] = (),
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send one request, retrying what is safe to retry.

        ``idempotent`` overrides the default for the method (True for everything but POST): pass True for
        a POST that is a read or an upsert by key, False for a PATCH that appends."""
        url = self.url(path)
        method = method.upper()
        repeatable = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        waited = 0.0
        for attempt in range(1, self.max_attempts + 1):
            if self._pacer is not None:
                waited += self._wait_for_turn(self._pacer, method, url, waited)
            sent = dict(self.default_headers)
            sent["client-request-id"] = str(uuid.uuid4())
            if self._extra_headers is not None:
                sent.update(self._extra_headers())
            if self._token is not None:
                sent["Authorization"] = f"Bearer {self._token()}"
            sent.update(headers or {})
            # Checked after the token (whose refresh may itself take a whole timeout), right before sending:
            # the lease margin allows one call's timeout between this check and the write taking effect.
            if method not in READ_METHODS:
                check_write_allowed()
            try:
                self.calls += 1
                response = self.session.request(
                    method, url, params=params, json=json, headers=sent, timeout=self.timeout
                )
            except requests.RequestException as exc:
                what = f"network error on {method} {_path(url)}: {type(exc).__name__}"
                if not repeatable and not _never_sent(exc):
                    raise OutcomeUnknown(self.service, f"{what}; the request may have taken effect") from None
                if attempt == self.max_attempts:
                    raise TransientError(self.service, what) from None
                self._sleep(_backoff(attempt))
                continue
            status = response.status_code
            if status < 300 or status == 304 or status in ok_statuses:
                answered()
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if not repeatable and status in _UNKNOWN_OUTCOME_STATUSES:
                message, code = self._error_parser(response)
                raise OutcomeUnknown(
                    self.service, f"{message}; the request may have taken effect", status, code, retry_after
                )
            if status == 429 or (status in (502, 503, 504)):
                wait = retry_after if retry_after is not None else _backoff(attempt)
                message, code = self._error_parser(response)
                if status == 429 and self._pacer is not None:
                    self._pacer.refused(wait, message)
                if attempt < self.max_attempts and waited + wait <= allowed_wait(self.max_inline_wait):
                    log.info("%s %s throttled (%s); retrying in %.1fs", self.service, _path(url), status, wait)
                    self._sleep(wait)
                    waited += wait
                    continue
                cls = Throttled if status == 429 else TransientError
                raise cls(self.service, message, status, code, retry_after=retry_after)
            answered()  # a refusal on the merits (404, 412, ...) is an answer too
            raise self._error(response)
        raise TransientError(self.service, f"gave up on {method} {_path(url)}")  # pragma: no cover

    def _wait_for_turn(self, pacer: RequestPacer, method: str, url: str, waited: float) -> float:
        """Sleep until the pacer gives this request a turn; seconds slept. Throttled when the request's waits
        would pass ``max_inline_wait``, or a started job's longer allowance (:mod:`shared.inline_wait`): the job
        runner defers the job by the rest, before anything is sent."""
        slept = 0.0
        while (wait := pacer.turn()) > 0:
            if waited + slept + wait > allowed_wait(self.max_inline_wait):
                raise Throttled(
                    self.service,
                    f"{method} {_path(url)} held back {wait:.0f}s to keep under the request limit",
                    429,
                    retry_after=math.ceil(wait),
                )
            self._sleep(wait)
            slept += wait
        return slept

    def _error(self, response: requests.Response) -> ExternalServiceError:
        message, code = self._error_parser(response)
        status = response.status_code
        if status == 401:
            return AuthenticationError(self.service, message, status, code)
        if status == 404:
            return NotFound(self.service, message, status, code)
        if status == 409:
            return Conflict(self.service, message, status, code)
        if status == 412:
            return PreconditionFailed(self.service, message, status, code)
        if status >= 500:
            return TransientError(self.service, message, status, code)
        return PermanentError(self.service, message, status, code)


def create_once(create: Callable[[], T], find: Callable[[], T | None], what: str, attempts: int = 3) -> T:
    """Create something exactly once over an unreliable network.

    ``create`` sends the create request; ``find`` looks for what an earlier attempt made, by a key chosen
    for that purpose (a client-generated id, an external reference, the matching rule). A lost answer is
    resolved by ``find``; only when it finds nothing is the create sent again.
    """
    for _ in range(attempts):
        try:
            return create()
        except OutcomeUnknown as exc:
            log.info("the answer to creating %s was lost (%s); looking for what it made", what, exc.status or "network")
            found = find()
            if found is not None:
                return found
    raise TransientError("sync", f"could not learn whether {what} was created; will try again later")


def _backoff(attempt: int) -> float:
    return min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def _path(url: str) -> str:
    # Only the path goes into messages: query strings may carry tokens or filters with customer data.
    return url.split("?", 1)[0]
