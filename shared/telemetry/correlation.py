"""One correlation id per unit of work (a job, a poll, a reconciliation), held in a context variable so the
HTTP client can send it as ``MS-CorrelationId`` without every adapter passing it along."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .names import CORRELATION_HEADER

_current: ContextVar[str | None] = ContextVar("cosell_correlation_id", default=None)


def current_correlation_id() -> str | None:
    return _current.get()


@contextmanager
def correlation_scope() -> Iterator[str]:
    """A fresh id for the work inside the block; the previous one (if any) comes back after it."""
    correlation_id = str(uuid.uuid4())
    token = _current.set(correlation_id)
    try:
        yield correlation_id
    finally:
        _current.reset(token)


def correlation_headers() -> Mapping[str, str]:
    """The header for Partner Center requests, empty outside a unit of work."""
    correlation_id = _current.get()
    return {CORRELATION_HEADER: correlation_id} if correlation_id else {}


_installed = False


def install_log_correlation() -> None:
    """Every log record written inside a unit of work carries its ``correlationId`` (a custom dimension in
    App Insights), so one job's lines are found together."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        correlation_id = _current.get()
        if correlation_id is not None:
            record.correlationId = correlation_id
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
