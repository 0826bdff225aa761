"""Partner Center webhook registration (Webhooks API): one registration per tenant, last one wins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..domain.errors import Conflict
from ..httpclient import ApiClient

REGISTRATION_PATH = "/webhooks/v1/registration"
REFERRAL_EVENTS = ("referral-created", "referral-updated", "related-referral-created", "related-referral-updated")


class WebhookRegistrationClient:
    def __init__(self, base_url: str, token: Callable[[], str], *, timeout: float = 30.0) -> None:
        self.api = ApiClient(
            "Partner Center webhooks", base_url, token, timeout=timeout, default_headers={"Accept": "application/json"}
        )

    def current(self) -> dict[str, Any] | None:
        response = self.api.request("GET", REGISTRATION_PATH, ok_statuses=(404,))
        if response.status_code == 404 or not response.content:
            return None
        body: dict[str, Any] = response.json()
        return body or None

    def register(
        self, webhook_url: str, events: tuple[str, ...] = REFERRAL_EVENTS, signature_in_ms_header: bool = False
    ) -> dict[str, Any]:
        """Create the registration, or replace the existing one (the service answers 409 to a second POST)."""
        body = {
            "WebhookUrl": webhook_url,
            "WebhookEvents": list(events),
            "SignatureTokenToMsSignatureHeader": signature_in_ms_header,
        }
        try:
            response = self.api.request("POST", REGISTRATION_PATH, json=body)
        except Conflict:
            response = self.api.request("PUT", REGISTRATION_PATH, json=body)
        result: dict[str, Any] = response.json()
        return result
