"""In-process test host for the real function app: calls the registered functions with the
azure-functions types the Functions host would build, and exposes the webhook over real HTTP so the
Partner Center emulator can deliver signed events to it."""

from __future__ import annotations

import concurrent.futures
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage

from emulators._server import Emulator, Request, Response
from shared import wiring
from shared.store.queue import StorageJobQueue


def load_app() -> Any:
    """Import (or re-import) function_app with the current environment."""
    wiring.reset()
    if "function_app" in sys.modules:
        return importlib.reload(sys.modules["function_app"]).app
    return importlib.import_module("function_app").app


@dataclass
class WorkerRun:
    processed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class InProcessHost:
    def __init__(self) -> None:
        self.app = load_app()
        self.functions: dict[str, Callable[..., Any]] = {
            f.get_function_name(): f.get_user_function() for f in self.app.get_functions()
        }
        self.queue: StorageJobQueue = wiring.container().queue

    def post_webhook(self, body: bytes, headers: dict[str, str]) -> func.HttpResponse:
        request = func.HttpRequest("POST", "http://localhost/api/webhooks/partner-center", headers=headers, body=body)
        return self.functions["partner_center_webhook"](request)

    def get(self, name: str) -> func.HttpResponse:
        return self.functions[name](func.HttpRequest("GET", f"http://localhost/api/{name}", body=b""))

    def run_message(self, message: Any) -> None:
        body = message.content.encode("utf-8")
        self.functions["sync_worker"](
            QueueMessage(id=message.id, body=body, dequeue_count=message.dequeue_count, pop_receipt=message.pop_receipt)
        )

    def drain(self, max_rounds: int = 20, parallel: int = 1) -> WorkerRun:
        """Process queued jobs like the host: delete on success, make failures visible again at once."""
        run = WorkerRun()
        client = self.queue.client
        for _ in range(max_rounds):
            batch = list(client.receive_messages(max_messages=max(parallel, 1), visibility_timeout=30))
            if not batch:
                return run
            with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
                futures = {pool.submit(self.run_message, m): m for m in batch}
                for future, message in futures.items():
                    try:
                        future.result()
                    except Exception as exc:  # the host would retry after the visibility timeout
                        run.failed += 1
                        run.errors.append(f"{type(exc).__name__}: {exc}")
                        client.update_message(message, visibility_timeout=0)
                    else:
                        run.processed += 1
                        client.delete_message(message)
        return run


class WebhookEndpoint(Emulator):
    """Real HTTP in front of the in-process webhook function (what the Functions host does)."""

    name = "webhook-endpoint"

    def __init__(self, host: InProcessHost) -> None:
        super().__init__()
        self.host = host
        self.responses: list[int] = []
        self.route("POST", "/api/webhooks/partner-center", self._webhook)

    def _webhook(self, request: Request) -> Response:
        response = self.host.post_webhook(request.body, request.headers)
        self.responses.append(response.status_code)
        return Response(response.status_code, response.get_body(), {"Content-Type": "application/json"})

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/api/webhooks/partner-center"


class FixedClock:
    """A clock that says what the test sets (``_now``)."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now
