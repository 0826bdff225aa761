"""Timer triggers (NCRONTAB from app settings, UTC): the CRM poll and the Partner Center reconciliation."""

from __future__ import annotations

import logging

import azure.functions as func

from .. import readiness

log = logging.getLogger(__name__)
bp = func.Blueprint()


# No schedule monitor for the poll: it runs every 30 s and reads from its own watermark, so a missed run is
# caught up by the next one, and the monitor would write a blob on every run.
@bp.function_name("poll_crm")
@bp.timer_trigger(arg_name="timer", schedule="%CRM_POLL_SCHEDULE%", run_on_startup=False, use_monitor=False)
def poll_crm(timer: func.TimerRequest) -> None:
    if (c := readiness.configured("poll_crm")) is None:
        return
    result = c.jobs.poll_crm(c.poller)
    if result is not None:
        log.info("CRM poll: %s changed, %s enqueued, watermark %s", result.seen, result.enqueued, result.watermark)


@bp.function_name("reconcile")
@bp.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False, use_monitor=True)
def reconcile(timer: func.TimerRequest) -> None:
    if (c := readiness.configured("reconcile")) is None:
        return
    result = c.reconciler.poll()
    log.info(
        "reconcile: %s referrals changed, %s enqueued, watermark %s", result.seen, result.enqueued, result.watermark
    )
