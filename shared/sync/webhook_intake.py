"""Partner Center webhook intake: size check, signature check, parse, enqueue one job, answer.

Nothing is enqueued unless every check passed; the answer says why a delivery was refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from ..domain.errors import WebhookRejected
from ..ports import KIND_REFERRAL, Job, JobQueue

log = logging.getLogger(__name__)

REFERRAL_EVENTS = frozenset(
    {"referral-created", "referral-updated", "related-referral-created", "related-referral-updated"}
)
TEST_EVENT = "test-created"


class SignatureVerifier(Protocol):
    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> None: ...


class WebhookEvent(BaseModel):
    """The callback body; Partner Center sends PascalCase names."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    EventName: str
    ResourceUri: str
    ResourceName: str | None = None
    AuditUri: str | None = None
    ResourceChangeUtcDate: str | None = None


@dataclass(frozen=True)
class IntakeResult:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def _error(status: int, message: str) -> IntakeResult:
    return IntakeResult(status, {"error": message})


class WebhookIntake:
    def __init__(
        self,
        verifier: SignatureVerifier,
        queue: JobQueue,
        max_body_bytes: int,
        referral_id_from_uri: Any,
        on_test_event: Callable[[str], None] | None = None,
    ) -> None:
        self.verifier = verifier
        self.queue = queue
        self.max_body_bytes = max_body_bytes
        self._referral_id = referral_id_from_uri
        # Told the ResourceUri of each verified test event: `register-webhook` waits for that record.
        self._on_test_event = on_test_event

    def receive(self, headers: Mapping[str, str], raw_body: bytes) -> IntakeResult:
        if len(raw_body) > self.max_body_bytes:
            return _error(413, f"body larger than {self.max_body_bytes} bytes")
        try:
            self.verifier.verify(headers, raw_body)
        except WebhookRejected as exc:
            log.warning("webhook rejected (%s): %s", exc.status, exc)
            return _error(exc.status, str(exc))
        try:
            event = WebhookEvent.model_validate(json.loads(raw_body.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, "body is not valid UTF-8 JSON")
        except ValidationError as exc:
            missing = ", ".join(str(e["loc"][0]) for e in exc.errors() if e.get("loc"))
            return _error(400, f"event is missing or has invalid fields: {missing}")
        if event.EventName == TEST_EVENT:
            if self._on_test_event is not None:
                self._on_test_event(event.ResourceUri)
            return IntakeResult(202, {"status": "ignored", "reason": "test event acknowledged"})
        if event.EventName not in REFERRAL_EVENTS:
            log.info("webhook event %s acknowledged and ignored", event.EventName)
            return IntakeResult(202, {"status": "ignored", "reason": f"event {event.EventName} is not synchronised"})
        try:
            referral_id = self._referral_id(event.ResourceUri)
        except ValueError as exc:
            return _error(400, f"ResourceUri does not name a referral: {exc}")
        self.queue.enqueue(
            Job(KIND_REFERRAL, referral_id, reason=event.EventName, version=event.ResourceChangeUtcDate or "")
        )
        return IntakeResult(202, {"status": "queued", "referralId": referral_id, "event": event.EventName})
