"""A bearer token kept until shortly before it expires, so a burst of jobs asks the token endpoint once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A fetched token is the token and the moment it expires, in the seconds of the cache's clock.
Fetch = Callable[[], tuple[str, float]]


class CachedToken:
    """Calls ``fetch`` when no token is held or the held one is within ``margin`` seconds of expiring; callers that
    arrive meanwhile wait for that one fetch."""

    def __init__(self, fetch: Fetch, margin: float, clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._margin:
                self._token, self._expires_at = self._fetch()
            return self._token

    def invalidate(self) -> None:
        """Forget the held token (e.g. after a 401) so the next call fetches one."""
        with self._lock:
            self._token = None
