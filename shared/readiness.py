"""What the triggers do while the settings are incomplete or invalid: the app stays loaded and says so.

Right after "Deploy to Azure", before ``login`` has stored a refresh token, some settings are missing. Building
the container at import would then make every function fail to load, ``/api/health`` included, and the only
trace would be in the host's start-up log. Instead:

- ``/api/health`` answers 503 ``{"status": "not configured: [NAMES]", "notConfigured": [NAMES]}`` (names only:
  it is anonymous); ``/api/status`` (function key) adds each problem's reason;
- the webhook answers 503 and enqueues nothing (the hourly reconciliation reads what Partner Center changed
  meanwhile, once the app is configured);
- the timers skip their run and log why;
- the queue worker puts the job back on the queue, invisible for ``PARK_SECONDS``, and completes the message. Failing
  the invocation instead would let the host retry it ``maxDequeueCount`` (5) times 30 s apart and then move it to
  the poison queue: a setting fixed after three minutes would find the jobs poisoned. A parked copy starts with a
  dequeue count of 0, so it waits as long as the settings stay wrong and nothing is lost.

The settings are read again on each call until they load (a failed load is not cached): a Key Vault reference
that resolves later, or a fixed setting picked up by a restart, needs nothing else.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import wiring
from .settings import SettingsError, load_settings

if TYPE_CHECKING:
    from .ports import Job
    from .wiring import Container

log = logging.getLogger(__name__)

# How long a job waits on the queue while the app is not configured, before the worker looks again.
PARK_SECONDS = 300


def not_configured() -> SettingsError | None:
    """None when the app's settings load (the container is built), else the error naming each setting at fault."""
    try:
        wiring.container()
    except SettingsError as exc:
        return exc
    return None


def configured(function: str) -> Container | None:
    """The container, or None after logging that ``function`` skips its work and why."""
    try:
        return wiring.container()
    except SettingsError as exc:
        log.warning("%s skipped: %s. %s", function, summary(exc), exc)
        return None


def summary(problem: SettingsError) -> str:
    return f"not configured: [{', '.join(problem.names)}]"


def health_body(problem: SettingsError) -> dict[str, Any]:
    """What the anonymous health probe may tell: the names of the settings at fault, not why."""
    return {"status": summary(problem), "notConfigured": problem.names}


def status_body(problem: SettingsError) -> dict[str, Any]:
    """For callers with the function key: each problem's reason too (reasons never hold secret values)."""
    return {**health_body(problem), "problems": [str(p) for p in problem.problems] or [str(problem)]}


def park(job: Job, problem: SettingsError) -> None:
    """Put ``job`` back on the queue for later; the storage settings alone are needed for that (the queue trigger
    that delivered the job read the same ones). When even they fail, the error propagates and the host retries."""
    from .store.connections import queue_service
    from .store.queue import StorageJobQueue

    queue = StorageJobQueue(queue_service(wiring.storage_config(load_settings(storage_only=True))))
    queue.enqueue(job, delay_seconds=PARK_SECONDS)
    log.warning(
        "job %s %s put back on the queue for %ss: %s. %s",
        job.kind,
        job.record_id,
        PARK_SECONDS,
        summary(problem),
        problem,
    )


def check_at_start_up() -> Container | None:
    """The container; or None after logging what is not configured (the functions load either way)."""
    try:
        return wiring.container()
    except SettingsError as exc:
        log.error("The app is %s; its functions answer accordingly until they are set. %s", summary(exc), exc)
        return None
