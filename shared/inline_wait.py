"""How long a request may wait inline for a service that holds it back, given what its job already has.

A request refused with a ``Retry-After``, or held back for its turn under Dataverse's request limit
(:mod:`shared.request_pacing`), waits inline up to ``MAX_INLINE_RETRY_AFTER_SECONDS``; a longer wait defers
its job on the queue. Deferring a job that has had no answer yet costs nothing. A job that has had answers
(its referral read from Partner Center, its customer found in the CRM) asks for all of them again when it
runs again, so each deferral spends those requests twice. Such a job waits longer, up to
``MAX_STARTED_JOB_WAIT_SECONDS``: the penalty Dataverse sets when its request limit is passed lasts minutes,
longer than a request should otherwise block, and shorter than the function's timeout. Its pair lease is
taken with the first write and renewed while it waits, so waiting costs no lease either.

The engine opens :func:`job_waits` for each job; the HTTP client marks each answer with :func:`answered` and
asks :func:`allowed_wait` before it waits. A context variable keeps this per thread (the Functions host runs
jobs on a thread pool), like the write fence. Outside a job (the CRM poll, the console) nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class _JobWaits:
    started_wait: float
    answered: bool = False


_current: ContextVar[_JobWaits | None] = ContextVar("job_waits", default=None)


@contextmanager
def job_waits(started_wait: float) -> Iterator[None]:
    """Run one job: once a request of it has been answered, its requests may wait up to ``started_wait``."""
    token = _current.set(_JobWaits(started_wait))
    try:
        yield
    finally:
        _current.reset(token)


def answered() -> None:
    """A request of the job on this thread got an answer it would have to ask for again if deferred."""
    job = _current.get()
    if job is not None:
        job.answered = True


def allowed_wait(default: float) -> float:
    """The inline wait a request may add up to: ``default``, or the longer one of a job that has had answers."""
    job = _current.get()
    return max(default, job.started_wait) if job is not None and job.answered else default
