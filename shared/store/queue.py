"""The job queue (``sync-jobs``) and its poison queue, base64 JSON as the Functions host expects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from ..ports import Job

JOBS_QUEUE = "sync-jobs"
POISON_QUEUE = f"{JOBS_QUEUE}-poison"


def encode_job(job: Job) -> str:
    return json.dumps(job.to_dict(), separators=(",", ":"))


def decode_job(text: str) -> Job:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"job message is not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("job message must be a JSON object")
    return Job.from_dict(data)


class StorageJobQueue:
    def __init__(self, service: QueueServiceClient, name: str = JOBS_QUEUE) -> None:
        # The Functions queue trigger reads base64 text (host.json messageEncoding "base64"); the service
        # client does not pass encode policies on to its queue clients, so each one gets them here.
        codec = {"message_encode_policy": TextBase64EncodePolicy(), "message_decode_policy": TextBase64DecodePolicy()}
        self.client: QueueClient = service.get_queue_client(name, **codec)
        self.poison: QueueClient = service.get_queue_client(f"{name}-poison", **codec)
        self._ready = False

    def ensure(self) -> None:
        if self._ready:
            return
        for client in (self.client, self.poison):
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
        self._ready = True

    def enqueue(self, job: Job, delay_seconds: int = 0) -> None:
        """Send the job; with ``delay_seconds`` it stays invisible that long (at most 7 days)."""
        self.ensure()
        if not job.enqueued_at:
            job = Job(job.kind, job.record_id, job.reason, datetime.now(UTC).isoformat())
        delay = max(0, min(int(delay_seconds), 7 * 24 * 3600))
        self.client.send_message(encode_job(job), visibility_timeout=delay or None)

    def depth(self) -> int:
        self.ensure()
        return int(self.client.get_queue_properties().approximate_message_count)

    def poison_depth(self) -> int:
        self.ensure()
        return int(self.poison.get_queue_properties().approximate_message_count)

    def peek_jobs(self, max_messages: int = 32) -> list[Job]:
        self.ensure()
        return [decode_job(m.content) for m in self.client.peek_messages(max_messages=max_messages)]

    def drain_poison(self) -> Iterator[tuple[str, Job | None]]:
        """Yield (raw text, job or None when unreadable) and delete each poison message."""
        self.ensure()
        while True:
            batch = list(self.poison.receive_messages(max_messages=32, visibility_timeout=60))
            if not batch:
                return
            for message in batch:
                try:
                    job: Job | None = decode_job(message.content)
                except ValueError:
                    job = None
                yield message.content, job
                self.poison.delete_message(message)
