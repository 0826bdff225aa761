"""The HTTP plumbing every adapter shares: one session, timeouts, Retry-After, typed errors.

Adapters call :meth:`ApiClient.request`; it returns the response for 2xx/304 and raises one of the
errors in :mod:`shared.domain.errors` otherwise. A 429 (or 503 with ``Retry-After``) is retried
inline when the server asks for a short wait, and raised as :class:`Throttled` when the wait is
longer than the job should block (the queue then retries later).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import requests

from .domain.errors import (
    AuthenticationError,
    Conflict,
    ExternalServiceError,
    NotFound,
    PermanentError,
    PreconditionFailed,
    Throttled,
    TransientError,
)

log = logging.getLogger(__name__)

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


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
        self.calls = 0  # requests actually sent: benchmarks read it

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
    ) -> requests.Response:
        url = self.url(path)
        for attempt in range(1, self.max_attempts + 1):
            sent = dict(self.default_headers)
            sent["client-request-id"] = str(uuid.uuid4())
            if self._token is not None:
                sent["Authorization"] = f"Bearer {self._token()}"
            sent.update(headers or {})
            try:
                self.calls += 1
                response = self.session.request(
                    method, url, params=params, json=json, headers=sent, timeout=self.timeout
                )
            except requests.RequestException as exc:
                if attempt == self.max_attempts:
                    raise TransientError(
                        self.service, f"network error on {method} {_path(url)}: {type(exc).__name__}"
                    ) from None
                self._sleep(_backoff(attempt))
                continue
            status = response.status_code
            if status < 300 or status == 304 or status in ok_statuses:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429 or (status in (502, 503, 504)):
                wait = retry_after if retry_after is not None else _backoff(attempt)
                if attempt < self.max_attempts and wait <= self.max_inline_wait:
                    log.info("%s %s throttled (%s); retrying in %.1fs", self.service, _path(url), status, wait)
                    self._sleep(wait)
                    continue
                message, code = self._error_parser(response)
                cls = Throttled if status == 429 else TransientError
                raise cls(self.service, message, status, code, retry_after=retry_after)
            raise self._error(response)
        raise TransientError(self.service, f"gave up on {method} {_path(url)}")  # pragma: no cover

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


def _backoff(attempt: int) -> float:
    return min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def _path(url: str) -> str:
    # Only the path goes into messages: query strings may carry tokens or filters with customer data.
    return url.split("?", 1)[0]
