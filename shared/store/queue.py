"""The job queue (``sync-jobs``) and its poison queue, base64 JSON as the Functions host expects."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import (
    QueueClient,
    QueueMessage,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from ..ports import Job

JOBS_QUEUE = "sync-jobs"
POISON_QUEUE = f"{JOBS_QUEUE}-poison"
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600  # the longest a Storage queue message may stay invisible
PEEK_LIMIT = 32  # the most messages one peek or receive returns


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


def _readable(text: str) -> Job | None:
    try:
        return decode_job(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class PoisonedJob:
    """A message of the poison queue: the job (None when unreadable), its text and when it was poisoned."""

    job: Job | None
    text: str
    message_id: str
    poisoned_at: datetime | None


@dataclass
class Replay:
    replayed: list[Job]
    dropped: list[str]  # the text of unreadable messages, deleted


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
            job = replace(job, enqueued_at=datetime.now(UTC).isoformat())
        delay = max(0, min(int(delay_seconds), MAX_VISIBILITY_SECONDS))
        # A message lives 7 days unless told otherwise: one deferred for days would expire before (or as)
        # it became visible, and the job would be gone without a trace. A deferred job never expires.
        self.client.send_message(encode_job(job), visibility_timeout=delay or None, time_to_live=-1 if delay else None)

    def depth(self) -> int:
        self.ensure()
        return int(self.client.get_queue_properties().approximate_message_count)

    def poison_depth(self) -> int:
        self.ensure()
        return int(self.poison.get_queue_properties().approximate_message_count)

    def peek_jobs(self, max_messages: int = 32) -> list[Job]:
        self.ensure()
        return [decode_job(m.content) for m in self.client.peek_messages(max_messages=max_messages)]

    def replay_poison(self, limit: int = 0) -> Replay:
        """Move up to ``limit`` jobs (0: all) from the poison queue back to the job queue, deleting each
        poison message only once its job is sent, and unreadable messages on the way."""
        self.ensure()
        done = Replay([], [])
        while not limit or len(done.replayed) < limit:
            # Take no more than can be replayed: a message taken and not replayed would stay hidden a while.
            wanted = PEEK_LIMIT if not limit else min(PEEK_LIMIT, limit - len(done.replayed))
            batch = list(self.poison.receive_messages(max_messages=wanted, visibility_timeout=60))
            if not batch:
                break
            for message in batch:
                job = _readable(message.content)
                if job is None:
                    done.dropped.append(message.content)
                else:
                    self.enqueue(job)
                    done.replayed.append(job)
                self.poison.delete_message(message)
        return done

    def peek_poison(self, count: int = PEEK_LIMIT) -> list[PoisonedJob]:
        """The oldest ``count`` (at most 32) poison messages, left where they are: one peek."""
        self.ensure()
        return [_poisoned(m) for m in self.poison.peek_messages(max_messages=max(1, min(count, PEEK_LIMIT)))]

    def replay_poison_message(self, message_id: str) -> Job | None:
        """Move one poison message, named by its id, back to the job queue; None when it is not there (replayed
        already) or unreadable. Messages taken out of sight while looking for it are shown again at once."""
        self.ensure()
        taken: dict[str, QueueMessage] = {}
        found: QueueMessage | None = None
        try:
            while found is None:
                batch = list(self.poison.receive_messages(max_messages=PEEK_LIMIT, visibility_timeout=60))
                fresh = [m for m in batch if m.id not in taken]
                if not fresh:
                    break
                taken.update((m.id, m) for m in fresh)
                found = taken.pop(message_id, None)
            job = _readable(found.content) if found is not None else None
            if found is not None and job is not None:
                self.enqueue(job)
                self.poison.delete_message(found)
            elif found is not None:
                taken[found.id] = found
            return job
        finally:
            for message in taken.values():
                self.poison.update_message(message, visibility_timeout=0)

    def list_poison(self) -> list[PoisonedJob]:
        """Every message of the poison queue, oldest first, left where it is.

        A peek shows at most 32 messages; a longer queue is read by taking each message out of sight for a
        moment and showing it again straight away (its dequeue count goes up; nothing reads it but us)."""
        self.ensure()
        peeked = list(self.poison.peek_messages(max_messages=PEEK_LIMIT))
        if len(peeked) < PEEK_LIMIT:
            return [_poisoned(m) for m in peeked]
        taken: dict[str, QueueMessage] = {}
        try:
            while True:
                batch = list(self.poison.receive_messages(max_messages=PEEK_LIMIT, visibility_timeout=120))
                fresh = [m for m in batch if m.id not in taken]
                if not fresh:
                    break
                taken.update((m.id, m) for m in fresh)
        finally:
            for message in taken.values():
                self.poison.update_message(message, visibility_timeout=0)
        return sorted(
            (_poisoned(m) for m in taken.values()), key=lambda p: p.poisoned_at or datetime.min.replace(tzinfo=UTC)
        )


def _poisoned(message: QueueMessage) -> PoisonedJob:
    return PoisonedJob(_readable(message.content), message.content, message.id, message.inserted_on)
