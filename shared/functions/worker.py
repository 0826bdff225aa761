"""Queue trigger: one sync job per message; retries and the poison queue come from host.json."""

from __future__ import annotations

import logging

import azure.functions as func

from .. import readiness, wiring
from ..store.queue import JOBS_QUEUE, decode_job
from ..telemetry import job_span

log = logging.getLogger(__name__)
bp = func.Blueprint()

# Must equal host.json extensions.queues.maxDequeueCount (a test keeps them in step).
MAX_DEQUEUE_COUNT = 5


@bp.function_name("sync_worker")
@bp.queue_trigger(arg_name="msg", queue_name=JOBS_QUEUE, connection="AzureWebJobsStorage")
def sync_worker(msg: func.QueueMessage) -> None:
    text = msg.get_body().decode("utf-8", errors="replace")
    try:
        job = decode_job(text)
    except ValueError as exc:
        # A message we can never parse would only cycle to the poison queue: log it and drop it.
        log.error("dropping unreadable job message %s: %s", msg.id, exc)
        return
    if (problem := readiness.not_configured()) is not None:
        readiness.park(job, problem)  # back on the queue for later: failing would end in the poison queue
        return
    dequeue_count = getattr(msg, "dequeue_count", None) or 1
    final_attempt = dequeue_count >= MAX_DEQUEUE_COUNT
    with job_span(job, attempt=dequeue_count, final_attempt=final_attempt) as run:
        run.finished(wiring.container().jobs.run(job, final_attempt=final_attempt))
