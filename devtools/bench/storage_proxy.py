"""HTTP proxies in front of Azurite's Table and Queue endpoints, in a process of their own.

    python -m devtools.bench.storage_proxy --table http://127.0.0.1:PORT --queue http://127.0.0.1:PORT

The app's workers get a connection string whose ``TableEndpoint`` and ``QueueEndpoint`` are these proxies:

* every Table Storage request they make is counted where it travels, without touching the app.
  ``GET /_proxy/counters`` answers ``{"requests": n, "kinds": {"query": n, "read": n, "insert": n, ...},
  "tables": {"SyncLinks": n, ...}}``; a ``$batch`` counts once (one round trip to the service), its operations
  under ``batched``;
* taking messages from a queue can be paused (``POST /_proxy/receive {"paused": true}`` on the queue proxy):
  a worker's receive request then waits at the proxy, and is answered "no messages" if the pause outlasts
  ``MAX_HOLD_SECONDS`` (sending, deleting and peeking go on), so the bench can let a poll finish before any
  job it enqueued starts. The queue proxy counts its requests too.

Requests are passed on byte for byte (the SharedKey signature covers the path, not the host, so it still
holds) over one keep-alive connection per client connection. It prints
``storage-proxy tables on URL, queues on URL``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

COUNTERS_PATH = "/_proxy/counters"
RECEIVE_PATH = "/_proxy/receive"
IDLE_SECONDS = 2.0
MAX_HOLD_SECONDS = 15.0  # well below the SDK's read timeout: a receive held longer is told "no messages"
NO_MESSAGES = b'<?xml version="1.0" encoding="utf-8"?><QueueMessagesList />'
# Headers that describe one hop, not the message: never passed on.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)
_ENTITY = re.compile(r"\(PartitionKey=")
_CHANGESET_PART = re.compile(rb"^(GET|POST|PUT|PATCH|MERGE|DELETE) http", re.MULTILINE)
# The first operation of a batch names the table: ``PUT http://host/account/Table(PartitionKey=...) HTTP/1.1``.
_BATCH_TABLE = re.compile(rb"^(?:GET|POST|PUT|PATCH|MERGE|DELETE) https?://[^/\s]+/[^/\s]+/(\w+)", re.MULTILINE)
WRITE_KINDS = {"POST": "insert", "PUT": "upsert", "PATCH": "merge", "MERGE": "merge", "DELETE": "delete"}


def is_receive(method: str, path: str) -> bool:
    """A queue request that takes messages (a receive), not one that peeks, sends or deletes."""
    parts = urlsplit(path)
    return method == "GET" and parts.path.endswith("/messages") and "peekonly=true" not in parts.query.lower()


def kind_of(method: str, path: str) -> str:
    """What a Table Storage request does: query, read (one entity), insert, upsert, merge, delete, batch,
    or table (creating, listing or deleting tables)."""
    name = urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
    if name == "$batch":
        return "batch"
    if name.startswith("Tables"):
        return "table"
    if method == "GET":
        return "read" if _ENTITY.search(name) else "query"
    return WRITE_KINDS.get(method, method.lower())


def table_of(path: str, body: bytes = b"") -> str:
    """The table a Table Storage request goes to (a ``$batch`` names it in its first operation); ``Tables`` for
    creating, listing or deleting tables."""
    name = urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
    if name == "$batch":
        found = _BATCH_TABLE.search(body)
        name = found.group(1).decode() if found else name
    return name.split("(", 1)[0]


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: Counter[str] = Counter()
        self.tables: Counter[str] = Counter()
        self.requests = 0

    def add(self, kind: str, batched: int = 0, table: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            self.kinds[kind] += 1
            if batched:
                self.kinds["batched"] += batched
            if table:
                self.tables[table] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "kinds": dict(self.kinds), "tables": dict(self.tables)}


def serve(target: str, port: int = 0) -> ThreadingHTTPServer:
    upstream = urlsplit(target)
    counts = Counts()
    receiving = threading.Event()
    receiving.set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave in separate writes; keep-alive must not stall
        connection: Any
        _upstream: http.client.HTTPConnection | None = None
        _used = 0.0

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self) -> None:
            if self.path == COUNTERS_PATH:
                self._answer(200, [("Content-Type", "application/json")], json.dumps(counts.snapshot()).encode())
                return
            body = self._body()
            if self.path == RECEIVE_PATH:
                paused = bool(json.loads(body or b"{}").get("paused"))
                if paused:
                    receiving.clear()
                else:
                    receiving.set()
                self._answer(204, [], b"")
                return
            if is_receive(self.command, self.path) and not receiving.wait(MAX_HOLD_SECONDS):
                self._answer(200, [("Content-Type", "application/xml")], NO_MESSAGES)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("POST", "PUT", "PATCH", "MERGE"):
                headers["Content-Length"] = str(len(body))
            try:
                status, reason, answer_headers, answer = self._exchange(body, headers)
            except (OSError, http.client.HTTPException) as exc:
                self._close_upstream()
                self._answer(502, [("Content-Type", "text/plain")], f"table proxy: {exc}".encode())
                return
            kind = kind_of(self.command, self.path)
            batched = len(_CHANGESET_PART.findall(body)) if kind == "batch" else 0
            counts.add(kind, batched, table_of(self.path, body))
            self._answer(status, answer_headers, answer, reason)

        def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, list[tuple[str, str]], bytes]:
            # Azurite (Node) closes a keep-alive connection idle for 5 s: one idle longer than IDLE_SECONDS is
            # not reused, and a reused one that fails before any answer came back is tried once more on a
            # fresh connection (nothing reached the service: Node closed the connection before reading).
            if self._upstream is not None and time.monotonic() - self._used > IDLE_SECONDS:
                self._close_upstream()
            reused = self._upstream is not None
            try:
                return self._send(body, headers)
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self._close_upstream()
                if not reused:
                    raise
                return self._send(body, headers)

        def _send(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, list[tuple[str, str]], bytes]:
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
            self._upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = self._upstream.getresponse()
            answer = response.read()
            self._used = time.monotonic()
            if response.will_close:
                self._close_upstream()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, response.reason, kept, answer

        def _close_upstream(self) -> None:
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None) -> None:
            self.send_response(status, reason)
            for key, value in [*headers, ("Content-Length", str(len(body)))]:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(b"" if self.command == "HEAD" else body)

        def finish(self) -> None:
            super().finish()
            self._close_upstream()

        do_GET = do_POST = do_PUT = do_PATCH = do_MERGE = do_DELETE = do_HEAD = _forward

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.bench.storage_proxy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--table", required=True, help="Azurite's Table endpoint, e.g. http://127.0.0.1:10002")
    parser.add_argument("--queue", required=True, help="Azurite's Queue endpoint, e.g. http://127.0.0.1:10001")
    args = parser.parse_args(argv)
    tables, queues = serve(args.table), serve(args.queue)
    threading.Thread(target=queues.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    urls = [f"http://127.0.0.1:{server.server_address[1]}" for server in (tables, queues)]
    print(f"storage-proxy tables on {urls[0]}, queues on {urls[1]}", flush=True)
    try:
        tables.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
