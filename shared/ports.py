"""The interfaces the services depend on. Adapters implement them; tests can run any mix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .domain.opportunity import Opportunity
from .domain.referral import Referral


class PartnerCenter(Protocol):
    def get_referral(self, referral_id: str) -> Referral: ...

    def create_referral(self, referral: dict[str, Any], find: Callable[[], Referral | None] | None = None) -> Referral:
        """Create; when the answer is lost, ``find`` looks for what the attempt made before any second create."""
        ...

    def patch_referral(
        self, referral_id: str, operations: list[dict[str, Any]], etag: str | None = None
    ) -> Referral: ...

    def list_referrals(
        self, odata_filter: str | None = None, orderby: str | None = None, top: int | None = None
    ) -> Iterator[Referral]: ...


class Crm(Protocol):
    """A CRM seen as a store of neutral opportunities keyed by the CRM id and the referral id."""

    provider: str

    def get_opportunity(self, crm_id: str) -> Opportunity | None: ...

    def find_by_referral_id(self, referral_id: str) -> Opportunity | None: ...

    def stored_form(self, opportunity: Opportunity) -> Opportunity:
        """The opportunity as this CRM stores and reads it back (what a diff must compare)."""
        ...

    def create_opportunity(self, opportunity: Opportunity) -> Opportunity:
        """Create keyed by ``opportunity.referral_id`` so that a retry never makes a second record."""
        ...

    def update_opportunity(self, current: Opportunity, desired: Opportunity, fields: list[str]) -> Opportunity:
        """Write ``fields`` of ``desired`` conditioned on ``current.etag``; raise PreconditionFailed on 412."""
        ...

    def set_sync_outcome(self, current: Opportunity, name: str | None, audit: str) -> Opportunity:
        """Write only the name mark and the audit text."""
        ...

    def list_flagged_changed_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Opportunity]:
        """Opportunities flagged "Sync with Partner Center" changed at or after ``since``, oldest first."""
        ...


@dataclass
class Link:
    """Referral id <-> CRM record id, with what we last synchronised on each side."""

    referral_id: str
    crm_id: str | None = None
    crm_provider: str | None = None
    pc_fingerprint: str | None = None
    crm_fingerprint: str | None = None
    pc_etag: str | None = None
    crm_etag: str | None = None
    last_status: str | None = None  # "ok" | "failed" | "skipped"
    last_error: str | None = None
    last_synced_at: datetime | None = None
    last_values: str | None = None  # JSON of the mapped values both sides agreed on at the last sync
    etag: str | None = None  # Table Storage etag of this row


@dataclass
class AuditEntry:
    record_key: str
    action: str  # e.g. "created", "updated", "unchanged", "skipped", "failed"
    direction: str  # "pc->crm" | "crm->pc"
    message: str
    crm_id: str | None = None
    referral_id: str | None = None
    fields: list[str] = field(default_factory=list)
    at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SyncStore(Protocol):
    def get_link(self, referral_id: str) -> Link | None: ...

    def find_link_by_crm_id(self, crm_id: str) -> Link | None: ...

    def save_link(self, link: Link) -> Link:
        """Insert (no etag) or replace conditioned on ``link.etag``; PreconditionFailed on a race."""
        ...

    def append_audit(self, entry: AuditEntry) -> None: ...

    def audit_trail(self, record_key: str, limit: int = 50) -> list[AuditEntry]: ...

    def acquire_lease(self, key: str, owner: str, seconds: int) -> bool: ...

    def renew_lease(self, key: str, owner: str, seconds: int) -> bool:
        """Extend a lease ``owner`` still holds; False (and nothing written) when it expired or changed hands."""
        ...

    def release_lease(self, key: str, owner: str) -> None: ...

    def get_state(self, key: str) -> dict[str, Any] | None: ...

    def set_state(self, key: str, values: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Job:
    """A queue message: names a record, never carries its data (events are hints)."""

    kind: str  # "pc-referral" | "crm-opportunity"
    record_id: str
    reason: str = ""
    enqueued_at: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "recordId": self.record_id, "reason": self.reason, "enqueuedAt": self.enqueued_at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        kind, record_id = data.get("kind"), data.get("recordId")
        if not isinstance(kind, str) or not isinstance(record_id, str) or not record_id:
            raise ValueError("a job needs string 'kind' and 'recordId'")
        return cls(kind, record_id, str(data.get("reason", "")), str(data.get("enqueuedAt", "")))


class JobQueue(Protocol):
    def enqueue(self, job: Job, delay_seconds: int = 0) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class WriteFence(Protocol):
    """Runs a block with ``check`` called before each external or bookkeeping write; ``check`` raises to
    stop the write. Services install it, adapters honour it (:mod:`shared.write_fence` is the one in use)."""

    def __call__(self, check: Callable[[], None]) -> AbstractContextManager[None]: ...
