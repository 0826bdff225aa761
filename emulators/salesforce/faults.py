"""Injected failures of the Salesforce emulator: an error status (with its usual error code) for the next
requests that match a method and a path pattern, optionally with ``Retry-After``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .._server import Request
from .schema import SalesforceError

FAULT_DEFAULTS = {
    401: ("INVALID_SESSION_ID", "Session expired or invalid"),
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    500: ("UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId if you contact support."),
    502: ("SERVER_UNAVAILABLE", "Bad gateway"),
    503: ("SERVER_UNAVAILABLE", "Server is temporarily unavailable. Please try again later."),
}


@dataclass
class Fault:
    status: int
    remaining: int
    method: str | None
    path: re.Pattern[str] | None
    retry_after: int | None
    code: str | None
    message: str | None


class Faults:
    """Pending faults, used up in the order they were injected."""

    def __init__(self) -> None:
        self.pending: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self.pending.append(fault)

    def clear(self) -> None:
        self.pending.clear()

    def take(self, request: Request, is_api: bool) -> SalesforceError | None:
        """The error for ``request`` from the first matching fault (one use of it), or None.

        A fault without a path hits REST API requests only (``is_api``); one with a path hits what it matches.
        """
        for fault in self.pending:
            if fault.remaining <= 0 or (fault.method and fault.method != request.method):
                continue
            if (fault.path and not fault.path.search(unquote(request.path))) or (not fault.path and not is_api):
                continue
            fault.remaining -= 1
            code, message = FAULT_DEFAULTS.get(fault.status, ("UNKNOWN_EXCEPTION", "Injected fault"))
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._prune()
            return SalesforceError(fault.status, fault.code or code, fault.message or message, headers=headers)
        self._prune()
        return None

    def _prune(self) -> None:
        self.pending[:] = [f for f in self.pending if f.remaining > 0]
