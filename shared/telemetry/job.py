"""The span and the structured record of one job run.

:func:`job_span` wraps one invocation of the queue worker: a ``sync.job`` span with the job's dimensions,
a correlation id (sent to Partner Center as ``MS-CorrelationId``), and at the end one ``SyncJobCompleted``
event with the outcome; a last attempt that fails also emits ``SyncJobPoisoned``. What the job did (the
pair's ids, the direction, the action) becomes known inside the run: :func:`current_job` hands the engine's
outcome to the span (see :class:`shared.telemetry.traced.TracedEngine`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from ..ports import KIND_REFERRAL, PC_TO_CRM, Job
from ..sync.webhook_intake import REFERRAL_EVENTS
from .correlation import correlation_scope
from .events import Dimension, emit
from .failures import record_failure
from .names import (
    DIM_ACTION,
    DIM_ATTEMPT,
    DIM_CORRELATION_ID,
    DIM_CRM_ID,
    DIM_DIRECTION,
    DIM_FAILURE_REASON,
    DIM_JOB_KIND,
    DIM_JOB_REASON,
    DIM_OUTCOME,
    DIM_REFERRAL_ID,
    DIM_WEBHOOK_TO_CRM_MS,
    EVENT_JOB_COMPLETED,
    EVENT_JOB_POISONED,
    OUTCOME_DEFERRED,
    OUTCOME_FAILED,
    OUTCOME_POISONED,
    OUTCOME_SUCCEEDED,
    SPAN_JOB,
)

_tracer = trace.get_tracer("shared.telemetry")
_current: ContextVar[JobRun | None] = ContextVar("cosell_job_run", default=None)
# What a job that wrote the CRM after a webhook did: these are the deliveries whose latency is measured.
_WRITES = frozenset({"created", "updated"})


class JobOutcome(Protocol):
    """What the engine reports (shared.sync.recording.Outcome)."""

    action: str
    direction: str
    crm_id: str | None
    referral_id: str | None


@dataclass
class JobRun:
    job: Job
    span: Span
    dimensions: dict[str, Dimension | None] = field(default_factory=dict)

    def set(self, **dimensions: Dimension | None) -> None:
        for key, value in dimensions.items():
            if value is None or value == "":
                continue
            self.dimensions[key] = value
            self.span.set_attribute(key, value)

    def record(self, outcome: JobOutcome) -> None:
        self.set(
            **{
                DIM_ACTION: outcome.action,
                DIM_DIRECTION: outcome.direction,
                DIM_CRM_ID: outcome.crm_id,
                DIM_REFERRAL_ID: outcome.referral_id,
            }
        )

    def finished(self, action: str) -> None:
        """The job runner's answer: the action, or ``deferred`` when the job went back on the queue."""
        self.set(**{DIM_ACTION: action})


def current_job() -> JobRun | None:
    return _current.get()


def _webhook_latency_ms(job: Job, run: JobRun, now: datetime) -> int | None:
    if job.reason not in REFERRAL_EVENTS or run.dimensions.get(DIM_DIRECTION) != PC_TO_CRM:
        return None
    if run.dimensions.get(DIM_ACTION) not in _WRITES or not job.enqueued_at:
        return None
    try:
        enqueued = datetime.fromisoformat(job.enqueued_at)
    except ValueError:
        return None
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=UTC)
    return max(0, int((now - enqueued).total_seconds() * 1000))


@contextmanager
def job_span(
    job: Job, attempt: int, final_attempt: bool, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Iterator[JobRun]:
    with (
        correlation_scope() as correlation_id,
        _tracer.start_as_current_span(
            SPAN_JOB, kind=SpanKind.CONSUMER, record_exception=False, set_status_on_exception=False
        ) as span,
    ):
        run = JobRun(job, span)
        run.set(
            **{
                DIM_JOB_KIND: job.kind,
                DIM_JOB_REASON: job.reason,
                DIM_ATTEMPT: attempt,
                DIM_CORRELATION_ID: correlation_id,
                DIM_DIRECTION: job.direction,
                DIM_REFERRAL_ID if job.kind == KIND_REFERRAL else DIM_CRM_ID: job.record_id,
            }
        )
        token = _current.set(run)
        try:
            yield run
        except Exception as exc:
            outcome = OUTCOME_POISONED if final_attempt else OUTCOME_FAILED
            reason = record_failure(span, exc)
            run.set(**{DIM_OUTCOME: outcome, DIM_FAILURE_REASON: reason})
            run.set(**{DIM_ACTION: "failed"})
            emit(EVENT_JOB_COMPLETED, run.dimensions, logging.WARNING)
            if final_attempt:
                emit(EVENT_JOB_POISONED, run.dimensions, logging.ERROR)
            raise
        else:
            deferred = run.dimensions.get(DIM_ACTION) == OUTCOME_DEFERRED
            run.set(**{DIM_OUTCOME: OUTCOME_DEFERRED if deferred else OUTCOME_SUCCEEDED})
            run.set(**{DIM_WEBHOOK_TO_CRM_MS: _webhook_latency_ms(job, run, now())})
            emit(EVENT_JOB_COMPLETED, run.dimensions)
        finally:
            _current.reset(token)
