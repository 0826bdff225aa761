"""Queue triggers polled from Storage (Azurite locally) with the host.json semantics.

What the Functions host does and this copies: fetch up to ``batchSize`` messages and run them in
parallel, fetch more when in-flight work drops to ``newBatchThreshold``; back off exponentially (with
jitter) up to ``maxPollingInterval`` while the queue is empty; delete a message on success; on failure
make it visible again after ``visibilityTimeout``; after ``maxDequeueCount`` failed attempts copy it
to ``<queue>-poison`` and delete it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

from .appload import Invocation, LoadedFunction
from .hostconfig import QueueOptions

log = logging.getLogger("devtools.localhost.runner")

MIN_POLL_SECONDS = 0.1
# A message being processed stays invisible this long; the host holds a renewed 10-minute lease.
DEFAULT_LEASE_SECONDS = 600


class QueueConnectionError(ValueError):
    """A queue binding's connection names no usable app setting."""


def queue_client(settings: Mapping[str, str], connection: str | None, queue_name: str) -> QueueClient:
    """A client that stores and returns message text untouched (encoding is handled here, explicitly)."""
    name = connection or "AzureWebJobsStorage"
    for candidate in (name, f"AzureWebJobs{name}"):
        value = settings.get(candidate)
        if value:
            return QueueClient.from_connection_string(value, queue_name)
        uri = settings.get(f"{candidate}__queueServiceUri") or settings.get(f"{candidate}__serviceUri")
        account = settings.get(f"{candidate}__accountName")
        if uri or account:
            from azure.identity import DefaultAzureCredential

            url = uri or f"https://{account}.queue.core.windows.net"
            return QueueClient(url, queue_name, credential=DefaultAzureCredential())
    raise QueueConnectionError(
        f"queue '{queue_name}': connection '{name}' names no app setting "
        f"(set {name} to a connection string, or {name}__accountName for an identity-based connection)"
    )


def encode_message(value: str | bytes, encoding: str) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii") if encoding == "base64" else raw.decode("utf-8")


def decode_message(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


def trigger_value(function: LoadedFunction, message: QueueMessage) -> Any:
    """What the worker passes for the queue trigger parameter, by its annotation."""
    annotation = function.annotation_of_trigger()
    if annotation in (str, "str"):
        return message.get_body().decode("utf-8")
    if annotation in (bytes, "bytes"):
        return message.get_body()
    return message


class QueueListener:
    def __init__(
        self,
        function: LoadedFunction,
        client: QueueClient,
        poison: QueueClient,
        options: QueueOptions,
        run: Callable[[LoadedFunction, Any, str], Invocation],
        stop: threading.Event,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.function = function
        self.client = client
        self.poison = poison
        self.options = options
        self.run_function = run
        self.stop = stop
        self.lease_seconds = int(max(lease_seconds, 30))
        self.executor = ThreadPoolExecutor(
            max_workers=options.batch_size + options.new_batch_threshold, thread_name_prefix=f"queue-{function.name}"
        )
        self.thread = threading.Thread(target=self._poll_loop, name=f"poll-{function.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.ident is not None:  # never started when start-up failed part way
            self.thread.join(timeout)
        # Messages already received finish (the host drains too); cancelling them would leave them
        # invisible for the whole lease.
        self.executor.shutdown(wait=True)

    # -- polling -----------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        delay = MIN_POLL_SECONDS
        in_flight: set[Future[None]] = set()
        while not self.stop.is_set():
            if len(in_flight) > self.options.new_batch_threshold:
                in_flight = _wait_some(in_flight)
                continue
            messages = self._receive()
            if messages:
                delay = MIN_POLL_SECONDS
                in_flight |= {self.executor.submit(self._process, m) for m in messages}
                in_flight = {f for f in in_flight if not f.done()}
                continue
            # Random exponential back-off between empty polls, capped like the host's maxPollingInterval.
            self.stop.wait(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.options.max_polling_interval)
            in_flight = {f for f in in_flight if not f.done()}

    def _receive(self) -> list[Any]:
        try:
            batch = self.options.batch_size
            return list(
                self.client.receive_messages(
                    messages_per_page=batch, max_messages=batch, visibility_timeout=self.lease_seconds
                )
            )
        except ResourceNotFoundError:
            return []  # the queue does not exist until something first sends to it
        except AzureError as exc:
            log.warning("polling queue %s failed: %s", self.client.queue_name, exc)
            return []

    # -- one message -------------------------------------------------------------------------------
    def _process(self, message: Any) -> None:
        try:
            self._handle(message)
        except AzureError as exc:
            # The lease lapses and the message comes back: the same outcome as a host crash mid-flight.
            log.error("queue %s: could not settle message %s: %s", self.client.queue_name, message.id, exc)

    def _handle(self, message: Any) -> None:
        options = self.options
        if message.dequeue_count > options.max_dequeue_count:
            self._to_poison(message, f"dequeue count {message.dequeue_count} exceeds {options.max_dequeue_count}")
            return
        try:
            body = decode_message(message.content, options.message_encoding)
        except (binascii.Error, ValueError):
            self._to_poison(message, "message is not valid base64 (host.json messageEncoding is base64)")
            return
        value = QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        reason = f"New queue message detected on '{self.client.queue_name}'."
        outcome = self.run_function(self.function, trigger_value(self.function, value), reason)
        if outcome.succeeded:
            self.client.delete_message(message.id, message.pop_receipt)
        elif message.dequeue_count >= options.max_dequeue_count:
            self._to_poison(message, f"failed {message.dequeue_count} times")
        else:
            self.client.update_message(
                message.id, message.pop_receipt, visibility_timeout=round(options.visibility_timeout)
            )

    def _to_poison(self, message: Any, why: str) -> None:
        try:
            self.poison.create_queue()
        except ResourceExistsError:
            pass
        self.poison.send_message(message.content)
        self.client.delete_message(message.id, message.pop_receipt)
        log.warning(
            "Message %s has reached MaxDequeueCount of %d (%s); moved to '%s'.",
            message.id,
            self.options.max_dequeue_count,
            why,
            self.poison.queue_name,
        )


def _wait_some(futures: set[Future[None]]) -> set[Future[None]]:
    """The futures still running after at least one finished (or a short wait)."""
    _, pending = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
    return set(pending)
