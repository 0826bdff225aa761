"""State of the emulated Webhooks API: one registration per tenant and the test ("validation") events."""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

from .._server import Response
from .dispatch import Delivery

WEBHOOK_EVENTS = (
    "test-created",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
)


def error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


def _field(body: dict[str, Any], name: str) -> Any:
    # The documented bodies use PascalCase, the swagger camelCase: accept either.
    for key, value in body.items():
        if key.lower() == name.lower():
            return value
    return None


class WebhookRegistry:
    def __init__(self, partner_id: str, validation_events_per_minute: int = 2) -> None:
        self.partner_id = partner_id
        self.validation_events_per_minute = validation_events_per_minute
        self.registration: dict[str, Any] | None = None
        self.validation_events: dict[str, Delivery | None] = {}
        self._validation_times: deque[float] = deque()

    def reset(self) -> None:
        self.registration = None
        self.validation_events.clear()
        self._validation_times.clear()

    def url_for(self, event_name: str) -> str | None:
        if self.registration and event_name in self.registration["WebhookEvents"]:
            return str(self.registration["WebhookUrl"])
        return None

    @property
    def ms_signature_header(self) -> bool:
        return bool(self.registration and self.registration["SignatureTokenToMsSignatureHeader"])

    def get(self) -> Response:
        if self.registration is None:
            return error(404, "itemNotFound", "No webhook registration exists for this partner.")
        return Response(200, self._view())

    def create(self, body: Any) -> Response:
        if self.registration is not None:
            return error(409, "conflict", "Registration already exists, use the PUT method")
        return self._store(body, 201)

    def update(self, body: Any) -> Response:
        return self._store(body, 200)

    def _store(self, body: Any, status: int) -> Response:
        if not isinstance(body, dict):
            return error(400, "invalidRequest", "The body must be a registration object.")
        url, events = _field(body, "WebhookUrl"), _field(body, "WebhookEvents")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return error(400, "invalidRequest", "WebhookUrl must be an absolute http(s) URL.")
        if not isinstance(events, list) or not events or any(e not in WEBHOOK_EVENTS for e in events):
            return error(400, "invalidRequest", f"WebhookEvents must be a non-empty subset of {list(WEBHOOK_EVENTS)}.")
        subscriber = self.registration["SubscriberId"] if self.registration else self.partner_id
        self.registration = {
            "SubscriberId": subscriber,
            "WebhookUrl": url,
            "WebhookEvents": list(dict.fromkeys(events)),
            "SignatureTokenToMsSignatureHeader": bool(_field(body, "SignatureTokenToMsSignatureHeader")),
        }
        return Response(status, self._view())

    def _view(self) -> dict[str, Any]:
        assert self.registration is not None
        return dict(self.registration)

    def take_validation_slot(self) -> bool:
        """Consume one of the documented two test events per minute; False when over the limit."""
        now = time.monotonic()
        while self._validation_times and now - self._validation_times[0] >= 60:
            self._validation_times.popleft()
        if len(self._validation_times) >= self.validation_events_per_minute:
            return False
        self._validation_times.append(now)
        return True

    def new_correlation_id(self) -> str:
        correlation_id = str(uuid.uuid4())
        self.validation_events[correlation_id] = None
        return correlation_id

    def validation_status(self, correlation_id: str) -> Response:
        if correlation_id not in self.validation_events:
            return error(404, "itemNotFound", "No validation event with this correlation id.")
        delivery = self.validation_events[correlation_id]
        return Response(
            200,
            {
                "correlationId": correlation_id,
                "partnerId": self.partner_id,
                "status": "completed" if delivery is None or delivery.status != "pending" else "pending",
                "callbackUrl": delivery.url if delivery else (self.registration or {}).get("WebhookUrl"),
                "results": list(delivery.attempts) if delivery else [],
            },
        )
