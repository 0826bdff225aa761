"""A tiny routing HTTP server shared by the emulators.

Emulators subclass :class:`Emulator`, register routes with :meth:`Emulator.route` and are started
either in-process (``start()`` on a free port, ``stop()``) or from the command line via :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .network_faults import FAULTS_PATH, NetworkFaults, control


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    raw_path: str = ""

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON; bytes/str -> as is
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        self.headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return json.dumps(self.body).encode("utf-8")


Handler = Callable[[Request], Response]


class Emulator:
    """Base class: a route table, a lock for state, and start/stop on a free port."""

    name = "emulator"
    scheme = "http"  # an emulator serving TLS sets "https" and wraps the socket in :meth:`_secure`

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.request_log: list[tuple[str, str]] = []
        self.network_faults = NetworkFaults()

    # -- routing -----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` and a path regex (named groups become params)."""
        self._routes.append((method.upper(), re.compile(f"^{pattern}$"), handler))

    def dispatch(self, request: Request) -> Response:
        allowed = False
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if not match:
                continue
            allowed = True
            if method != request.method:
                continue
            request.params = {k: v for k, v in match.groupdict().items() if v is not None}
            return handler(request)
        if allowed:
            return Response(405, {"error": {"code": "MethodNotAllowed", "message": "method not allowed"}})
        return Response(404, {"error": {"code": "NotFound", "message": f"no route for {request.path}"}})

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, port: int = 0, host: str = "127.0.0.1") -> Emulator:
        emulator = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; without this, keep-alive clients stall ~40 ms.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    raw_path=self.path,
                )
                with emulator.lock:
                    emulator.request_log.append((self.command, self.path))
                if parts.path == FAULTS_PATH:
                    try:
                        body_json = request.json()
                    except ValueError:
                        body_json = None
                    status, answer = control(emulator.network_faults, self.command, body_json)
                    self._send(Response(status, answer))
                    return
                decision = emulator.network_faults.decide(self.command, parts.path)
                if decision.delay > 0:
                    time.sleep(decision.delay)
                if decision.reset:
                    self._drop()
                    return
                if decision.status is not None:
                    headers = {} if decision.retry_after is None else {"Retry-After": _seconds(decision.retry_after)}
                    self._send(Response(decision.status, _fault_body(decision.status), headers))
                    return
                try:
                    response = emulator.dispatch(request)
                except Exception as exc:  # an emulator bug must surface as a 500, not a hang
                    response = Response(500, {"error": {"code": "EmulatorError", "message": repr(exc)}})
                if decision.lose == "drop":
                    self._drop()  # it took effect; the caller never hears so
                    return
                if decision.lose in ("502", "504"):
                    self._send(Response(int(decision.lose), _fault_body(int(decision.lose))))
                    return
                self._send(response)

            def _drop(self) -> None:
                # An abortive close (RST), as a load balancer or a crashed front end does.
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass

            def _send(self, response: Response) -> None:
                payload = response.encode()
                self.send_response(response.status)
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if payload and self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._secure(self._server)
        # A short poll interval makes stop() return at once instead of after up to half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def _secure(self, server: ThreadingHTTPServer) -> None:
        """Wrap the listening socket for TLS before serving starts (plain HTTP unless overridden)."""

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _fault_body(status: int) -> dict[str, Any]:
    if status == 429:
        return {"error": {"code": "TooManyRequests", "message": "Rate limit is exceeded. Try again later."}}
    if status in (502, 504):
        return {"error": {"code": "GatewayError", "message": "The gateway did not get an answer in time."}}
    return {"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."}}


def main(factory: Callable[[], Emulator], default_port: int, argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m emulators.<name> [--port N]``; runs until interrupted."""
    parser = argparse.ArgumentParser(description=f"Run the {factory.__name__} emulator")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    emulator = factory().start(port=args.port, host=args.host)
    print(f"{emulator.name} listening on {emulator.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
