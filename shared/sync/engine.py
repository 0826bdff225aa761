"""SyncEngine: handles one job for one referral <-> opportunity pair.

A job only names a record (a referral or a CRM opportunity). The engine takes a lease on the pair,
reads both sides fresh, compares each side with the values both agreed on at the last sync, sends
each side the other's changes (a documented owner decides fields both sides changed), and records
link, fingerprints and audit. Because it always decides from current data, duplicate, late,
out-of-order and echoed events are harmless: an echo finds nothing changed and writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

from ..domain.audit_text import audit_line, prepend
from ..domain.bounded import ERROR_MAX_UNITS, cap_utf16, encode_agreed
from ..domain.checkmark import mark, strip_marks
from ..domain.classification import classify, should_sync_to_crm
from ..domain.errors import (
    ExternalServiceError,
    LeaseLost,
    NotFound,
    PermanentError,
    PreconditionFailed,
    QuotaExceeded,
    StorageRejected,
    TransientError,
    ValidationFailed,
)
from ..domain.mapping import DEFAULT_REFERRAL_LINK_TEMPLATE, fingerprint, mapped_values, referral_to_opportunity
from ..domain.merge import agreed_on_create, plan_merge
from ..domain.opportunity import Opportunity
from ..domain.policies import DEFAULT_FIELD_OWNERS, Side
from ..domain.referral import Referral
from ..domain.referral_builder import is_microsoft_copy, partner_referral_body, patch_operations
from ..domain.validation import problems_for_crm, problems_for_partner_center
from ..ports import AuditEntry, Clock, Crm, Job, Link, PartnerCenter, SyncStore, WriteFence
from .clock import SystemClock
from .deferral import is_deferred
from .lease import LeaseKeeper
from .referral_creation import ReferralCreator

log = logging.getLogger(__name__)

PC_TO_CRM = "pc->crm"
CRM_TO_PC = "crm->pc"
KIND_REFERRAL = "pc-referral"
KIND_CRM = "crm-opportunity"
MAX_CONFLICT_RETRIES = 3
STATUS_FIELDS = ("status", "substatus")
ALREADY_SYNCED = "mapped fields already synchronised"


class RecordBusy(TransientError):
    """Another worker holds this pair's lease; the queue retries the job later."""


@dataclass(frozen=True)
class EngineOptions:
    checkmark_enabled: bool = True
    sync_cosell_only: bool = True
    referral_link_template: str = DEFAULT_REFERRAL_LINK_TEMPLATE
    audit_max_chars: int = 20000
    lease_seconds: int = 120
    # Writes stop this long before the lease row expires: one HTTP timeout plus allowed clock skew between
    # workers (shared.sync.lease explains why; settings derive it from HTTP_TIMEOUT_SECONDS).
    lease_margin_seconds: float = 35.0
    field_owners: Mapping[str, Side] = field(default_factory=lambda: dict(DEFAULT_FIELD_OWNERS))


@dataclass(frozen=True)
class Outcome:
    action: str  # created | updated | unchanged | skipped | failed
    record_key: str
    direction: str
    crm_id: str | None = None
    referral_id: str | None = None
    fields: tuple[str, ...] = ()
    message: str = ""


@dataclass
class Pair:
    """What one job found on both sides."""

    referral: Referral | None = None
    record: Opportunity | None = None
    link: Link | None = None


def failure_state_key(crm_id: str) -> str:
    return f"crm-invalid:{crm_id}"


