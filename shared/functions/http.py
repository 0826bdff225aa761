"""HTTP triggers: the Partner Center webhook and the health probe."""

from __future__ import annotations

import json

import azure.functions as func

from .. import readiness, wiring

bp = func.Blueprint()


def _json(status: int, body: dict) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@bp.function_name("partner_center_webhook")
@bp.route(route="webhooks/partner-center", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def partner_center_webhook(req: func.HttpRequest) -> func.HttpResponse:
    if (problem := readiness.not_configured()) is not None:
        return _json(503, {"status": readiness.summary(problem)})  # nothing enqueued
    c = wiring.container()
    result = c.intake.receive(dict(req.headers), req.get_body())
    if result.status == 202:
        c.tally.webhook_received()  # kept in memory; written with the counters at most once a minute
    return _json(result.status, result.body)


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    if (problem := readiness.not_configured()) is not None:
        return _json(503, readiness.health_body(problem))
    return _json(200, {"status": "ok"})


@bp.function_name("status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    from ..console.status_report import current_status

    if (problem := readiness.not_configured()) is not None:
        return _json(503, readiness.status_body(problem))
    return _json(200, current_status(wiring.container()))
