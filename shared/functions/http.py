"""HTTP triggers: the Partner Center webhook and the health probe."""

from __future__ import annotations

import json

import azure.functions as func

from .. import wiring

bp = func.Blueprint()


def _json(status: int, body: dict) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@bp.function_name("partner_center_webhook")
@bp.route(route="webhooks/partner-center", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def partner_center_webhook(req: func.HttpRequest) -> func.HttpResponse:
    result = wiring.container().intake.receive(dict(req.headers), req.get_body())
    return _json(result.status, result.body)


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _json(200, {"status": "ok"})


@bp.function_name("status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    from ..sync.job_runner import health_status
    from ..sync.status import build_status

    c = wiring.container()
    return _json(200, build_status(c.store, c.queue, c.settings.credential_modes(), health_status(c.jobs)))
