"""Partner Center webhook registration (Webhooks API): one registration per tenant, last one wins.

Documented operations: view (GET), create (POST; 409 when one exists), update (PUT) the registration, send a
test event (POST ``validationEvents``, at most two a minute, needs ``test-created`` in the registration) and read
its delivery status (GET ``validationEvents/{correlationId}``). Creating and replacing are separate calls on
purpose: replacing another endpoint's registration is a decision for the operator, not a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..httpclient import ApiClient

REGISTRATION_PATH = "/webhooks/v1/registration"
VALIDATION_PATH = f"{REGISTRATION_PATH}/validationEvents"
REFERRAL_EVENTS = ("referral-created", "referral-updated", "related-referral-created", "related-referral-updated")
TEST_EVENT = "test-created"
REGISTERED_EVENTS = (*REFERRAL_EVENTS, TEST_EVENT)


def _field(body: dict[str, Any], name: str) -> Any:
    # The documented bodies use PascalCase, the swagger camelCase.
    return next((value for key, value in body.items() if key.lower() == name.lower()), None)


@dataclass(frozen=True)
class CurrentRegistration:
    url: str
    events: tuple[str, ...]
    signature_in_ms_header: bool

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CurrentRegistration:
        events = _field(body, "WebhookEvents")
        return cls(
            str(_field(body, "WebhookUrl") or ""),
            tuple(str(e) for e in events) if isinstance(events, list) else (),
            bool(_field(body, "SignatureTokenToMsSignatureHeader")),
        )


@dataclass(frozen=True)
class DeliveryAttempt:
    response_code: int | None
    message: str
    at: str


class WebhookRegistrationClient:
    def __init__(self, base_url: str, token: Callable[[], str], *, timeout: float = 30.0) -> None:
        self.api = ApiClient(
            "Partner Center webhooks", base_url, token, timeout=timeout, default_headers={"Accept": "application/json"}
        )

    def current(self) -> CurrentRegistration | None:
        response = self.api.request("GET", REGISTRATION_PATH, ok_statuses=(404,))
        if response.status_code == 404 or not response.content:
            return None
        body = response.json()
        return CurrentRegistration.from_body(body) if isinstance(body, dict) and body else None

    def create(self, webhook_url: str, events: tuple[str, ...], signature_in_ms_header: bool) -> CurrentRegistration:
        """POST: only when there is no registration (Partner Center answers 409, raised as Conflict, otherwise)."""
        return self._send("POST", webhook_url, events, signature_in_ms_header)

    def replace(self, webhook_url: str, events: tuple[str, ...], signature_in_ms_header: bool) -> CurrentRegistration:
        """PUT: replaces the tenant's registration, wherever it pointed."""
        return self._send("PUT", webhook_url, events, signature_in_ms_header)

    def _send(self, method: str, url: str, events: tuple[str, ...], ms_header: bool) -> CurrentRegistration:
        body = {"WebhookUrl": url, "WebhookEvents": list(events), "SignatureTokenToMsSignatureHeader": ms_header}
        answer = self.api.request(method, REGISTRATION_PATH, json=body).json()
        return CurrentRegistration.from_body(answer if isinstance(answer, dict) else body)

    def send_test_event(self) -> str:
        """Ask Partner Center to send a ``test-created`` event to the registered URL; its correlation id."""
        body = self.api.request("POST", VALIDATION_PATH, idempotent=False).json()
        correlation_id = _field(body, "correlationId") if isinstance(body, dict) else None
        if not correlation_id:
            raise ValueError("Partner Center answered the test event request without a correlation id")
        return str(correlation_id)

    def test_event_attempts(self, correlation_id: str) -> list[DeliveryAttempt]:
        """Partner Center's record of each attempt to deliver the test event (none yet: an empty list)."""
        body = self.api.request("GET", f"{VALIDATION_PATH}/{correlation_id}").json()
        results = _field(body, "results") if isinstance(body, dict) else None
        attempts = []
        for result in results if isinstance(results, list) else []:
            code = _field(result, "responseCode")
            attempts.append(
                DeliveryAttempt(
                    int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
                    str(_field(result, "responseMessage") or _field(result, "systemError") or ""),
                    str(_field(result, "dateTimeUtc") or ""),
                )
            )
        return attempts
