"""Injected failures of the emulated APIs: throttling (429) and unavailability (503) with Retry-After."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._server import Request, Response


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass
class Fault:
    status: int
    remaining: int
    retry_after: float | None
    method: str | None
    path: re.Pattern[str] | None
    # Matching requests still answered before the fault starts (throttling that sets in part way through a run).
    spared: int = 0

    def matches(self, request: Request) -> bool:
        if self.method and self.method.upper() != request.method:
            return False
        return self.path is None or bool(self.path.search(request.path))

    def response(self) -> Response:
        headers = {} if self.retry_after is None else {"Retry-After": _seconds(self.retry_after)}
        if self.status == 429:
            # The documented throttling body is not the usual {"error": ...} shape.
            wait = _seconds(self.retry_after if self.retry_after is not None else 1)
            message = f"Rate limit is exceeded. Try again in {wait} seconds."
            body: dict[str, Any] = {"statusCode": 429, "message": message}
        else:
            body = {"error": {"code": "serviceNotAvailable", "message": "The service is temporarily unavailable."}}
        return Response(self.status, body, headers)
