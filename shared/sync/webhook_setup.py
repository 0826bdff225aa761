"""`register-webhook`: register this app's endpoint with Partner Center without taking another's place unasked,
then prove the path works end to end.

Partner Center keeps one registration per tenant and sends every event to the latest URL, so registering over a
registration that points elsewhere (production, another test app, Microsoft's own co-sell connector) silently
takes its events away: that needs ``force``. The proof is a ``test-created`` event: Partner Center signs and
sends it like any other, and the app records it only after the signature check passed, so seeing the record
here means deliveries reach the app and are trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..ports import WebhookRegistration


class Registration(Protocol):
    url: str
    events: tuple[str, ...]
    signature_in_ms_header: bool


class DeliveryRecord(Protocol):
    response_code: int | None
    message: str


class RegistrationApi(Protocol):
    def current(self) -> Registration | None: ...

    def create(self, webhook_url: str, events: tuple[str, ...], signature_in_ms_header: bool) -> Registration: ...

    def replace(self, webhook_url: str, events: tuple[str, ...], signature_in_ms_header: bool) -> Registration: ...

    def send_test_event(self) -> str: ...

    def test_event_attempts(self, correlation_id: str) -> Sequence[DeliveryRecord]: ...


class RegistrationStore(Protocol):
    def save_webhook_registration(self, url: str, events: tuple[str, ...], registered_at: datetime) -> None: ...

    def webhook_registration(self) -> WebhookRegistration | None: ...


class ForeignRegistration(Exception):
    """The tenant's registration points elsewhere and replacing it was not asked for."""

    def __init__(self, current: Registration) -> None:
        self.current = current
        super().__init__(
            f"Partner Center already sends this tenant's events to {current.url}. Registering here would take them "
            "from that endpoint (one URL per tenant; it may be production or Microsoft's co-sell connector). Run "
            "again with --force to replace it."
        )


def same_url(a: str, b: str) -> bool:
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


@dataclass(frozen=True)
class Registered:
    registration: Registration
    previous: Registration | None
    changed: bool  # False when the registration was already exactly this


def register(
    api: RegistrationApi,
    store: RegistrationStore,
    url: str,
    events: tuple[str, ...],
    signature_in_ms_header: bool,
    now: datetime,
    force: bool = False,
) -> Registered:
    current = api.current()
    if current is not None and current.url and not same_url(current.url, url) and not force:
        raise ForeignRegistration(current)
    unchanged = (
        current is not None
        and same_url(current.url, url)
        and set(current.events) == set(events)
        and current.signature_in_ms_header == signature_in_ms_header
    )
    if unchanged:
        assert current is not None
        result = current
    elif current is None:
        result = api.create(url, events, signature_in_ms_header)
    else:
        result = api.replace(url, events, signature_in_ms_header)
    store.save_webhook_registration(result.url, tuple(result.events), now)
    return Registered(result, current, not unchanged)


@dataclass(frozen=True)
class CheckResult:
    correlation_id: str
    received_at: datetime | None  # when the app recorded the verified test event; None when it did not
    attempts: list[DeliveryRecord]

    @property
    def verified(self) -> bool:
        return self.received_at is not None


def _received(store: RegistrationStore, correlation_id: str) -> datetime | None:
    record = store.webhook_registration()
    if record is not None and record.last_test_event_uri.rstrip("/").endswith(correlation_id):
        return record.last_test_event_at
    return None


def check_delivery(
    api: RegistrationApi,
    store: RegistrationStore,
    wait_seconds: float = 60.0,
    *,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Send a test event and wait until the app has recorded it as received and verified, or give up."""
    correlation_id = api.send_test_event()
    deadline = monotonic() + wait_seconds
    while True:
        received = _received(store, correlation_id)
        if received is not None or monotonic() >= deadline:
            return CheckResult(correlation_id, received, list(api.test_event_attempts(correlation_id)))
        sleep(poll_seconds)


def explain(result: CheckResult) -> str:
    """One line for the operator: what reached the app, or what Partner Center saw when nothing did."""
    if result.received_at is not None:
        return (
            f"The test event (correlation id {result.correlation_id}) reached the app and passed the signature "
            f"check at {result.received_at.isoformat()}: deliveries work."
        )
    codes = [a.response_code for a in result.attempts]
    if not codes:
        seen = "Partner Center reports no delivery attempt yet"
    else:
        seen = f"Partner Center's delivery attempts got {', '.join(str(c) for c in codes)}"
    hint = ""
    if 401 in codes or 400 in codes:
        hint = " The app refused the signature: check PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES and the app's log."
    elif 503 in codes:
        hint = " The app answered 503: it is not fully configured (see /api/health)."
    elif any(c is not None and c >= 500 for c in codes):
        hint = " The app failed on it: see its log."
    return (
        f"The test event (correlation id {result.correlation_id}) was not recorded by the app: {seen}.{hint} "
        "Run `python -m shared register-webhook --check` again once fixed (at most two test events a minute)."
    )
