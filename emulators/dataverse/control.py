"""The ``/_emulator/...`` control API of the Dataverse emulator (no auth: it is test plumbing).

Each route calls the :class:`~emulators.dataverse.DataverseEmulator` method of the same purpose, so the
demo (over HTTP) and in-process tests drive the emulator the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from .._server import Request, Response
from .odata import json_body
from .schema import ODataError

if TYPE_CHECKING:
    from .emulator import DataverseEmulator

CONTROL = "/_emulator"


def register_control_routes(emu: DataverseEmulator) -> None:
    def reset(request: Request) -> Response:
        emu.reset()
        return Response(204)

    def reset_counters(request: Request) -> Response:
        emu.reset_counters()
        return Response(204)

    def seed(request: Request) -> Response:
        try:
            return Response(201, {"value": emu.seed(request.params["set"], json_body(request))})
        except ODataError as exc:
            return exc.response()

    def fault(request: Request) -> Response:
        body = request.json() or {}
        emu.inject_fault(
            int(body.get("status", 429)),
            int(body.get("count", 1)),
            int(body["retryAfter"]) if body.get("retryAfter") is not None else None,
            body.get("method"),
            body.get("path"),
        )
        return Response(204)

    def clear_faults(request: Request) -> Response:
        emu.clear_faults()
        return Response(204)

    def table(request: Request) -> Response:
        try:
            return Response(200, {"value": emu.table(request.params["set"])})
        except ODataError as exc:
            return exc.response()

    def column(request: Request) -> Response:
        body = request.json() or {}
        try:
            emu.add_column(request.params["set"], str(body["name"]), str(body["type"]), body.get("options") or ())
        except ODataError as exc:
            return exc.response()
        return Response(204)

    def limit(request: Request) -> Response:
        body = (request.json() or {}) if request.method == "POST" else {}
        emu.set_request_limit(body.get("requests"), float(body.get("windowSeconds", 300)))
        return Response(204)

    def token(request: Request) -> Response:
        emu.set_required_token((request.json() or {}).get("token"))
        return Response(204)

    def change_tracking(request: Request) -> Response:
        body = request.json() or {}
        expiry = body.get("expirySeconds")
        try:
            emu.set_change_tracking(
                str(body.get("table", "opportunities")),
                body.get("enabled"),
                timedelta(seconds=float(expiry)) if expiry is not None else None,
            )
        except ODataError as exc:
            return exc.response()
        return Response(204)

    routes = [
        ("POST", "/reset", reset),
        ("POST", r"/seed/(?P<set>\w+)", seed),
        ("GET", "/counters", lambda r: Response(200, emu.counters())),
        ("DELETE", "/counters", reset_counters),
        ("POST", "/faults", fault),
        ("DELETE", "/faults", clear_faults),
        ("GET", r"/tables/(?P<set>\w+)", table),
        ("POST", r"/columns/(?P<set>\w+)", column),
        ("GET", "/writes", lambda r: Response(200, {"value": emu.writes()})),
        ("POST", "/token", token),
        ("POST", "/limits", limit),
        ("POST", "/change-tracking", change_tracking),
        ("DELETE", "/limits", limit),
    ]
    for method, path, handler in routes:
        emu.route(method, CONTROL + path, handler)
