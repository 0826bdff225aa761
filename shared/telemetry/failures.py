"""How a failure is described in telemetry: a short, low-cardinality reason (for "failures by reason") and
an exception event without secrets."""

from __future__ import annotations

from opentelemetry.trace import Span, StatusCode

from ..domain.errors import ExternalServiceError
from .redact import redact


def failure_reason(exc: BaseException) -> str:
    """``TransientError (Partner Center 503)``: the error's kind, service and status, never its message."""
    kind = type(exc).__name__
    if isinstance(exc, ExternalServiceError):
        detail = " ".join(str(part) for part in (exc.service, exc.status) if part)
        return f"{kind} ({detail})" if detail else kind
    return kind


def record_failure(span: Span, exc: BaseException) -> str:
    """Mark the span failed with the exception's type and its redacted message; returns the reason."""
    reason = failure_reason(exc)
    span.add_event(
        "exception",
        {"exception.type": type(exc).__name__, "exception.message": redact(str(exc))[:1000]},
    )
    span.set_status(StatusCode.ERROR, reason)
    return reason
