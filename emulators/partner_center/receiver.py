"""A webhook endpoint for tests: records every callback (raw body and headers) and answers a set status."""

from __future__ import annotations

import threading

from .._server import Emulator, Request, Response


class WebhookReceiver(Emulator):
    name = "webhook-receiver"

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.received: list[Request] = []
        self.gate: threading.Event | None = None  # when set, callbacks wait for it (to observe async dispatch)
        self._arrived = threading.Condition()
        self.route("POST", r"/.*", self._receive)

    @property
    def hook_url(self) -> str:
        return f"{self.url}/api/webhooks/partner-center"

    def _receive(self, request: Request) -> Response:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        with self._arrived:
            self.received.append(request)
            self._arrived.notify_all()
        return Response(self.status, {"status": self.status})

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Request]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout):
                raise TimeoutError(f"expected {count} callbacks, got {len(self.received)}")
            return list(self.received)

    def clear(self) -> None:
        with self._arrived:
            self.received.clear()
        self.status, self.gate = 200, None
