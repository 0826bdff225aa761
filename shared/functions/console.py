"""HTTP triggers of the operator page: GET /api/console and its Replay button, POST /api/console/replay."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlencode

import azure.functions as func

from .. import readiness, wiring
from ..console.guard import FIELD, new_token, refusal, token_cookie
from ..console.links import RecordLinks
from ..console.page import POISON_SHOWN, Page, record_history, render
from ..console.status_report import current_status

if TYPE_CHECKING:
    from ..settings import SettingsError

bp = func.Blueprint()
QUERY_MAX_CHARS = 200
# No script, nothing from elsewhere; forms post only to this site; never framed (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # the URL holds the function key; "no-referrer" would make Origin null
    "Cache-Control": "no-store",
}


def _url_for(key: str | None, **params: str):  # noqa: ANN202 - a small closure factory
    def url_for(path: str) -> str:
        query = {**({"code": key} if key else {}), **params}
        return f"/api/{quote(path)}" + (f"?{urlencode(query)}" if query else "")

    return url_for


def _record_links(c: wiring.Container) -> RecordLinks:
    s = c.settings
    base = s.dataverse_url if s.crm_provider != "salesforce" else (s.salesforce_instance_url or s.salesforce_login_url)
    return RecordLinks(s.crm_provider, base, s.referral_link_template)


def _not_configured(problem: SettingsError) -> func.HttpResponse:
    text = f"{readiness.summary(problem)}: fix these settings; /api/status says why"
    return func.HttpResponse(text, status_code=503, mimetype="text/plain", headers=SECURITY_HEADERS)


@bp.function_name("console")
@bp.route(route="console", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def console(req: func.HttpRequest) -> func.HttpResponse:
    if (problem := readiness.not_configured()) is not None:
        return _not_configured(problem)
    c = wiring.container()
    key = req.params.get("code") or None
    query = (req.params.get("q") or "")[:QUERY_MAX_CHARS]
    keys, history = record_history(c.store, query)
    replayed, gone = req.params.get("replayed"), req.params.get("gone")
    notice = f"Replayed the job for {replayed}: it is back on the queue." if replayed else ""
    if gone is not None:
        notice = "That poison message is no longer there (replayed already, or unreadable)."
    token = new_token()
    page = Page(
        status=current_status(c),
        registration=c.store.webhook_registration(),
        links=_record_links(c),
        poison=c.queue.peek_poison(POISON_SHOWN),
        token=token,
        key=key,
        query=query,
        history=history,
        history_keys=keys,
        notice=notice,
        notice_error=gone is not None,
        now=datetime.now(UTC),
    )
    headers = {**SECURITY_HEADERS, "Set-Cookie": token_cookie(token, secure=req.url.lower().startswith("https:"))}
    return func.HttpResponse(render(page, _url_for(key)), status_code=200, mimetype="text/html", headers=headers)


@bp.function_name("console_replay")
@bp.route(route="console/replay", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def console_replay(req: func.HttpRequest) -> func.HttpResponse:
    if (problem := readiness.not_configured()) is not None:
        return _not_configured(problem)
    form = {k: v[-1] for k, v in parse_qs(req.get_body().decode("utf-8", errors="replace")).items()}
    why = refusal(req.url, dict(req.headers), form.get(FIELD))
    if why is not None:
        return func.HttpResponse(why, status_code=403, mimetype="text/plain", headers=SECURITY_HEADERS)
    message_id = form.get("message_id", "")
    job = wiring.container().queue.replay_poison_message(message_id) if message_id else None
    key = req.params.get("code") or None
    target = _url_for(key, replayed=job.record_id)("console") if job else _url_for(key, gone="1")("console")
    return func.HttpResponse(status_code=303, headers={**SECURITY_HEADERS, "Location": target})
