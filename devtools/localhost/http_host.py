"""HTTP triggers on ``http://localhost:<port>/<routePrefix>/<route>`` and the host's admin endpoints.

Routes are ASP.NET-style templates as the host reads them: ``{name}``, ``{name:int}``, ``{name?}``,
``{name=default}``, ``{*rest}``; matching ignores case. Auth levels are not enforced, exactly as with
``func start``: keys exist only on the real host.

Admin endpoints (outside the route prefix, like the host's):
  GET  /admin/host/status          {"state": "Running"} once every listener is up
  GET  /admin/functions            the functions served, with their bindings
  POST /admin/functions/<name>     run a timer or queue function now; body {"input": "..."}; 202
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import azure.functions as func

from .appload import Invocation, LoadedFunction

log = logging.getLogger("devtools.localhost.runner")

_PARAM = re.compile(
    r"\{(?P<star>\*{1,2})?(?P<name>\w+)(?::(?P<constraint>[^}?=]+))?(?P<optional>\?)?(?:=(?P<default>[^}]*))?\}"
)
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
}
ADMIN_FIRE = re.compile(r"^/admin/functions/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class Route:
    function: LoadedFunction
    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str]  # empty: any method
    defaults: dict[str, str]
    parameter_count: int


def compile_route(function: LoadedFunction, prefix: str) -> Route:
    """Turn the binding's route template (or the function name) into a regex under the prefix."""
    template = str(function.trigger.get("route") or function.name).strip("/")
    full = "/".join(part for part in (prefix, template) if part)
    regex, defaults, count = "", {}, 0
    for segment in full.split("/"):
        match = _PARAM.fullmatch(segment)
        if not match:
            # Literal text, possibly with an inline parameter ("file.{ext}"): escape around parameters.
            regex += "/" + _inline(segment)
            continue
        count += 1
        name = match.group("name")
        if match.group("star"):
            body = ".*"
        else:
            # Constraints other than the common ones (regex(...), min(...) ...) match any segment here.
            constraint = (match.group("constraint") or "").split(":")[0].split("(")[0].lower()
            body = _CONSTRAINTS.get(constraint, r"[^/]+")
        if match.group("default") is not None:
            defaults[name] = match.group("default")
        if match.group("optional") or match.group("star") or match.group("default") is not None:
            regex += f"(?:/(?P<{name}>{body}))?"
        else:
            regex += f"/(?P<{name}>{body})"
    methods = frozenset(str(m).upper() for m in function.trigger.get("methods") or [])
    return Route(function, "/" + full, re.compile(f"^{regex}/?$", re.IGNORECASE), methods, defaults, count)


def _inline(segment: str) -> str:
    out, last = "", 0
    for match in _PARAM.finditer(segment):
        out += re.escape(segment[last : match.start()]) + f"(?P<{match.group('name')}>[^/]+?)"
        last = match.end()
    return out + re.escape(segment[last:])


def sort_routes(routes: list[Route]) -> list[Route]:
    # Literal routes win over parameterised ones, as in ASP.NET routing precedence.
    return sorted(routes, key=lambda r: (r.parameter_count, -len(r.template)))


def to_response(result: Any) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for what an HTTP function returned."""
    if result is None:
        return 204, {}, b""
    if isinstance(result, str | bytes):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"HTTP function returned {type(result).__name__}, not func.HttpResponse")
    headers = {k: v for k, v in result.headers.items()}
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = f"{result.mimetype}; charset={result.charset}"
    return result.status_code, headers, result.get_body()


class HttpHost:
    def __init__(
        self,
        routes: list[Route],
        functions: list[LoadedFunction],
        run: Callable[[LoadedFunction, Any, str], Invocation],
        fire: Callable[[str, str], tuple[int, dict[str, Any]]],
        is_ready: Callable[[], bool],
    ) -> None:
        self.routes = sort_routes(routes)
        self.functions = functions
        self.run_function = run
        self.fire = fire
        self.is_ready = is_ready
        self.server: ThreadingHTTPServer | None = None

    # -- dispatch ------------------------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes, base_url: str
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        if path.lower().startswith("/admin/"):
            status, payload = self._admin(method, path, body)
            return status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode()
        allowed = False
        for route in self.routes:
            match = route.pattern.match(path)
            if not match:
                continue
            if route.methods and method not in route.methods:
                allowed = True
                continue
            params = {**route.defaults, **{k: v for k, v in match.groupdict().items() if v is not None}}
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            request = func.HttpRequest(
                method, base_url + raw_path, headers=headers, params=query, route_params=params, body=body
            )
            outcome = self.run_function(route.function, request, "This function was programmatically called via HTTP.")
            if not outcome.succeeded:
                return 500, {}, b""  # the host hides exception details from callers too
            name = next((b["name"] for b in route.function.outputs if b.get("type") == "http"), "$return")
            try:
                return to_response(outcome.outputs.get(name))
            except TypeError as exc:
                log.error("Functions.%s: %s", route.function.name, exc)
                return 500, {}, b""
        return (405 if allowed else 404), {}, b""

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path.rstrip("/").lower() == "/admin/host/status" and method == "GET":
            return (200, {"state": "Running"}) if self.is_ready() else (503, {"state": "Initializing"})
        if path.rstrip("/").lower() == "/admin/functions" and method == "GET":
            listed = [{"name": f.name, "trigger": f.trigger, "outputs": f.outputs} for f in self.functions]
            return 200, {"functions": listed}
        match = ADMIN_FIRE.match(path)
        if match and method == "POST":
            try:
                data = json.loads(body.decode("utf-8")) if body.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                return 400, {"error": 'body must be JSON like {"input": "..."}'}
            text = data.get("input", "") if isinstance(data, dict) else ""
            return self.fire(match.group("name"), str(text or ""))
        return 404, {"error": f"no admin endpoint {method} {path}"}

    # -- server --------------------------------------------------------------------------------------
    def start(self, host: str, port: int) -> ThreadingHTTPServer:
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                base = f"http://{self.headers.get('Host') or f'{host}:{port}'}"
                try:
                    headers_in = dict(self.headers.items())
                    status, headers, payload = outer.handle(self.command, self.path, headers_in, body, base)
                except Exception:  # a runner bug must answer 500, not drop the connection
                    log.exception("runner failed on %s %s", self.command, self.path)
                    status, headers, payload = 500, {}, b""
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        self.server = ThreadingHTTPServer((host, port), _Handler)
        self.server.daemon_threads = True
        return self.server
