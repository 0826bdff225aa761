"""SyncEngine: handles one job. Reads both sides fresh, maps, diffs, validates, writes only what
changed, and records link, fingerprints and audit. Events are hints: a job names a record and the
engine always decides from current data, so duplicate, late and out-of-order events are harmless."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from ..domain.audit_text import audit_line, prepend
from ..domain.checkmark import mark, strip_marks
from ..domain.classification import classify, should_sync_to_crm
from ..domain.errors import (
    ExternalServiceError,
    NotFound,
    PermanentError,
    PreconditionFailed,
    TransientError,
    ValidationFailed,
)
from ..domain.mapping import DEFAULT_REFERRAL_LINK_TEMPLATE, changed_fields, fingerprint, referral_to_opportunity
from ..domain.opportunity import Opportunity
from ..domain.validation import problems_for_crm
from ..ports import AuditEntry, Clock, Crm, Job, Link, PartnerCenter, SyncStore

log = logging.getLogger(__name__)

PC_TO_CRM = "pc->crm"
KIND_REFERRAL = "pc-referral"
MAX_CONFLICT_RETRIES = 3


class RecordBusy(TransientError):
    """Another worker holds this record's lease; the queue retries the job later."""


@dataclass(frozen=True)
class EngineOptions:
    checkmark_enabled: bool = True
    sync_cosell_only: bool = True
    referral_link_template: str = DEFAULT_REFERRAL_LINK_TEMPLATE
    audit_max_chars: int = 20000
    lease_seconds: int = 120


