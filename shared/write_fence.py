"""A fence on writes: a job that has lost its pair lease must not write anything more.

The sync engine holds a lease per pair while it works (:mod:`shared.sync.lease`). If the lease is lost
(renewal failed, or the worker was stalled past it), another worker may already be writing the same
pair, so every external write from then on must stop. Adapters do not know about leases; instead the
HTTP client and the table store call :func:`check_write_allowed` before every write, and the engine
installs the check for the duration of a job with :func:`fenced`. Reads stay allowed: they cannot
harm, and the job needs them to end cleanly.

The check also takes the lease when the job writes for the first time. The table store, which can write the
lease row together with a link in one request, asks for the job's lease with :func:`current_lease` first.

A context variable keeps the check per thread (the Functions host runs jobs on a thread pool), so one
job's fence never stops another job's writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .ports import PairLease

Check = Callable[[], None]

_current: ContextVar[Check | None] = ContextVar("write_fence", default=None)
_lease: ContextVar[PairLease | None] = ContextVar("pair_lease", default=None)


@contextmanager
def fenced(check: Check, lease: PairLease | None = None) -> Iterator[None]:
    """Run the body with ``check`` called before each write; ``check`` raises to forbid the write."""
    token, lease_token = _current.set(check), _lease.set(lease)
    try:
        yield
    finally:
        _current.reset(token)
        _lease.reset(lease_token)


def check_write_allowed() -> None:
    check = _current.get()
    if check is not None:
        check()


def current_lease() -> PairLease | None:
    """The lease of the job running on this thread, if any."""
    return _lease.get()
