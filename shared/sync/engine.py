"""SyncEngine: handles one job for one referral <-> opportunity pair.

A job only names a record (a referral or a CRM opportunity). The engine decides from fresh reads of both sides
and the pair's link what the job has to do (:mod:`.pairing`), takes the pair's lease with the first write (proving
the link unchanged since it was read, :mod:`.lease`), and carries it out:
creating the opportunity (:mod:`.opportunity_creation`) or the referral (:mod:`.referral_creation`),
merging a linked pair (:mod:`.merging`), and recording link, fingerprints and audit (:mod:`.recording`).
Because it always decides from current data, duplicate, late, out-of-order and echoed events are
harmless: an echo finds nothing changed and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from ..domain.errors import (
    ExternalServiceError,
    LeaseLost,
    PairBusy,
    PermanentError,
    PreconditionFailed,
    QuotaExceeded,
    SetupIncomplete,
    StorageRejected,
    Throttled,
    TransientError,
    ValidationFailed,
)
from ..domain.microsoft_side import RELATED_REFERRAL_EVENTS, is_microsoft_referral
from ..domain.opportunity import Opportunity
from ..domain.referral import Referral
from ..ports import (
    CRM_TO_PC,
    KIND_CRM,
    KIND_CRM_LEAD,
    KIND_REFERRAL,
    PC_TO_CRM,
    Clock,
    Crm,
    CrmEntry,
    Job,
    JobWaits,
    Link,
    PartnerCenter,
    SyncStore,
    WriteFence,
)
from .clock import SystemClock
from .deferral import is_deferred
from .echoes import is_echo
from .leads import LeadSync
from .lease import LeaseKeeper
from .merging import Merging
from .microsoft_side import MicrosoftSideSync
from .opportunity_creation import OpportunityCreation
from .options import EngineOptions
from .pairing import (
    REFERRAL_NOT_FOUND,
    UNREAD,
    Decision,
    NewReferral,
    Pair,
    Pairing,
    RefusedOpportunity,
    RefusedReferral,
    Settled,
    Unread,
)
from .recording import Outcome, Recorder
from .referral_creation import ReferralCreation, ReferralCreator

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 3


@dataclass
class _Read:
    """The referral a job read, before its lease or during it: what a failure on its last attempt is marked on."""

    referral: Referral | None = None
    related: bool = False  # a related-referral event: Microsoft's side of the engagement changed
    link: Link | None = None  # a referral job's link as read before the lease: whether the CRM record is a lead
    # The partner's referral when the event named Microsoft's, and the engagement listed to find it.
    record_id: str | None = None
    engagement: list[Referral] | None = None
    lease: LeaseKeeper | None = None
    # What a CRM job read first, before its lease: its link row (the poll's hint) or its CRM index entry (None: it
    # had none), as pairing takes it (UNREAD: a job without a version reads it later).
    known: Link | CrmEntry | Unread | None = UNREAD


class SyncEngine:
    def __init__(
        self,
        pc: PartnerCenter,
        crm: Crm,
        store: SyncStore,
        options: EngineOptions,
        clock: Clock | None = None,
        fence: WriteFence | None = None,
        waits: JobWaits | None = None,
    ) -> None:
        """``fence`` is what stops the adapters' writes once a job's lease is lost, and what takes the lease
        with the job's first write; wiring passes :func:`shared.write_fence.fenced`. Without it the lease is taken
        when the job starts and kept and renewed, but nothing stops a worker that lost it. ``waits`` lets a job
        that has had an answer wait out a throttle longer before it is deferred; wiring passes
        :func:`shared.inline_wait.job_waits`. Without it every request waits only as long as its client allows."""
        self.pc, self.crm, self.store, self.options = pc, crm, store, options
        self.clock: Clock = clock or SystemClock()
        # The lease is taken by the fence with the job's first write; without a fence, at the start of the job.
        self.lazy_lease = fence is not None
        self.fence: WriteFence = fence or (lambda _check, _lease=None: nullcontext())
        self.waits: JobWaits = waits or (lambda _started_wait: nullcontext())
        self.pairing = Pairing(pc, crm, store, options)
        self.recorder = Recorder(crm, store, options, self.clock)
        self.creator = ReferralCreator(pc)
        self.opportunities = OpportunityCreation(crm, self.recorder, self.clock, options.field_directions, pc)
        self.referrals = ReferralCreation(
            crm, store, self.pairing, self.recorder, self.creator, options, self.clock, self._reconcile
        )
        self.merging = Merging(pc, crm, self.pairing, self.recorder, self.creator, options, self.clock)
        self.microsoft_side = MicrosoftSideSync(pc, crm, store, self.recorder, options, self.clock)
        self.leads = LeadSync(pc, crm, store, self.pairing, self.recorder, options, self.clock, self._reconcile)

    # -- entry point -------------------------------------------------------------------------------
    def handle(self, job: Job, final_attempt: bool = False) -> Outcome:
        # Before the job's first answer (its link and the echo check are Table reads) this changes nothing.
        with self.waits(self.options.started_job_wait_seconds):
            return self._handle(job, final_attempt)

    def _handle(self, job: Job, final_attempt: bool) -> Outcome:
        run: Callable[[str, _Read], Outcome]
        if job.kind == KIND_REFERRAL:
            run = self._referral_job
        elif job.kind == KIND_CRM:
            run = self._crm_job
        elif job.kind == KIND_CRM_LEAD:
            run = self._lead_job
        else:
            raise ValueError(f"unknown job kind '{job.kind}'")
        read = _Read(related=job.reason in RELATED_REFERRAL_EVENTS)
        link = read.link = self._link_for(job, read)
        if is_echo(job, link):
            # Counted, not audited: an audit row per echo would cost a Table write for nothing.
            log.info("%s %s: echo of our own write (version %s); nothing to do", job.kind, job.record_id, job.version)
            return Outcome("echo", job.record_id, job.direction, message="echo of our own write")
        held_back = self.crm.held_back_for()
        if held_back > self.options.max_inline_wait_seconds:
            message = f"the CRM holds requests back for {held_back:.0f}s"
            raise Throttled(self.crm.provider, message, 429, retry_after=held_back)
        key = self._pair_key(job, read, link)
        if key is None:
            return self.recorder.note("skipped", PC_TO_CRM, REFERRAL_NOT_FOUND, referral_id=job.record_id)
        lease = LeaseKeeper(self.store, key, self.options.lease_seconds, self.options.lease_margin_seconds)
        if read.link is not None and read.link.etag is not None and read.record_id is None:
            lease.saw(read.link)  # a link row read before the lease: its take proves it unchanged
        # A merge's last link save ends what these jobs write, so it may release the lease in the same request.
        lease.release_with_last_save = job.kind == KIND_CRM or (job.kind == KIND_REFERRAL and not read.related)
        read.lease = lease
        if not self.lazy_lease and not lease.acquire():
            raise PairBusy("sync", f"{job.kind} {job.record_id} is being synchronised by another worker")
        with lease, self.fence(lease.check, lease):
            try:
                return run(read.record_id or job.record_id, read)
            except (QuotaExceeded, LeaseLost, PairBusy):
                # Not a failure of this record: the job runner pauses all work, or defers the job while
                # another worker may own the pair (this one must write nothing more, not even a failure).
                raise
            except TransientError as exc:
                if final_attempt and not is_deferred(exc):  # a throttled job is deferred, not given up
                    lease.check()  # a worker that lost the pair does not mark it failed either
                    self._record_final_failure(job, read, exc)
                raise

    def _link_for(self, job: Job, read: _Read) -> Link | None:
        """The pair's link when the job needs it first: to tell an echo, or to name a referral's lease. A CRM job
        reads the link its record names (the poll's hint) when it names that record, or else what the CRM index
        says (``read.known``); a CRM job without a version reads it later."""
        if job.kind == KIND_REFERRAL:
            return self.store.get_link(job.record_id)
        if job.kind != KIND_CRM:
            return self.store.crm_link_state(job.record_id) if job.version else None
        if job.referral_hint:
            link = self.store.get_link(job.referral_hint)
            if link is not None and link.crm_id == job.record_id:
                read.known = link
                return link
        if not job.version:
            return None
        entry = read.known = self.store.crm_entry(job.record_id)
        return entry.link if entry is not None else None

    def _pair_key(self, job: Job, read: _Read, link: Link | None) -> str | None:
        """One lease per pair, named by the CRM id whenever it is known, so a Partner Center job and a CRM
        job for the same pair never run at the same time. None when the referral does not exist."""
        if job.kind in (KIND_CRM, KIND_CRM_LEAD):
            return f"crm:{job.record_id}"
        if link is not None and link.crm_id:
            return f"crm:{link.crm_id}"
        read.referral = self.pairing.read_referral(job.record_id)
        if read.referral is None:
            return None
        if read.related and is_microsoft_referral(read.referral):
            # The event named Microsoft's referral: the pair is the partner's referral on the same engagement.
            read.engagement, partner = self.microsoft_side.partner_of(read.referral)
            if partner is not None and partner.id:
                read.referral, read.record_id = partner, partner.id
                link = self.store.get_link(partner.id)
                if link is not None and link.crm_id:
                    return f"crm:{link.crm_id}"
        external = read.referral.external_reference_id
        return f"crm:{external}" if external else f"referral:{read.record_id or job.record_id}"

    def _referral_job(self, referral_id: str, read: _Read) -> Outcome:
        if read.referral is None:
            read.referral = self.pairing.read_referral(referral_id)
            if read.referral is None:
                return self.recorder.note("skipped", PC_TO_CRM, REFERRAL_NOT_FOUND, referral_id=referral_id)
        if self.leads.takes(read.referral, read.link):
            if read.lease is not None:
                read.lease.release_with_last_save = False
            return self.leads.for_referral(read.referral, read.link)
        # The link read before the lease, unless the event named Microsoft's referral (its partner's link is read now).
        known = read.link if read.record_id is None else UNREAD
        decision = self.pairing.for_referral(referral_id, read.referral, guarded_create=True, link=known)
        outcome = self._carry_out(decision)
        return self.microsoft_side.bring_in(read.referral, outcome, read.engagement) if read.related else outcome

    def _crm_job(self, crm_id: str, read: _Read) -> Outcome:
        return self._carry_out(self.pairing.for_opportunity(crm_id, read.known))

    def _lead_job(self, lead_id: str, read: _Read) -> Outcome:
        return self.leads.for_lead(lead_id)

    # -- carrying out what pairing decided ---------------------------------------------------------------
    def _carry_out(self, decision: Decision) -> Outcome:
        if isinstance(decision, Settled):
            d = decision
            return self.recorder.note(d.action, d.direction, d.message, d.crm_id, d.referral_id)
        if isinstance(decision, RefusedReferral):
            pair = decision.pair
            return self.recorder.fail_pc_side(pair, self.pairing.safe_find(pair.link, pair.referral), decision.reasons)
        if isinstance(decision, RefusedOpportunity):
            return self.recorder.fail_crm_side(decision.record, decision.link, decision.reasons)
        if isinstance(decision, NewReferral):
            return self.referrals.carry_out(decision)
        return self._reconcile(decision.pair, decision.direction)

    def _reconcile(self, pair: Pair, direction: str) -> Outcome:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                if pair.record is None:
                    return self.opportunities.carry_out(pair)
                return self.merging.carry_out(self.merging.plan(pair), direction)
            except PreconditionFailed:
                log.info("a record changed while we wrote it; re-reading both sides")
                pair = self.pairing.reread(pair)
            except StorageRejected as exc:
                # Our bookkeeping was refused after the sides were written: fail from fresh reads, so the
                # failure neither writes the refused values again nor marks the record with a stale etag.
                return self._fail(self.pairing.reread(pair), direction, [str(exc)])
            except SetupIncomplete:
                raise  # a column setup-crm adds is missing: the job waits for the fix (job_runner), nothing failed
            except ValidationFailed as exc:
                return self._fail(pair, direction, exc.reasons)
            except PermanentError as exc:
                return self._fail(pair, direction, [str(exc)])
        raise TransientError("sync", "the records kept changing while they were written")

    def _fail(self, pair: Pair, direction: str, reasons: list[str]) -> Outcome:
        if direction == CRM_TO_PC and pair.record is not None:
            return self.recorder.fail_crm_side(pair.record, pair.link, reasons)
        return self.recorder.fail_pc_side(pair, self.pairing.safe_find(pair.link, pair.referral), reasons)

    def _record_final_failure(self, job: Job, read: _Read, exc: Exception) -> None:
        message = f"Gave up after repeated transient errors; the job goes to the poison queue: {exc}"
        record: Opportunity | None = None
        try:
            if job.kind == KIND_CRM:
                record = self.pairing.safe_get(job.record_id)
            elif read.referral is not None:
                record = self.pairing.find_record(self.store.get_link(job.record_id), read.referral)
        except ExternalServiceError:
            record = None  # the CRM itself is what keeps failing
        self.recorder.mark_failure(record, message)
        crm_id = record.crm_id if record else None
        self.recorder.audit(Outcome("failed", job.record_id, job.direction, crm_id, message=message))