class SyncEngine:
    def __init__(
        self,
        pc: PartnerCenter,
        crm: Crm,
        store: SyncStore,
        options: EngineOptions,
        clock: Clock | None = None,
        fence: WriteFence | None = None,
    ) -> None:
        """``fence`` is what stops the adapters' writes once a job's lease is lost; wiring passes
        :func:`shared.write_fence.fenced`. Without it the lease is still kept and renewed, but nothing
        stops a worker that lost it."""
        self.pc, self.crm, self.store, self.options = pc, crm, store, options
        self.clock: Clock = clock or SystemClock()
        self.fence: WriteFence = fence or (lambda _check: nullcontext())
        self.creator = ReferralCreator(pc)

    # -- entry point -------------------------------------------------------------------------------
    def handle(self, job: Job, final_attempt: bool = False) -> Outcome:
        if job.kind == KIND_REFERRAL:
            return self._with_lease(job, final_attempt, self._referral_job)
        if job.kind == KIND_CRM:
            return self._with_lease(job, final_attempt, self._crm_job)
        raise ValueError(f"unknown job kind '{job.kind}'")

    def _with_lease(self, job: Job, final_attempt: bool, run: object) -> Outcome:
        pair = Pair()
        key = self._pair_key(job, pair)
        if key is None:
            return self._note("skipped", PC_TO_CRM, "referral not found in Partner Center", referral_id=job.record_id)
        lease = LeaseKeeper(self.store, key, self.options.lease_seconds, self.options.lease_margin_seconds)
        if not lease.acquire():
            raise RecordBusy("sync", f"{job.kind} {job.record_id} is being synchronised by another worker")
        with lease, self.fence(lease.check):
            try:
                return run(job.record_id, pair)  # type: ignore[operator]
            except (QuotaExceeded, LeaseLost):
                # Not a failure of this record: the job runner pauses all work, or defers the job while
                # another worker may own the pair (this one must write nothing more, not even a failure).
                raise
            except TransientError as exc:
                if final_attempt and not is_deferred(exc):  # a throttled job is deferred, not given up
                    lease.check()  # a worker that lost the pair does not mark it failed either
                    self._record_final_failure(job, pair, exc)
                raise

    def _pair_key(self, job: Job, pair: Pair) -> str | None:
        """One lease per pair, named by the CRM id whenever it is known, so a Partner Center job and a CRM
        job for the same pair never run at the same time."""
        if job.kind == KIND_CRM:
            return f"crm:{job.record_id}"
        pair.link = self.store.get_link(job.record_id)
        if pair.link is not None and pair.link.crm_id:
            return f"crm:{pair.link.crm_id}"
        try:
            pair.referral = self.pc.get_referral(job.record_id)
        except NotFound:
            return None
        external = pair.referral.external_reference_id
        return f"crm:{external}" if external else f"referral:{job.record_id}"

    # -- a referral changed ----------------------------------------------------------------------------
    def _referral_job(self, referral_id: str, pair: Pair) -> Outcome:
        if pair.referral is None:
            try:
                pair.referral = self.pc.get_referral(referral_id)
            except NotFound:
                return self._note("skipped", PC_TO_CRM, "referral not found in Partner Center", referral_id=referral_id)
        referral = pair.referral
        if is_microsoft_copy(referral.target):
            message = "Microsoft's copy of a co-sell engagement; the partner's referral carries the sync"
            return self._note("skipped", PC_TO_CRM, message, referral_id=referral_id)
        link = self.store.get_link(referral_id)  # fresh: the one read before the lease may be stale
        if link is None and not should_sync_to_crm(referral, self.options.sync_cosell_only):
            category = classify(referral).value
            message = f"{category} not synchronised because SYNC_COSELL_ONLY is on"
            return self._note("skipped", PC_TO_CRM, message, referral_id=referral_id)
        mapped = self._mapped(referral)
        if link is not None and link.pc_fingerprint == fingerprint(mapped) and link.last_status in ("ok", "failed"):
            return self._note("unchanged", PC_TO_CRM, ALREADY_SYNCED, link.crm_id, referral_id)
        problems = problems_for_crm(mapped)
        if problems:
            return self._fail_pc_side(referral, link, problems)
        record = self._find_record(link, referral)
        pair = Pair(referral, record, link)
        return self._reconcile(pair, PC_TO_CRM)

    def _find_record(self, link: Link | None, referral: Referral) -> Opportunity | None:
        for crm_id in (link.crm_id if link else None, referral.external_reference_id):
            if crm_id:
                found = self._safe_get(crm_id)
                if found is not None:
                    return found
        return self.crm.find_by_referral_id(referral.id or "")

    def _safe_get(self, crm_id: str) -> Opportunity | None:
        try:
            return self.crm.get_opportunity(crm_id)
        except (NotFound, PermanentError):
            return None  # an id from another system that this CRM does not recognise

    # -- a CRM opportunity changed -----------------------------------------------------------------------
    def _crm_job(self, crm_id: str, pair: Pair) -> Outcome:
        record = self._safe_get(crm_id)
        if record is None:
            return self._note("skipped", CRM_TO_PC, "opportunity not found in the CRM", crm_id)
        link = self.store.find_link_by_crm_id(crm_id)
        if link is None and record.referral_id:
            link = self.store.get_link(record.referral_id)
        crm_fp = fingerprint(record)
        if link is not None and link.crm_fingerprint == crm_fp and link.last_status in ("ok", "failed"):
            return self._note("unchanged", CRM_TO_PC, ALREADY_SYNCED, crm_id, link.referral_id)
        if link is None and not record.referral_id:
            if not record.sync_enabled:
                return self._note("skipped", CRM_TO_PC, "'Sync with Partner Center' is not set", crm_id)
            return self._create_referral(record, crm_fp)
        referral_id = link.referral_id if link else record.referral_id
        try:
            referral = self.pc.get_referral(referral_id or "")
        except NotFound:
            return self._fail_crm_side(record, link, [f"Referral {referral_id} no longer exists in Partner Center."])
        return self._reconcile(Pair(referral, record, link), CRM_TO_PC)

    # -- both sides ----------------------------------------------------------------------------------
    def _reconcile(self, pair: Pair, direction: str) -> Outcome:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                if pair.record is None:
                    return self._create_record(pair)
                return self._merge(pair, direction)
            except PreconditionFailed:
                log.info("a record changed while we wrote it; re-reading both sides")
                pair = self._reread(pair)
            except StorageRejected as exc:
                # Our bookkeeping was refused after the sides were written: fail from fresh reads, so the
                # failure neither writes the refused values again nor marks the record with a stale etag.
                return self._fail(self._reread(pair), direction, [str(exc)])
            except ValidationFailed as exc:
                return self._fail(pair, direction, exc.reasons)
            except PermanentError as exc:
                return self._fail(pair, direction, [str(exc)])
        raise TransientError("sync", "the records kept changing while they were written")

    def _reread(self, pair: Pair) -> Pair:
        assert pair.referral is not None and pair.referral.id
        referral = self.pc.get_referral(pair.referral.id)
        link = self.store.get_link(pair.referral.id)
        record = self._find_record(link, referral) if pair.record is None else self._safe_get(pair.record.crm_id or "")
        return Pair(referral, record, link)

    def _create_record(self, pair: Pair) -> Outcome:
        assert pair.referral is not None and pair.referral.id
        referral_id = pair.referral.id
        desired = self._mapped(pair.referral)
        # Written ahead: if the worker dies between creating the opportunity and recording it, the next job
        # finds the opportunity with these values as the base, so later edits on either side are told apart
        # (without a base, every difference would look changed on both sides and the owner would overwrite
        # the other side's edit).
        try:
            link = self._save_pending(
                pair.link, referral_id, pair.referral, mapped_values(self.crm.stored_form(desired))
            )
        except StorageRejected:
            # Our bookkeeping does not fit: create anyway, so the refusal is reported on the opportunity itself
            # (cross mark and reason) when the link is refused again after the create.
            link = pair.link
        line = audit_line(self.clock.now(), True, "Created from Partner Center referral")
        created = self.crm.create_opportunity(
            desired.model_copy(update={"name": self._marked(desired.name, True), "audit": line})
        )
        agreed = agreed_on_create(self.crm.stored_form(desired), created)
        self._save_link(link, referral_id, pair.referral, created, agreed)
        return self._audit(
            Outcome(
                "created",
                referral_id,
                PC_TO_CRM,
                created.crm_id,
                referral_id,
                ("all",),
                "opportunity created in the CRM",
            )
        )

    def _merge(self, pair: Pair, direction: str) -> Outcome:
        referral, record, link = pair.referral, pair.record, pair.link
        assert referral is not None and record is not None and referral.id
        pc_opp = self.crm.stored_form(self._mapped(referral))
        base = json.loads(link.last_values) if link and link.last_values else None
        plan = plan_merge(pc_opp, record, base, self.options.field_owners, referral.status, referral.substatus)
        now = self.clock.now()
        upgrade = "help_code" in plan.to_pc
        if upgrade:
            problems = problems_for_partner_center(record)
            if problems:
                return self._fail_crm_side(record, link, problems)
        if plan.to_pc:
            operations = patch_operations(record, plan.to_pc, referral)
            referral = self.pc.patch_referral(referral.id, operations, etag=referral.e_tag)
            if plan.to_crm:
                # Partner Center now holds these values: record them before the CRM write, so a failure or a
                # conflict (412) in between does not take our own write for a Partner Center edit.
                sent = {name: plan.agreed[name] for name in plan.to_pc}
                link = self._save_pending(link, referral.id, referral, {**(base or {}), **sent})
        if upgrade:
            self.creator.ensure_microsoft_referral(referral, record)
        changed = plan.changed
        name = self._marked(pc_opp.name if "name" in plan.to_crm else record.name, True)
        # Notes (a value Partner Center would not take) reach the seller through the Audit column too.
        if changed or plan.notes or name != record.name:
            text = plan.summary()
            audit = prepend(record.audit, audit_line(now, True, text), self.options.audit_max_chars)
            target = record.model_copy(update={f: getattr(pc_opp, f) for f in plan.to_crm})
            target = target.model_copy(update={"name": name, "audit": audit})
            fields = [*plan.to_crm, *(["name"] if "name" not in plan.to_crm else []), "audit"]
            record = self.crm.update_opportunity(record, target, fields)
            written = self._written_fingerprint(target)
            action = "updated" if changed else "unchanged"
        else:
            text, action, written = "both sides already match", "unchanged", None
        self._save_link(link, referral.id, referral, record, plan.agreed, written)
        return self._audit(Outcome(action, referral.id, direction, record.crm_id, referral.id, tuple(changed), text))

    # -- CRM -> Partner Center creation ---------------------------------------------------------------
    def _create_referral(self, record: Opportunity, crm_fp: str) -> Outcome:
        assert record.crm_id is not None
        failed = self.store.get_state(failure_state_key(record.crm_id))
        if failed and failed.get("CrmFingerprint") == crm_fp:
            return self._note(
                "unchanged", CRM_TO_PC, "still invalid; waiting for the opportunity to change", record.crm_id
            )
        problems = problems_for_partner_center(record)
        if problems:
            return self._fail_crm_side(record, None, problems)
        created = self.creator.ensure(record)
        referral = created.referral
        assert referral.id is not None
        link_url = referral_to_opportunity(referral, self.options.referral_link_template).referral_link
        text = "Co-sell referral created in Partner Center" + (
            " with a request for Microsoft's help" if created.microsoft_referral_id else ""
        )
        audit = prepend(record.audit, audit_line(self.clock.now(), True, text), self.options.audit_max_chars)
        target = record.model_copy(
            update={
                "referral_id": referral.id,
                "referral_link": link_url,
                "name": self._marked(record.name, True),
                "audit": audit,
            }
        )
        agreed, pc_fingerprint = self._agreed_on_referral_create(record, referral)
        try:
            # The pair is recorded before the write-back: if that fails (a seller's edit in between, a crash),
            # the next job merges the pair instead of creating anything again.
            # A reused referral may already have its row (an earlier attempt died before the write-back).
            existing = self.store.get_link(referral.id) if created.reused else None
            link = self._save_pending(existing, referral.id, referral, agreed, record, pc_fingerprint)
        except StorageRejected as exc:
            # The referral exists now: the CRM must learn its id, and the pair stays linked by a small row
            # without the refused values, so the failure is recorded once, not again on every poll.
            written = self.crm.update_opportunity(record, target, ["referral_id", "referral_link", "name", "audit"])
            link = Link(referral_id=referral.id, crm_id=record.crm_id, crm_provider=self.crm.provider)
            link.pc_fingerprint, link.pc_etag = fingerprint(self._mapped(referral)), referral.e_tag
            return self._fail_crm_side(written, link, [str(exc)])
        try:
            written = self.crm.update_opportunity(record, target, ["referral_id", "referral_link", "name", "audit"])
        except PreconditionFailed:
            log.info("opportunity %s changed during the write-back; merging from fresh reads", record.crm_id)
            fresh = self._safe_get(record.crm_id)
            if fresh is None:
                raise
            return self._reconcile(Pair(referral, fresh, link), CRM_TO_PC)
        self._save_link(link, referral.id, referral, written, agreed, self._written_fingerprint(target), pc_fingerprint)
        if failed:
            self.store.set_state(failure_state_key(record.crm_id), {"CrmFingerprint": "", "Reason": ""})
        return self._audit(Outcome("created", referral.id, CRM_TO_PC, record.crm_id, referral.id, ("all",), text))

    # -- failures ----------------------------------------------------------------------------------------
    def _fail(self, pair: Pair, direction: str, reasons: list[str]) -> Outcome:
        if direction == CRM_TO_PC and pair.record is not None:
            return self._fail_crm_side(pair.record, pair.link, reasons)
        assert pair.referral is not None
        return self._fail_pc_side(pair.referral, pair.link, reasons)

    def _fail_pc_side(self, referral: Referral, link: Link | None, reasons: list[str]) -> Outcome:
        """A referral the CRM cannot take as it is: audit, cross mark, no retry until the referral changes."""
        assert referral.id is not None
        message = "Not synchronised: " + " ".join(reasons)
        record = self._mark_failure(self._safe_find(link, referral), message)
        updated = link or Link(referral_id=referral.id)
        self._record_link(updated, referral, record, status="failed", error=message)
        return self._audit(
            Outcome("failed", referral.id, PC_TO_CRM, record.crm_id if record else None, referral.id, message=message)
        )

    def _fail_crm_side(self, record: Opportunity, link: Link | None, reasons: list[str]) -> Outcome:
        """An opportunity Partner Center cannot take as it is: reason in the Audit column, cross mark, and
        no retry until the opportunity changes."""
        assert record.crm_id is not None
        message = "Not sent to Partner Center: " + " ".join(reasons)
        marked = self._mark_failure(record, message)
        if link is None:
            self.store.set_state(
                failure_state_key(record.crm_id),
                {"CrmFingerprint": fingerprint(marked or record), "Reason": cap_utf16(message, ERROR_MAX_UNITS)},
            )
        else:
            link.crm_fingerprint = fingerprint(marked or record)
            link.last_status, link.last_error = "failed", message
            link.last_synced_at = self.clock.now()
            self.store.save_link(link)
        key = link.referral_id if link else record.crm_id
        return self._audit(
            Outcome("failed", key, CRM_TO_PC, record.crm_id, link.referral_id if link else None, message=message)
        )

    def _mark_failure(self, record: Opportunity | None, message: str) -> Opportunity | None:
        if record is None:
            return None
        audit = prepend(record.audit, audit_line(self.clock.now(), False, message), self.options.audit_max_chars)
        name = self._marked(record.name, False) if self.options.checkmark_enabled else None
        try:
            return self.crm.set_sync_outcome(record, name, audit)
        except ExternalServiceError as exc:
            log.warning("could not write the failure to the CRM record %s: %s", record.crm_id, exc)
            return record

    def _safe_find(self, link: Link | None, referral: Referral) -> Opportunity | None:
        try:
            return self._find_record(link, referral)
        except ExternalServiceError:
            return None

    def _record_final_failure(self, job: Job, pair: Pair, exc: Exception) -> None:
        message = f"Gave up after repeated transient errors; the job goes to the poison queue: {exc}"
        record: Opportunity | None = None
        try:
            if job.kind == KIND_CRM:
                record = self._safe_get(job.record_id)
            elif pair.referral is not None:
                record = self._find_record(self.store.get_link(job.record_id), pair.referral)
        except ExternalServiceError:
            record = None  # the CRM itself is what keeps failing
        self._mark_failure(record, message)
        direction = CRM_TO_PC if job.kind == KIND_CRM else PC_TO_CRM
        self._audit(Outcome("failed", job.record_id, direction, record.crm_id if record else None, message=message))

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _mapped(self, referral: Referral) -> Opportunity:
        return referral_to_opportunity(referral, self.options.referral_link_template)

    def _marked(self, name: str | None, success: bool) -> str | None:
        if name is None:
            return None
        return mark(name, success) if self.options.checkmark_enabled else strip_marks(name)

    def _written_fingerprint(self, target: Opportunity) -> str:
        """The fingerprint of what we wrote, not of a read after the write: a seller's edit saved between
        our write and that read would otherwise count as already synchronised and be lost."""
        return fingerprint(self.crm.stored_form(target))

    def _save_link(
        self,
        link: Link | None,
        referral_id: str,
        referral: Referral,
        record: Opportunity,
        agreed: dict[str, object],
        crm_fingerprint: str | None = None,
        pc_fingerprint: str | None = None,
    ) -> None:
        updated = link or Link(referral_id=referral_id)
        updated.last_values = encode_agreed(agreed)
        self._record_link(updated, referral, record, "ok", None, crm_fingerprint, pc_fingerprint)

    def _agreed_on_referral_create(self, record: Opportunity, referral: Referral) -> tuple[dict[str, object], str]:
        """What both sides held when the referral was made: the values we sent, read as Partner Center reads
        them, plus what only Partner Center sets (its id, link and status). Not the referral as found now:
        when the create's answer was lost, the lookup may find it already edited in Partner Center, and that
        edit must still reach the CRM instead of being taken as agreed."""
        sent = self._mapped(Referral.model_validate(partner_referral_body(record)))
        actual = self._mapped(referral)
        own = {name: getattr(actual, name) for name in ("status", "substatus", "referral_id", "referral_link")}
        created = sent.model_copy(update=own)
        return mapped_values(self.crm.stored_form(created)), fingerprint(created)

    def _save_pending(
        self,
        link: Link | None,
        referral_id: str,
        referral: Referral,
        agreed: dict[str, object],
        record: Opportunity | None = None,
        pc_fingerprint: str | None = None,
    ) -> Link:
        """Record the values both sides hold (or are about to hold) before a write that the job may not live to
        record; ``pending`` keeps the row from counting as synchronised until the job finishes."""
        updated = link or Link(referral_id=referral_id)
        updated.last_values = encode_agreed(agreed)
        self._record_link(updated, referral, record, "pending", None, None, pc_fingerprint)
        return updated

    def _record_link(
        self,
        link: Link,
        referral: Referral,
        record: Opportunity | None,
        status: str,
        error: str | None,
        crm_fingerprint: str | None = None,
        pc_fingerprint: str | None = None,
    ) -> None:
        link.crm_provider = self.crm.provider
        if record is not None:
            link.crm_id = record.crm_id
            link.crm_etag = record.etag
            link.crm_fingerprint = crm_fingerprint or fingerprint(record)
        link.pc_fingerprint = pc_fingerprint or fingerprint(self._mapped(referral))
        link.pc_etag = referral.e_tag
        link.last_status = status
        link.last_error = error
        link.last_synced_at = self.clock.now()
        self.store.save_link(link)

    def _note(
        self, action: str, direction: str, message: str, crm_id: str | None = None, referral_id: str | None = None
    ) -> Outcome:
        """Audit an outcome that wrote nothing; the trail is keyed by the referral when there is one."""
        key = referral_id or crm_id or "unknown"
        return self._audit(Outcome(action, key, direction, crm_id, referral_id, message=message))

    def _audit(self, outcome: Outcome) -> Outcome:
        self.store.append_audit(
            AuditEntry(
                record_key=outcome.record_key,
                action=outcome.action,
                direction=outcome.direction,
                message=outcome.message,
                crm_id=outcome.crm_id,
                referral_id=outcome.referral_id,
                fields=list(outcome.fields),
                at=self.clock.now(),
            )
        )
        log.info("%s %s: %s %s", outcome.direction, outcome.record_key, outcome.action, outcome.message)
        return outcome
