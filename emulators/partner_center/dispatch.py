"""Signed webhook callbacks of the emulated Partner Center, delivered with retries.

Like the real service, delivery happens after the API call that caused it has returned (``async``), is
retried up to ``max_attempts`` times when the receiver does not answer 2xx, and is recorded so tests
can inspect status codes and attempts. ``sync`` delivers before returning, ``off`` records nothing,
``hold`` records each delivery and keeps it until :meth:`WebhookDispatcher.release` (delivery paused: what
is raised after a release is held in turn, until the mode changes).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .pki import Signer

DispatchMode = Literal["async", "sync", "off", "hold"]


@dataclass
class Delivery:
    id: str
    event_name: str
    resource_uri: str
    url: str
    body: bytes
    headers: dict[str, str]
    referral_id: str | None = None
    correlation_id: str | None = None
    status: str = "pending"  # held | pending | delivered | failed
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_status_code(self) -> int | None:
        return self.attempts[-1]["responseCode"] if self.attempts else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "eventName": self.event_name,
            "resourceUri": self.resource_uri,
            "url": self.url,
            "referralId": self.referral_id,
            "correlationId": self.correlation_id,
            "status": self.status,
            "attempts": list(self.attempts),
            "headers": dict(self.headers),
            "body": self.body.decode("utf-8"),
        }


def change_date(changed_at: str | None = None) -> str:
    """When the resource changed: its ``updatedDateTime`` when given (the emulator's reading of the field;
    Partner Center does not document how the two relate), else now. Same shape as the documented sample:
    seven fractional digits and an explicit +00:00 offset."""
    moment = dt.datetime.now(dt.UTC)
    if changed_at:
        moment = dt.datetime.fromisoformat(changed_at.replace("Z", "+00:00")).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"


def event_body(event_name: str, resource_uri: str, resource_name: str, changed_at: str | None = None) -> bytes:
    payload = {
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name,
        "AuditUri": None,
        "ResourceChangeUtcDate": change_date(changed_at),
    }
    return json.dumps(payload).encode("utf-8")


def signed_headers(
    body: bytes, signer: Signer, certificate_url: str, ms_signature_header: bool, corrupt_signature: bool = False
) -> dict[str, str]:
    signature = bytearray(signer.key.sign(body, padding.PKCS1v15(), hashes.SHA256()))
    if corrupt_signature:
        signature[len(signature) // 2] ^= 0xFF
    value = "Signature " + base64.b64encode(bytes(signature)).decode("ascii")
    return {
        "Content-Type": "application/json",
        ("x-ms-signature" if ms_signature_header else "Authorization"): value,
        "X-MS-Certificate-Url": certificate_url,
        "X-MS-Signature-Algorithm": "rsa-sha256",
    }


def new_delivery(
    event_name: str,
    resource_uri: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    referral_id: str | None = None,
    correlation_id: str | None = None,
) -> Delivery:
    return Delivery(str(uuid.uuid4()), event_name, resource_uri, url, body, headers, referral_id, correlation_id)


class WebhookDispatcher:
    """One worker thread, so callbacks leave in the order the changes happened."""

    def __init__(
        self, mode: DispatchMode = "async", max_attempts: int = 10, retry_delay: float = 0.1, timeout: float = 5.0
    ) -> None:
        self.mode: DispatchMode = mode
        self.max_attempts, self.retry_delay, self.timeout = max_attempts, retry_delay, timeout
        self.deliveries: list[Delivery] = []
        self._held: list[Delivery] = []
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, delivery: Delivery, force: bool = False) -> Delivery | None:
        """Queue (or, in ``sync`` mode, make) the delivery; ``force`` sends even when dispatch is off."""
        if self.mode == "off" and not force:
            return None
        with self._idle:
            self.deliveries.append(delivery)
            self._pending += 1
            self._idle.notify_all()
            if self.mode == "hold" and not force:
                delivery.status = "held"
                self._held.append(delivery)
                return delivery
        self._send(delivery)
        return delivery

    def release(self) -> int:
        """Send every held delivery, in the order raised; returns how many."""
        with self._idle:
            held, self._held = self._held, []
            for delivery in held:
                delivery.status = "pending"
        for delivery in held:
            self._send(delivery)
        return len(held)

    def _send(self, delivery: Delivery) -> None:
        if self.mode == "sync":
            self._deliver(delivery)
        else:
            self._ensure_worker()
            self._queue.put(delivery)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once every submitted delivery has succeeded or run out of attempts."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """True once ``count`` deliveries were submitted and all of them have finished."""
        with self._idle:
            return self._idle.wait_for(lambda: len(self.deliveries) >= count and self._pending == 0, timeout=timeout)

    def clear(self) -> None:
        with self._idle:
            self._pending -= len(self._held)
            self._held.clear()
            self.deliveries.clear()

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=2)
            self._worker = None

    def _ensure_worker(self) -> None:
        with self._idle:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="pc-webhook-dispatch", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            self._deliver(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        try:
            for attempt in range(1, self.max_attempts + 1):
                record = self._attempt(delivery)
                with self._idle:
                    delivery.attempts.append(record)
                    if 200 <= record["responseCode"] < 300:
                        delivery.status = "delivered"
                        return
                    if attempt == self.max_attempts:
                        delivery.status = "failed"
                        return
                time.sleep(self.retry_delay * attempt)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _attempt(self, delivery: Delivery) -> dict[str, Any]:
        stamp = dt.datetime.now(dt.UTC).isoformat()
        try:
            response = requests.post(
                delivery.url, data=delivery.body, headers=delivery.headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            return {"responseCode": 0, "responseMessage": "", "systemError": type(exc).__name__, "dateTimeUtc": stamp}
        return {
            "responseCode": response.status_code,
            "responseMessage": response.text[:500],
            "systemError": None,
            "dateTimeUtc": stamp,
        }
