"""Timer triggers on their NCRONTAB schedules (UTC), plus firing one on demand.

Like the host: one invocation of a timer function at a time (a run that is still going delays the
next one), a run that overran later occurrences is followed by one late run with ``past_due`` set,
``runOnStartup`` fires once at start. ``useMonitor`` (schedule status kept in blob storage across
restarts) is not reproduced: a local runner starts fresh each time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.functions.timer import TimerRequest

from shared.schedule import Schedule

from .appload import Invocation, LoadedFunction

log = logging.getLogger("devtools.localhost.runner")

# A firing this much later than its schedule counts as past due (thread wake-ups are never exact).
PAST_DUE_TOLERANCE = timedelta(seconds=1)


def _now() -> datetime:
    return datetime.now(UTC)


class TimerListener:
    def __init__(
        self,
        function: LoadedFunction,
        schedule: Schedule,
        run: Callable[[LoadedFunction, Any, str], Invocation],
        stop: threading.Event,
    ) -> None:
        self.function = function
        self.schedule = schedule
        self.run_function = run
        self.stop = stop
        self.last: datetime | None = None
        self.thread = threading.Thread(target=self._loop, name=f"timer-{function.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.ident is not None:  # never started when start-up failed part way
            self.thread.join(timeout)

    def next_occurrence(self) -> datetime:
        return self.schedule.next_after(_now())

    def fire(self, *, past_due: bool, reason: str) -> Invocation:
        with self.function.singleton:
            now = _now()
            status = {
                "Last": (self.last or now).isoformat(),
                "Next": self.schedule.next_after(now).isoformat(),
                "LastUpdated": now.isoformat(),
            }
            request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
            self.last = now
            return self.run_function(self.function, request, reason)

    def _loop(self) -> None:
        if self.function.trigger.get("runOnStartup"):
            self.fire(past_due=False, reason="Timer fired at start-up (runOnStartup)")
        due = self.next_occurrence()
        past_due = False
        while not self.stop.wait(max((due - _now()).total_seconds(), 0)):
            late = _now() - due > PAST_DUE_TOLERANCE
            self.fire(past_due=past_due or late, reason=f"Timer fired at {due.isoformat()}")
            following = self.schedule.next_after(due)
            current = _now()
            if following <= current:
                # The run overran one or more occurrences: fire once now, marked past due, not once per miss.
                due, past_due = current, True
            else:
                due, past_due = following, False
