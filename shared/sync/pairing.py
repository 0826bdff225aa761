"""Finding both sides of a pair and deciding what a job has to do with them, by reading only.

A job names one record. Pairing reads it fresh, finds its link row and its counterpart, and decides: nothing
to do (skipped, or already synchronised), a refusal (the record cannot go to the other side as it is), a new
referral, or a pair to reconcile (create the opportunity, or merge both sides). Nothing here writes, so the
dry run reaches the same decisions as the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from ..domain.classification import classify, should_sync_to_crm
from ..domain.deletions import LINK_DETACHED, names_synchronised_record
from ..domain.errors import ExternalServiceError, NotFound, PermanentError
from ..domain.mapping import fingerprint, referral_to_opportunity
from ..domain.opportunity import Opportunity
from ..domain.referral import Referral
from ..domain.referral_rules import is_microsoft_copy
from ..domain.validation import problems_for_crm, problems_for_partner_center
from ..ports import (
    CRM_TO_PC,
    PC_TO_CRM,
    CreateFailure,
    CreateIntent,
    Crm,
    CrmEntry,
    Link,
    PartnerCenter,
    SyncStore,
)
from .options import EngineOptions

ALREADY_SYNCED = "mapped fields already synchronised"
REFERRAL_NOT_FOUND = "referral not found in Partner Center"
OPPORTUNITY_NOT_FOUND = "opportunity not found in the CRM"
DETACHED_PAIR = "the pair is detached (its opportunity was deleted in the CRM); nothing to do"
MICROSOFT_COPY = "Microsoft's copy of a co-sell engagement; the partner's referral carries the sync"


class Unread:
    """A link not read yet (None says there is none)."""


UNREAD = Unread()


@dataclass(frozen=True)
class Pair:
    """A referral as read, the same referral mapped to the CRM's terms (once per read), and what was found with
    it: the CRM record (None when there is none yet) and the link row."""

    referral: Referral
    mapped: Opportunity
    record: Opportunity | None = None
    link: Link | None = None

    @cached_property
    def pc_fingerprint(self) -> str:
        return fingerprint(self.mapped)

    def with_record(self, record: Opportunity | None, link: Link | None) -> Pair:
        return replace(self, record=record, link=link)


@dataclass(frozen=True)
class Settled:
    """Nothing to write: the job is skipped, or finds the pair synchronised already (the audit says which)."""

    action: str  # "skipped" | "unchanged" | "detached" (a job for a pair whose opportunity was deleted)
    direction: str
    message: str
    crm_id: str | None = None
    referral_id: str | None = None


@dataclass(frozen=True)
class RefusedReferral:
    """A referral the CRM cannot take as it is (``pair.record`` is not looked for yet)."""

    pair: Pair
    reasons: list[str]


@dataclass(frozen=True)
class RefusedOpportunity:
    """An opportunity Partner Center cannot take as it is."""

    record: Opportunity
    link: Link | None
    reasons: list[str]


@dataclass(frozen=True)
class NewReferral:
    """A flagged opportunity without a referral; ``earlier_failure`` is the refusal of an earlier version of it,
    ``intent`` what an earlier attempt recorded it was about to send (its create may have landed)."""

    record: Opportunity
    earlier_failure: CreateFailure | None
    intent: CreateIntent | None = None
    entry: CrmEntry | None = None  # the record's CRM index entry as read: the new intent is written on it


@dataclass(frozen=True)
class Reconcile:
    """Create the opportunity (``pair.record`` is None) or merge both sides."""

    pair: Pair
    direction: str


Decision = Settled | RefusedReferral | RefusedOpportunity | NewReferral | Reconcile


def synchronised_here(link: Link | None, provider: str) -> bool:
    """Whether ``link`` names an opportunity synchronised in this CRM, so that not finding it means a seller
    deleted it. A link written for another CRM (before ``CRM_PROVIDER`` changed) names nothing here."""
    if link is None or link.crm_provider not in (None, provider):
        return False
    return names_synchronised_record(link.crm_id, link.last_status)


class Pairing:
    def __init__(self, pc: PartnerCenter, crm: Crm, store: SyncStore, options: EngineOptions) -> None:
        self.pc, self.crm, self.store, self.options = pc, crm, store, options

    def map(self, referral: Referral) -> Opportunity:
        return referral_to_opportunity(referral, self.options.referral_link_template)

    def pair(self, referral: Referral, record: Opportunity | None = None, link: Link | None = None) -> Pair:
        return Pair(referral, self.map(referral), record, link)

    # -- a referral changed ----------------------------------------------------------------------------
    def read_referral(self, referral_id: str) -> Referral | None:
        try:
            return self.pc.get(referral_id)
        except NotFound:
            return None

    def for_referral(
        self, referral_id: str, referral: Referral, guarded_create: bool = False, link: Link | Unread | None = UNREAD
    ) -> Decision:
        """``guarded_create``: the caller creates through the CRM's duplicate guard (a create for a referral that
        has an opportunity fails with 412 and the caller reads it then), so a referral never paired (no link) is
        not looked up by its id first. The dry run, which creates nothing, looks. ``link``: the referral's link
        (None: it has none) when the caller read it already; the lease taken with the first write proves it
        unchanged (:mod:`.lease`)."""
        if is_microsoft_copy(referral.target):
            return Settled("skipped", PC_TO_CRM, MICROSOFT_COPY, referral_id=referral_id)
        if isinstance(link, Unread):
            link = self.store.get_link(referral_id)
        if link is not None and link.last_status == LINK_DETACHED:
            return Settled(LINK_DETACHED, PC_TO_CRM, DETACHED_PAIR, link.crm_id, referral_id)
        if link is None and not should_sync_to_crm(referral, self.options.sync_cosell_only):
            message = f"{classify(referral).value} not synchronised because SYNC_COSELL_ONLY is on"
            return Settled("skipped", PC_TO_CRM, message, referral_id=referral_id)
        pair = self.pair(referral, None, link)
        if link is not None and link.pc_fingerprint == pair.pc_fingerprint and link.last_status in ("ok", "failed"):
            return Settled("unchanged", PC_TO_CRM, ALREADY_SYNCED, link.crm_id, referral_id)
        problems = problems_for_crm(pair.mapped)
        if problems:
            return RefusedReferral(pair, problems)
        record = self.find_record(link, referral, by_referral_id=link is not None or not guarded_create)
        if link is None and record is not None:
            link = self._unrecorded_create(referral, record)
        return Reconcile(pair.with_record(record, link), PC_TO_CRM)

    def _unrecorded_create(
        self, referral: Referral, record: Opportunity, known: Link | CrmEntry | Unread | None = UNREAD
    ) -> Link | None:
        """For a referral made from ``record`` by a job that died before it recorded the pair (before or after its
        write-back), a link (not saved yet) whose agreed values are what that job recorded it was sending: both
        sides may have been edited since, and each edit must reach the other side. Only a referral whose external
        reference names the record, which has no other referral, costs the read of the record's index entry
        (``known``: the entry as the job read it already; None: it has none)."""
        crm_id = referral.external_reference_id
        if not crm_id or record.crm_id != crm_id or record.referral_id not in (None, "", referral.id):
            return None
        entry = self._entry_of(crm_id, known)
        if entry is None or entry.intent is None or referral.id is None:
            return None
        return Link(referral_id=referral.id, crm_id=crm_id, last_values=entry.intent.agreed)

    def _entry_of(self, crm_id: str, known: Link | CrmEntry | Unread | None) -> CrmEntry | None:
        """The record's CRM index entry: as the job read it already (None: it had none), or read now."""
        return known if isinstance(known, CrmEntry) or known is None else self.store.crm_entry(crm_id)

    # -- a CRM opportunity changed -----------------------------------------------------------------------
    def for_opportunity(self, crm_id: str, known: Link | CrmEntry | Unread | None = UNREAD) -> Decision:
        """``known``: what the job read first, before its lease: the pair's link row (the poll named its referral),
        or the record's CRM index entry (None: it had none). A record's index entry does not change while it stays
        linked, so only the link itself is read again, and an entry the job read is not read again."""
        record = self.safe_get(crm_id)
        if record is None:
            return self._missing_opportunity(crm_id)
        link = self._link_of(crm_id, known)
        if link is None and record.referral_id:
            link = self.store.get_link(record.referral_id)
        if link is not None and link.last_status == LINK_DETACHED:
            # Detached for good, even if the record came back (a Salesforce undelete): the pair's history ended.
            return Settled(LINK_DETACHED, CRM_TO_PC, DETACHED_PAIR, crm_id, link.referral_id)
        crm_fingerprint = fingerprint(record)
        if link is not None and link.crm_fingerprint == crm_fingerprint and link.last_status in ("ok", "failed"):
            return Settled("unchanged", CRM_TO_PC, ALREADY_SYNCED, crm_id, link.referral_id)
        if link is None and not record.referral_id:
            if not record.sync_enabled:
                return Settled("skipped", CRM_TO_PC, "'Sync with Partner Center' is not set", crm_id)
            return self._new_referral(record, crm_fingerprint, known)
        referral_id = link.referral_id if link else record.referral_id
        try:
            referral = self.pc.get(referral_id or "")
        except NotFound:
            if link is not None and link.crm_id == crm_id:
                # The pair's referral is gone: reported on the link and in the audit trail, the record left alone.
                return Settled("skipped", CRM_TO_PC, REFERRAL_NOT_FOUND, crm_id, link.referral_id)
            return RefusedOpportunity(record, link, [f"Referral {referral_id} no longer exists in Partner Center."])
        if link is None:
            link = self._unrecorded_create(referral, record, known)  # the write-back landed, the pair's record did not
        return Reconcile(self.pair(referral, record, link), CRM_TO_PC)

    def _link_of(self, crm_id: str, known: Link | CrmEntry | Unread | None) -> Link | None:
        if isinstance(known, Link) and known.crm_id == crm_id:
            return known  # the link row itself
        if known is None or (isinstance(known, CrmEntry) and known.link is None):
            return None  # no link names the record (a create intent is written on condition it still has none)
        if isinstance(known, CrmEntry) and known.link is not None:
            link = self.store.get_link(known.link.referral_id)
            if link is not None and link.crm_id == crm_id:
                return link
        return self.store.find_link_by_crm_id(crm_id)

    def _missing_opportunity(self, crm_id: str) -> Decision:
        """A job for an opportunity the CRM does not have (the poll saw it before a seller deleted it, or a
        replayed job). When it is one we synchronised, its pair goes where a referral job would take it: the
        record is looked for by the referral id too, and not found there either, the pair is detached."""
        link = self.store.find_link_by_crm_id(crm_id)
        if link is not None and link.last_status == LINK_DETACHED:
            return Settled(LINK_DETACHED, CRM_TO_PC, DETACHED_PAIR, crm_id, link.referral_id)
        if link is None or not synchronised_here(link, self.crm.provider):
            return Settled("skipped", CRM_TO_PC, OPPORTUNITY_NOT_FOUND, crm_id)
        referral = self.read_referral(link.referral_id)
        if referral is None:
            return Settled("skipped", CRM_TO_PC, REFERRAL_NOT_FOUND, crm_id, link.referral_id)
        return Reconcile(self.pair(referral, self.find_record(link, referral), link), CRM_TO_PC)

    def _new_referral(
        self, record: Opportunity, crm_fingerprint: str, known: Link | CrmEntry | Unread | None
    ) -> Decision:
        assert record.crm_id is not None
        entry = self._entry_of(record.crm_id, known)
        failure, intent = (entry.failure, entry.intent) if entry is not None else (None, None)
        if failure is not None and failure.crm_fingerprint == crm_fingerprint:
            message = "still invalid; waiting for the opportunity to change"
            return Settled("unchanged", CRM_TO_PC, message, record.crm_id)
        problems = problems_for_partner_center(record)
        if problems:
            return RefusedOpportunity(record, None, problems)
        return NewReferral(record, failure, intent, entry)

    # -- reads ---------------------------------------------------------------------------------------------
    def reread(self, pair: Pair) -> Pair:
        """Both sides and the link again, after a write found one of them changed."""
        assert pair.referral.id
        referral = self.pc.get(pair.referral.id)
        link = self.store.get_link(pair.referral.id)
        record = self.find_record(link, referral) if pair.record is None else self.safe_get(pair.record.crm_id or "")
        return self.pair(referral, record, link)

    def find_record(self, link: Link | None, referral: Referral, by_referral_id: bool = True) -> Opportunity | None:
        for crm_id in (link.crm_id if link else None, referral.external_reference_id):
            if crm_id:
                found = self.safe_get(crm_id)
                if found is not None:
                    return found
        return self.crm.find_by_referral_id(referral.id or "") if by_referral_id else None

    def safe_find(self, link: Link | None, referral: Referral) -> Opportunity | None:
        """The record, or None when the CRM cannot be read (a failure is being reported on it)."""
        try:
            return self.find_record(link, referral)
        except ExternalServiceError:
            return None

    def safe_get(self, crm_id: str) -> Opportunity | None:
        try:
            return self.crm.get_opportunity(crm_id)
        except (NotFound, PermanentError):
            return None  # an id from another system that this CRM does not recognise
