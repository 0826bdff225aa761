"""The ``/_emulator/...`` control API of the Salesforce emulator (no auth: it is test plumbing).

Each route calls the :class:`~emulators.salesforce.SalesforceEmulator` method of the same purpose, so the
demo (over HTTP) and in-process tests drive the emulator the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._server import Request, Response

if TYPE_CHECKING:
    from .emulator import SalesforceEmulator

CONTROL = "/_emulator"
OBJECT = r"(?P<type>[A-Za-z][A-Za-z0-9_]*)"


def _body(request: Request) -> dict[str, Any]:
    # Malformed control bodies are the test's bug: the emulator's control wrapper answers 400.
    body = request.json()
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValueError("the control request body must be a JSON object")
    return body


def _done(action: Any) -> Response:
    return Response(204)


def register_control_routes(emu: SalesforceEmulator) -> None:
    def seed(request: Request) -> Response:
        return Response(201, {"records": emu.seed(request.params["type"], request.json() or [])})

    def records(request: Request) -> Response:
        include = request.query.get("includeDeleted", "false").lower() == "true"
        return Response(200, {"records": emu.records(request.params["type"], include)})

    def request_log(request: Request) -> Response:
        with emu.lock:
            return Response(200, {"requests": [list(entry) for entry in emu.request_log]})

    def get_quota(request: Request) -> Response:
        used, maximum = emu.api_usage()
        return Response(200, {"used": used, "max": maximum})

    def set_quota(request: Request) -> Response:
        body = _body(request)
        emu.set_quota(body.get("max"), body.get("used"))
        return Response(204)

    def issue(request: Request) -> Response:
        token = emu.issue_token(_body(request).get("username", "integration@emulator.example"))
        return Response(200, {"access_token": token, "instance_url": emu.instance_url(request)})

    def client(request: Request) -> Response:
        body = _body(request)
        emu.register_client(body["clientId"], body["clientSecret"], body.get("username"))
        return Response(204)

    def jwt_key(request: Request) -> Response:
        body = _body(request)
        emu.register_jwt_key(body["clientId"], body["publicKey"], body.get("usernames", []))
        return Response(204)

    def fault(request: Request) -> Response:
        body = _body(request)
        emu.inject_fault(
            int(body.get("status", 503)),
            int(body.get("count", 1)),
            body.get("method"),
            body.get("path"),
            int(body["retryAfter"]) if body.get("retryAfter") is not None else None,
            body.get("errorCode"),
            body.get("message"),
        )
        return Response(204)

    def field(request: Request) -> Response:
        body = _body(request)
        emu.add_field(
            request.params["type"],
            str(body["name"]),
            str(body["type"]),
            body.get("length"),
            body.get("picklist") or (),
            str(body.get("label") or ""),
        )
        return Response(204)

    def config(request: Request) -> Response:
        body = _body(request)
        emu.configure(
            upsert_update_status=body.get("upsertUpdateStatus"),
            query_batch_size=body.get("queryBatchSize"),
            min_batch_size=body.get("minBatchSize"),
            subquery_batch_size=body.get("subqueryBatchSize"),
            multi_currency=body.get("multiCurrency"),
        )
        return Response(204)

    def convert(request: Request) -> Response:
        return Response(200, emu.convert_lead(request.params["id"], **_body(request)))

    routes = [
        ("POST", "/reset", lambda r: _done(emu.reset())),
        ("POST", r"/leads/(?P<id>[A-Za-z0-9]{15,18})/convert", convert),
        ("POST", f"/seed/{OBJECT}", seed),
        ("GET", f"/records/{OBJECT}", records),
        ("GET", "/counters", lambda r: Response(200, emu.counters())),
        ("DELETE", "/counters", lambda r: _done(emu.reset_counters())),
        ("GET", "/writes", lambda r: Response(200, {"writes": emu.writes()})),
        ("GET", "/requests", request_log),
        ("GET", "/quota", get_quota),
        ("POST", "/quota", set_quota),
        ("POST", "/quota/restore", lambda r: _done(emu.restore_quota())),
        ("POST", "/sessions/expire", lambda r: _done(emu.expire_sessions())),
        ("POST", "/sessions", issue),
        ("POST", "/clients", client),
        ("POST", "/jwt-keys", jwt_key),
        ("POST", "/faults", fault),
        ("DELETE", "/faults", lambda r: _done(emu.clear_faults())),
        ("POST", "/config", config),
        ("POST", f"/fields/{OBJECT}", field),
    ]
    for method, path, handler in routes:
        emu.route(method, CONTROL + path, handler)