@dataclass(frozen=True)
class Outcome:
    action: str  # created | updated | unchanged | skipped | failed
    referral_id: str
    crm_id: str | None = None
    fields: tuple[str, ...] = ()
    message: str = ""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class SyncEngine:
    def __init__(
        self, pc: PartnerCenter, crm: Crm, store: SyncStore, options: EngineOptions, clock: Clock | None = None
    ) -> None:
        self.pc, self.crm, self.store, self.options = pc, crm, store, options
        self.clock: Clock = clock or SystemClock()

    # -- entry point -----------------------------------------------------------------------------
    def handle(self, job: Job, final_attempt: bool = False) -> Outcome:
        if job.kind != KIND_REFERRAL:
            raise ValueError(f"unknown job kind '{job.kind}'")
        owner = uuid.uuid4().hex
        lease_key = f"{job.kind}:{job.record_id}"
        if not self.store.acquire_lease(lease_key, owner, self.options.lease_seconds):
            raise RecordBusy("sync", f"referral {job.record_id} is being synchronised by another worker")
        try:
            return self._sync_referral(job.record_id)
        except TransientError as exc:
            if final_attempt:
                self._record_final_failure(job.record_id, exc)
            raise
        finally:
            self.store.release_lease(lease_key, owner)

    # -- Partner Center -> CRM ---------------------------------------------------------------------
    def _sync_referral(self, referral_id: str) -> Outcome:
        try:
            referral = self.pc.get_referral(referral_id)
        except NotFound:
            return self._audit(Outcome("skipped", referral_id, message="referral not found in Partner Center"))
        link = self.store.get_link(referral_id)
        if link is None and not should_sync_to_crm(referral, self.options.sync_cosell_only):
            category = classify(referral).value
            return self._audit(
                Outcome("skipped", referral_id, message=f"{category} not synchronised because SYNC_COSELL_ONLY is on")
            )
        desired = referral_to_opportunity(referral, self.options.referral_link_template)
        pc_fp = fingerprint(desired)
        if link is not None and link.pc_fingerprint == pc_fp and link.last_status in ("ok", "failed"):
            return self._audit(
                Outcome("unchanged", referral_id, link.crm_id, message="mapped fields already synchronised")
            )
        problems = problems_for_crm(desired)
        if problems:
            return self._fail(referral_id, link, pc_fp, referral.e_tag, problems)
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return self._write(referral_id, link, desired, pc_fp, referral.e_tag)
            except PreconditionFailed:
                log.info("referral %s: CRM record changed while writing; re-reading", referral_id)
                link = self.store.get_link(referral_id)
            except ValidationFailed as exc:
                return self._fail(referral_id, link, pc_fp, referral.e_tag, exc.reasons)
            except PermanentError as exc:
                return self._fail(referral_id, link, pc_fp, referral.e_tag, [str(exc)])
        raise TransientError("sync", f"referral {referral_id}: CRM record kept changing during the write")

    def _current(self, referral_id: str, link: Link | None) -> Opportunity | None:
        if link is not None and link.crm_id:
            current = self.crm.get_opportunity(link.crm_id)
            if current is not None:
                return current
        return self.crm.find_by_referral_id(referral_id)

    def _write(
        self, referral_id: str, link: Link | None, desired: Opportunity, pc_fp: str, pc_etag: str | None
    ) -> Outcome:
        current = self._current(referral_id, link)
        now = self.clock.now()
        if current is None:
            line = audit_line(now, True, "Created from Partner Center referral")
            to_create = desired.model_copy(update={"name": self._marked(desired.name, True), "audit": line})
            result = self.crm.create_opportunity(to_create)
            outcome = Outcome("created", referral_id, result.crm_id, ("all",), "opportunity created in the CRM")
        else:
            fields = changed_fields(current, self.crm.stored_form(desired))
            name = self._marked(current.name if "name" not in fields else desired.name, True)
            if not fields and name == current.name:
                result = current
                outcome = Outcome("unchanged", referral_id, current.crm_id, (), "CRM already matches Partner Center")
            else:
                text = "Updated from Partner Center: " + (", ".join(fields) if fields else "sync mark")
                audit = prepend(current.audit, audit_line(now, True, text), self.options.audit_max_chars)
                target = desired.model_copy(update={"name": name, "audit": audit})
                write = [*fields, *(["name"] if name != current.name and "name" not in fields else []), "audit"]
                result = self.crm.update_opportunity(current, target, write)
                outcome = Outcome("updated", referral_id, result.crm_id, tuple(fields), text)
        self._save_link(link, referral_id, result, pc_fp, pc_etag, "ok", None)
        return self._audit(outcome)

    def _fail(
        self, referral_id: str, link: Link | None, pc_fp: str, pc_etag: str | None, reasons: list[str]
    ) -> Outcome:
        """Record a failure the same data will always hit: audit, cross mark, no retry until it changes."""
        message = "Not synchronised: " + " ".join(reasons)
        current = self._safe_current(referral_id, link)
        if current is not None:
            audit = prepend(current.audit, audit_line(self.clock.now(), False, message), self.options.audit_max_chars)
            name = self._marked(current.name, False) if self.options.checkmark_enabled else None
            try:
                current = self.crm.set_sync_outcome(current, name, audit)
            except ExternalServiceError as exc:
                log.warning("referral %s: could not write the failure to the CRM: %s", referral_id, exc)
        self._save_link(link, referral_id, current, pc_fp, pc_etag, "failed", message)
        return self._audit(Outcome("failed", referral_id, current.crm_id if current else None, (), message))

    def _safe_current(self, referral_id: str, link: Link | None) -> Opportunity | None:
        try:
            return self._current(referral_id, link)
        except ExternalServiceError:
            return None

    def _record_final_failure(self, referral_id: str, exc: Exception) -> None:
        message = f"Gave up after repeated transient errors; the job goes to the poison queue: {exc}"
        link = self.store.get_link(referral_id)
        current = self._safe_current(referral_id, link)
        if current is not None:
            audit = prepend(current.audit, audit_line(self.clock.now(), False, message), self.options.audit_max_chars)
            name = self._marked(current.name, False) if self.options.checkmark_enabled else None
            try:
                self.crm.set_sync_outcome(current, name, audit)
            except ExternalServiceError:
                pass
        self._audit(Outcome("failed", referral_id, current.crm_id if current else None, (), message))

    # -- bookkeeping ---------------------------------------------------------------------------
    def _marked(self, name: str | None, success: bool) -> str | None:
        if name is None:
            return None
        return mark(name, success) if self.options.checkmark_enabled else strip_marks(name)

    def _save_link(
        self,
        link: Link | None,
        referral_id: str,
        record: Opportunity | None,
        pc_fp: str,
        pc_etag: str | None,
        status: str,
        error: str | None,
    ) -> None:
        updated = link or Link(referral_id=referral_id)
        updated.crm_provider = self.crm.provider
        if record is not None:
            updated.crm_id = record.crm_id
            updated.crm_etag = record.etag
            updated.crm_fingerprint = fingerprint(record)
        updated.pc_fingerprint = pc_fp
        updated.pc_etag = pc_etag
        updated.last_status = status
        updated.last_error = error
        updated.last_synced_at = self.clock.now()
        self.store.save_link(updated)

    def _audit(self, outcome: Outcome) -> Outcome:
        self.store.append_audit(
            AuditEntry(
                record_key=outcome.referral_id,
                action=outcome.action,
                direction=PC_TO_CRM,
                message=outcome.message,
                crm_id=outcome.crm_id,
                referral_id=outcome.referral_id,
                fields=list(outcome.fields),
                at=self.clock.now(),
            )
        )
        log.info("referral %s: %s %s", outcome.referral_id, outcome.action, outcome.message)
        return outcome
