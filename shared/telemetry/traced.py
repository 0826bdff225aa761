"""Telemetry around the services, added by wiring without the services knowing: the engine (each job's
outcome, refused credentials, the quota stop), the change feeds (poll and reconcile spans, changes the
reconciliation found) and the webhook intake (deliveries received).

Each wrapper forwards every other attribute to what it wraps, so callers see the same object."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from ..domain.errors import AuthenticationError, QuotaExceeded
from ..ports import Job
from .correlation import correlation_scope
from .events import emit
from .failures import record_failure
from .job import JobOutcome, current_job
from .names import (
    DIM_CORRELATION_ID,
    DIM_ENQUEUED,
    DIM_EVENT_NAME,
    DIM_PAUSED_SECONDS,
    DIM_REFERRAL_ID,
    DIM_SEEN,
    DIM_SERVICE,
    DIM_STATUS,
    EVENT_CREDENTIAL_REFUSED,
    EVENT_QUOTA_PAUSED,
    EVENT_RECONCILE_CHANGES,
    EVENT_WEBHOOK_RECEIVED,
    SPAN_WEBHOOK,
)

_tracer = trace.get_tracer("shared.telemetry")


class _Engine(Protocol):
    def handle(self, job: Job, final_attempt: bool = False) -> Any: ...


class _Feed(Protocol):
    def poll(self) -> Any: ...


class _Intake(Protocol):
    def receive(self, headers: Mapping[str, str], raw_body: bytes) -> Any: ...


def _service_failure(exc: Exception, pause_seconds: int) -> None:
    """The signals the alerts watch: a refused credential, the CRM's quota used up."""
    if isinstance(exc, AuthenticationError):
        emit(EVENT_CREDENTIAL_REFUSED, {DIM_SERVICE: exc.service, DIM_STATUS: exc.status}, logging.ERROR)
    elif isinstance(exc, QuotaExceeded):
        seconds = int(exc.retry_after) if exc.retry_after is not None else pause_seconds
        emit(EVENT_QUOTA_PAUSED, {DIM_SERVICE: exc.service, DIM_PAUSED_SECONDS: seconds}, logging.WARNING)


class TracedEngine:
    def __init__(self, inner: _Engine, pause_seconds: int) -> None:
        self.inner, self.pause_seconds = inner, pause_seconds

    def handle(self, job: Job, final_attempt: bool = False) -> Any:
        try:
            outcome: JobOutcome = self.inner.handle(job, final_attempt=final_attempt)
        except (AuthenticationError, QuotaExceeded) as exc:
            _service_failure(exc, self.pause_seconds)
            raise
        run = current_job()
        if run is not None:
            run.record(outcome)
        return outcome

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TracedFeed:
    """A poll or reconciliation: its span, a correlation id, and (for the reconciliation) what it found."""

    def __init__(self, inner: _Feed, span_name: str, pause_seconds: int, found_event: str | None = None) -> None:
        self.inner, self.span_name, self.pause_seconds, self.found_event = inner, span_name, pause_seconds, found_event

    def poll(self) -> Any:
        with (
            correlation_scope() as correlation_id,
            _tracer.start_as_current_span(
                self.span_name, attributes={DIM_CORRELATION_ID: correlation_id}, record_exception=False
            ) as span,
        ):
            try:
                result = self.inner.poll()
            except Exception as exc:
                record_failure(span, exc)
                if isinstance(exc, (AuthenticationError, QuotaExceeded)):
                    _service_failure(exc, self.pause_seconds)
                raise
            span.set_attribute(DIM_SEEN, result.seen)
            span.set_attribute(DIM_ENQUEUED, result.enqueued)
            if self.found_event == EVENT_RECONCILE_CHANGES and result.enqueued:
                emit(EVENT_RECONCILE_CHANGES, {DIM_SEEN: result.seen, DIM_ENQUEUED: result.enqueued})
            return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TracedIntake:
    def __init__(self, inner: _Intake) -> None:
        self.inner = inner

    def receive(self, headers: Mapping[str, str], raw_body: bytes) -> Any:
        with _tracer.start_as_current_span(SPAN_WEBHOOK, kind=SpanKind.SERVER) as span:
            result = self.inner.receive(headers, raw_body)
            span.set_attribute(DIM_STATUS, result.status)
            if result.status == 202:
                body = result.body
                emit(
                    EVENT_WEBHOOK_RECEIVED,
                    {
                        DIM_EVENT_NAME: body.get("event"),
                        DIM_REFERRAL_ID: body.get("referralId"),
                        DIM_STATUS: body.get("status"),
                    },
                )
            return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
