"""The end-to-end stack's function app on real HTTP, through the local runner's HTTP host
(devtools/localhost/http_host.py): what a browser opens as http://127.0.0.1:PORT/api/console."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from devtools.localhost.appload import invoke, load_functions
from devtools.localhost.http_host import HttpHost, compile_route
from tests.e2e_stack import Stack

ROUTE_PREFIX = "api"
# The local host does not check function keys (neither does `func start`); the page must carry one through its
# links and form anyway, as it does on Azure.
FUNCTION_KEY = "test-function-key"


@dataclass
class ConsoleServer:
    url: str  # http://127.0.0.1:PORT

    def console_url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"code": FUNCTION_KEY, **params}.items())
        return f"{self.url}/{ROUTE_PREFIX}/console?{query}"


@contextmanager
def serve(stack: Stack) -> Iterator[ConsoleServer]:
    # The app was indexed once already by the in-process host; indexing it again must not see its own names twice.
    stack.host.app.functions_bindings = {}
    functions = load_functions(stack.host.app, dict(os.environ))
    routes = [compile_route(f, ROUTE_PREFIX) for f in functions if f.trigger_type == "httpTrigger"]
    host = HttpHost(routes, functions, invoke, lambda name, text: (404, {}), lambda: True)
    server = host.start("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ConsoleServer(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
