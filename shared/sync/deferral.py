"""Which errors put a job back on the queue for later instead of counting as a failed attempt.

The Functions host moves a job to the poison queue after a few failed attempts. That is right for a
record that keeps failing, and wrong when the service asked us to come back later: a throttled job
would be poisoned by the service's own back-off. Such a job is deferred (sent again, invisible for the
service's delay) and its attempt does not count.
"""

from __future__ import annotations

from ..domain.errors import LeaseLost, QuotaExceeded, Throttled, TransientError

# Statuses that mean "not now" rather than "something broke": the service did nothing and named a delay.
THROTTLE_STATUSES = frozenset({429, 503})


def throttle_delay(exc: BaseException, default_seconds: float) -> float | None:
    """Seconds to wait before the job may run again when ``exc`` is a throttle, else None.

    A 429 is a throttle with or without ``Retry-After`` (then ``default_seconds``); a 503 is one only when it
    names a delay, since a bare 503 is an outage that should count towards the poison queue like any other.
    A used-up quota is not included: it pauses all CRM work instead (see the job runner).
    """
    if isinstance(exc, QuotaExceeded) or not isinstance(exc, TransientError):
        return None
    if exc.retry_after is not None and (isinstance(exc, Throttled) or exc.status in THROTTLE_STATUSES):
        return exc.retry_after
    if isinstance(exc, Throttled) or exc.status == 429:
        return default_seconds
    return None


def is_deferred(exc: BaseException) -> bool:
    """True when the job runner defers the job after ``exc`` rather than counting a failed attempt, so no
    "gave up" failure may be recorded for it even on the last attempt."""
    return isinstance(exc, (QuotaExceeded, LeaseLost)) or throttle_delay(exc, 0.0) is not None
