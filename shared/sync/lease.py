"""A pair lease that the job holding it cannot outlive.

The engine holds one lease per pair while a job runs, so two workers never write the same pair. A job can
legitimately run longer than the lease (slow calls, retries, inline ``Retry-After`` waits), so a background
thread renews it every third of its length. Should renewals stop working (storage unreachable, the worker's
process starved), the keeper does not wait to be told: it stops allowing writes at a local deadline that
comes before any other worker may take the pair over.

Why the deadline is safe. Another worker may take the pair once the row's ``Until`` has passed by *its*
clock. Our row's ``Until`` is (when our last renewal wrote it) + lease, by our clock. We stop allowing writes
at (when that renewal started) + lease - margin, on the monotonic clock. A write that passed the check just
before the deadline is in flight for at most one HTTP timeout, so with margin = HTTP timeout + the clock
skew we allow between workers, every write of ours lands before anyone else may begin. Inline waits do not
count: the HTTP client checks again before every attempt. Why the lease must exceed three margins: with
renewals every third of the lease, the deadline (lease - margin after a renewal) then comes after the
second renewal is due, so one failed renewal costs nothing.

Once lost, always lost: the keeper never takes back a lease someone else may have taken in between.

Taken with the first write. A job reads both sides and its link before it takes the lease, and takes it only when
it is about to write: a job that finds nothing to do costs no lease at all. The take proves the links the job read
unchanged (the store writes the lease row on condition of their etags, in one request), so what the job decided
from them still holds, and the store folds the take into the job's first link save when that is its first write.
Another worker holding the pair makes the take fail, and the job is retried later (:class:`PairBusy`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

from ..domain.errors import LeaseLost, PairBusy
from ..ports import Link, SyncStore

log = logging.getLogger(__name__)

THREAD_NAME_PREFIX = "lease-renewal:"
RENEWALS_PER_LEASE = 3


class LeaseKeeper:
    """Taken by :meth:`check` (the write fence) before the job's first write, or by the store with it; released by
    leaving ``with`` unless the job's last link save released it. :meth:`acquire` takes it at once."""

    def __init__(
        self,
        store: SyncStore,
        key: str,
        seconds: int,
        margin_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds <= RENEWALS_PER_LEASE * margin_seconds:
            raise ValueError(
                f"a lease of {seconds}s cannot be kept with a {margin_seconds:g}s safety margin: "
                f"it must be more than {RENEWALS_PER_LEASE} margins"
            )
        self.store, self.key, self.seconds, self.margin = store, key, seconds, margin_seconds
        self.owner = uuid.uuid4().hex
        self.interval = seconds / RENEWALS_PER_LEASE
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._row_lock = threading.Lock()
        self._taken = False
        self._released = False
        self._seen: list[Link] = []
        # Set by the engine for a job that writes nothing after its last link save (see ports.PairLease).
        self.release_with_last_save = False

    def acquire(self) -> bool:
        """Take the lease now if nobody holds it, proving the links seen so far unchanged, and start renewing it;
        False when another worker holds it."""
        started = self._monotonic()
        if not self.store.acquire_lease(self.key, self.owner, self.seconds, self._seen):
            return False
        self.took(started)
        return True

    # -- what the store sees (ports.PairLease) ------------------------------------------------------------
    def ends_with_last_save(self) -> bool:
        return self.release_with_last_save

    def untaken(self) -> bool:
        return not self._taken

    def saw(self, link: Link) -> None:
        if not self._taken:
            # A link read again replaces the copy read before: the job goes on with the newer one.
            self._seen = [*(seen for seen in self._seen if seen.referral_id != link.referral_id), link]

    def seen(self) -> Sequence[Link]:
        return tuple(self._seen)

    def took(self, started: float) -> None:
        with self._lock:
            self._taken = True
            self._deadline = started + self.seconds - self.margin
        self._seen.clear()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, args=(started,), name=THREAD_NAME_PREFIX + self.key, daemon=True
        )
        self._thread.start()

    @contextmanager
    def row_lock(self) -> Iterator[None]:
        with self._row_lock:
            yield

    def released(self) -> None:
        self._released = True
        self._stop.set()

    @property
    def lost(self) -> bool:
        with self._lock:
            return self._lost_reason() is not None

    def check(self) -> None:
        """Take the lease before the job's first write (:class:`PairBusy` when another worker holds it); raise
        :class:`LeaseLost` when this worker may no longer write the pair."""
        if not self._taken and not self.acquire():
            raise PairBusy("sync", f"{self.key} is being synchronised by another worker")
        with self._lock:
            reason = self._lost_reason() if not self._released else "the job released it with its last save"
        if reason is not None:
            raise LeaseLost("sync", f"this worker lost the lease on {self.key} ({reason}); it stops before writing")

    def release(self) -> None:
        """Stop renewing, then delete the row if it is still ours (the store checks owner and etag). Nothing to
        do for a lease never taken, or released with the job's last save."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            # A renewal in flight ends within the storage client's own timeouts; the thread then sees the stop.
            thread.join(timeout=self.seconds)
            if thread.is_alive():
                log.warning("the renewal of lease %s is still in flight; it stops after that call", self.key)
        if self._taken and not self._released:
            self.store.release_lease(self.key, self.owner)

    def __enter__(self) -> LeaseKeeper:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- internals -------------------------------------------------------------------------------------
    def _lost_reason(self) -> str | None:
        """Call with the lock held. Passing the deadline is final, even if a late renewal succeeds after it."""
        if not self._taken:
            return None
        if self._lost is None and self._monotonic() > self._deadline:
            self._lost = "it could not be renewed in time"
        return self._lost

    def _renew_until_stopped(self, last_start: float) -> None:
        next_at = last_start + self.interval
        while not self._stop.wait(max(0.0, next_at - self._monotonic())):
            started = self._monotonic()
            next_at = started + self.interval
            with self._lock:
                if self._lost_reason() is not None:
                    return
            try:
                with self._row_lock:
                    if self._released:
                        return
                    renewed = self.store.renew_lease(self.key, self.owner, self.seconds)
            except Exception as exc:  # any storage failure: the deadline decides, so keep trying until it
                log.warning("could not renew the lease on %s (%s); trying again", self.key, type(exc).__name__)
                continue
            with self._lock:
                if not renewed:
                    self._lost = "another worker holds it now, or it expired"
                    log.warning("lost the lease on %s: %s", self.key, self._lost)
                    return
                if self._lost_reason() is not None:
                    return
                self._deadline = started + self.seconds - self.margin
