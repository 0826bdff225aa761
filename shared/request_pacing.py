"""One process's pace against a service that limits requests per user over a sliding window (Dataverse).

Dataverse admits so many requests per application user in any 300 s and refuses the rest with 429 and a
``Retry-After``; sending more while refused lengthens the penalty. Every worker thread of every instance
shares that one budget, and none of them knows how many others there are. Retrying each refused request
on its own after its ``Retry-After`` makes a herd: every thread wakes at the same second, one is
admitted and the rest are refused again, and each refusal is a request spent.

So each process keeps its own requests under the share the service has shown it admits:

- Until the first refusal nothing is held back (most orgs never meet the limit).
- A refusal closes the process for its ``Retry-After``: no thread of the process sends before then.
- A refusal for the request limit also gives the process a budget: a little under the number of requests
  it sent in the last window, which is what it got of the shared limit. From then on its requests are
  spaced evenly at that budget per window, so the process stops meeting refusals and no thread waits
  long for a turn.
- The budget grows by a two-hundredth of the service's limit for each fifth of a window it spaces requests
  without a refusal, so a process takes back capacity the others gave up (or never had: one that started
  while the others were busy). Growing past the shared limit costs a refusal and a cut, not a herd.
- Each later refusal cuts the budget by a tenth. A budget never goes below a fiftieth of the limit, and
  the requests already in flight when a refusal comes (refused in the same moment) cut it once, not once
  each.
- Only a refusal that names the request limit teaches a budget. Dataverse also refuses for execution
  time and for concurrent requests; those, and any 429 without the limit in its message, only close
  the process for their ``Retry-After``.

Hand-written: the retry libraries (tenacity, backoff, urllib3's Retry) pace one request's attempts, not
the requests of many threads against a budget learned from the server.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

# Before a refusal names the limit's window, the turns of this long are kept to learn the process's share.
LONGEST_WINDOW_SECONDS = 300.0
_REQUEST_LIMIT = re.compile(
    r"number of requests exceeded the limit of (\d+) over time window of (\d+(?:\.\d+)?) seconds", re.IGNORECASE
)


def dataverse_request_limit(message: str) -> tuple[int, float] | None:
    """(requests, window seconds) from Dataverse's refusal for the number of requests: "Number of requests
    exceeded the limit of 6000 over time window of 300 seconds." None for its other refusals."""
    found = _REQUEST_LIMIT.search(message or "")
    return (int(found.group(1)), float(found.group(2))) if found else None


class RequestPacer:
    """Turns to send requests within one process's learned share of a sliding-window request limit."""

    def __init__(
        self,
        *,
        headroom: float = 0.9,
        limit_of: Callable[[str], tuple[int, float] | None] = dataverse_request_limit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._headroom = headroom
        self._limit_of = limit_of
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()  # when each turn of the last window was taken
        self.budget: int | None = None  # turns per window; None until the service refuses for the request limit
        self.window_seconds = LONGEST_WINDOW_SECONDS
        self._step = 1  # what the budget grows by
        self._floor = 1
        self._closed_until = -math.inf
        self._settled_at = -math.inf  # when the budget was last cut or grown

    def closed_for(self) -> float:
        """Seconds until the service lets this process send again (its last ``Retry-After``), 0.0 when open."""
        with self._lock:
            return max(0.0, self._closed_until - self._clock())

    def turn(self) -> float:
        """0.0 when the caller may send now (the turn is taken), else the seconds to wait before asking again."""
        with self._lock:
            now = self._clock()
            if now < self._closed_until:
                return self._closed_until - now
            if self.budget is not None and self._sent:
                # (A last turn forgotten left the window, longer ago than any spacing.)
                due = self._sent[-1] + self.window_seconds / self.budget
                if now < due:
                    self._grow(now)
                    return due - now
            self._sent.append(now)
            self._forget(now)
            return 0.0

    def refused(self, retry_after: float, message: str = "") -> None:
        """The service refused a request: close for ``retry_after``, and keep under what this process was sent."""
        with self._lock:
            now = self._clock()
            already_closed = now < self._closed_until
            self._closed_until = max(self._closed_until, now + retry_after)
            limit = self._limit_of(message)
            if limit is None or already_closed:
                return  # not the request limit, or a request in flight when the process was refused already
            requests, self.window_seconds = limit
            self._step = max(1, requests // 200)
            self._floor = max(1, requests // 50)
            self._forget(now)
            share = math.floor(len(self._sent) * self._headroom)
            if self.budget is not None:
                share = min(share, math.floor(self.budget * self._headroom))
            self.budget = max(self._floor, share)
            self._settled_at = now

    def _grow(self, now: float) -> None:
        assert self.budget is not None
        if now - self._settled_at >= self.window_seconds / 5:
            self.budget += self._step
            self._settled_at = now

    def _forget(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.window_seconds:
            self._sent.popleft()
