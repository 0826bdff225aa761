"""CRM -> Partner Center, first sync: the co-sell referral made from a flagged opportunity, exactly once, and
the referral's id and link written back to the opportunity.

Partner Center's documented co-sell pattern is two referrals on one engagement: the partner's Shared
referral targeted at its solution and, when Microsoft's help is requested, a referral for Microsoft.
Each is looked up by a key chosen for that purpose before it is created, and looked up again by the
same key when the answer to its create is lost (the create may have taken effect): the partner's
referral by its external reference (the CRM id, Microsoft's copies excluded) and Microsoft's by the
engagement and Microsoft's target. A create is sent a second time only when nothing is found.

What the partner's referral is made with is recorded before it is looked up and created (a create intent, in the
opportunity's CRM index entry, which keeps its create failure too; written on condition that no link was made for
the opportunity since the job read the entry). A job that dies after the create and before it records the pair leaves
only that record of what was sent: the job that finds the referral again takes it as what both sides agreed on,
and merges, so that an edit made on either side in between is sent to the other one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..domain.audit_text import audit_line, prepend
from ..domain.bounded import encode_agreed
from ..domain.errors import PreconditionFailed, StorageRejected
from ..domain.mapping import fingerprint, mapped_values
from ..domain.opportunity import Opportunity
from ..domain.policies import only_what_travels
from ..domain.referral import Referral
from ..domain.referral_rules import is_microsoft_copy, referral_as_made, referral_created_from
from ..ports import CRM_TO_PC, Clock, CreateIntent, Crm, Link, PartnerCenter, SyncStore
from .options import EngineOptions
from .pairing import NewReferral, Pair, Pairing
from .recording import Outcome, Recorder

log = logging.getLogger(__name__)

WRITE_BACK = ["referral_id", "referral_link", "name", "audit"]
# The create intent shares its row with a create failure's reason; a longer text is kept as its digest, which is
# all a merge needs to tell whether a side changed it.
INTENT_MAX_UNITS = 4_000


@dataclass(frozen=True)
class CreatedReferral:
    referral: Referral
    microsoft_referral_id: str | None
    reused: bool
    microsoft_made: Referral | None = None  # the referral for Microsoft, when this job made it


def remember_microsoft_copy(link: Link | None, made: Referral | None) -> None:
    """Record the referral for Microsoft a job made with the pair's link (the store gives it a row of its own),
    so that the event its creation raises ends as an echo instead of reading it back."""
    if link is not None and made is not None and made.id:
        link.microsoft_copy_id, link.microsoft_copy_updated_at = made.id, made.updated_date_time


class ReferralCreator:
    def __init__(self, pc: PartnerCenter) -> None:
        self.pc = pc

    def ensure(self, record: Opportunity) -> CreatedReferral:
        """The partner's referral for ``record``, created unless it exists."""
        crm_id = record.crm_id
        assert crm_id is not None
        existing = self.partner_referral(crm_id)
        referral = existing or self.pc.create(record, find=lambda: self.partner_referral(crm_id))
        microsoft_id, made = None, None
        if record.help_code:
            # An engagement this job has just made holds no referral for Microsoft yet: no need to look.
            microsoft_id, made = self.ensure_microsoft_referral(referral, record, look_first=existing is not None)
        return CreatedReferral(referral, microsoft_id, existing is not None, made)

    def partner_referral(self, crm_id: str) -> Referral | None:
        """The partner's own referral for a CRM opportunity; a Microsoft copy with the same reference is not it."""
        return next((r for r in self.pc.by_external_reference(crm_id) if not is_microsoft_copy(r.target)), None)

    def microsoft_referral(self, engagement_id: str) -> Referral | None:
        """The referral for Microsoft on an engagement."""
        return next((r for r in self.pc.by_engagement(engagement_id) if is_microsoft_copy(r.target)), None)

    def ensure_microsoft_referral(
        self, referral: Referral, record: Opportunity, look_first: bool = True
    ) -> tuple[str | None, Referral | None]:
        """The id of Microsoft's referral on the partner referral's engagement, created unless it exists already,
        and the referral when this call made it."""
        engagement_id = referral.engagement_id
        if not engagement_id:
            return None, None
        existing = self.microsoft_referral(engagement_id) if look_first else None
        if existing is not None:
            return existing.id, None
        made = self.pc.create_for_microsoft(record, engagement_id, find=lambda: self.microsoft_referral(engagement_id))
        return made.id, made


class ReferralCreation:
    """``reconcile`` merges a pair from fresh reads: what a seller's edit during the write-back calls for."""

    def __init__(
        self,
        crm: Crm,
        store: SyncStore,
        pairing: Pairing,
        recorder: Recorder,
        creator: ReferralCreator,
        options: EngineOptions,
        clock: Clock,
        reconcile: Callable[[Pair, str], Outcome],
    ) -> None:
        self.crm, self.store, self.pairing, self.recorder, self.creator = crm, store, pairing, recorder, creator
        self.options, self.clock, self.reconcile = options, clock, reconcile

    def outgoing(self, record: Opportunity) -> Opportunity:
        """What the referral is made from: fields the mapping never sends to Partner Center go out empty."""
        return only_what_travels(record, self.options.field_directions, "pc")

    def carry_out(self, new: NewReferral) -> Outcome:
        record = new.record
        assert record.crm_id is not None
        outgoing = self.outgoing(record)
        intent = CreateIntent(encode_agreed(self._sent_values(outgoing), INTENT_MAX_UNITS))
        # Recorded before anything is looked up or created, on condition that the record's index entry is as the job
        # read it (no link made for it meanwhile), and with the job's lease: if this write fails, nothing is made and
        # the job is retried; if the job dies after the create, the next one finds the referral and this intent.
        self.store.save_create_intent(record.crm_id, intent, new.entry)
        created = self.creator.ensure(outgoing)
        pair = self.pairing.pair(created.referral)
        referral = pair.referral
        assert referral.id is not None
        text = "Co-sell referral created in Partner Center" + (
            " with a request for Microsoft's help" if created.microsoft_referral_id else ""
        )
        audit = prepend(record.audit, audit_line(self.clock.now(), True, text), self.options.audit_max_chars)
        target = record.model_copy(
            update={
                "referral_id": referral.id,
                "referral_link": pair.mapped.referral_link,
                "name": self.recorder.marked(record.name, True),
                "audit": audit,
            }
        )
        recovered = new.intent if created.reused else None
        if recovered is not None:
            agreed, pc_fingerprint = self._agreed_as_intended(recovered, pair), pair.pc_fingerprint
        else:
            agreed, pc_fingerprint = self._agreed_on_create(outgoing, pair)
        # The pair is recorded once, after the write-back. Until then the intent is what a job dying after the
        # create leaves, whether the write-back landed or not (pairing takes it as what both sides agreed on).
        link = self._unsaved_link(referral, record.crm_id, agreed, pc_fingerprint, created)
        try:
            written = self.crm.update_opportunity(record, target, WRITE_BACK)
        except PreconditionFailed:
            log.info("opportunity %s changed during the write-back; merging from fresh reads", record.crm_id)
            fresh = self.pairing.safe_get(record.crm_id)
            if fresh is None:
                raise
            # Both sides fresh: Partner Center may have been edited since the create too, and a merge with the
            # referral as made would take such an edit for the value it carried (see resolve_pending).
            current = self.pairing.read_referral(referral.id) or referral
            return self.reconcile(self.pairing.pair(current, fresh, link), CRM_TO_PC)
        if recovered is not None:
            # Either side may have been edited since the create: the merge from what was sent tells which. Its
            # save of the link replaces the intent.
            self.recorder.audit(Outcome("created", referral.id, CRM_TO_PC, record.crm_id, referral.id, ("all",), text))
            return self.reconcile(pair.with_record(written, link), CRM_TO_PC)
        crm_fingerprint = self.recorder.written_fingerprint(target)
        try:
            # Writes the record's index entry afresh in the same request: the intent and any earlier create
            # failure go with it, and the lease with ``last``.
            self.recorder.save_link(link, referral, pc_fingerprint, written, agreed, crm_fingerprint, last=True)
        except StorageRejected as exc:
            # The CRM knows the referral's id now; the pair stays linked by a small row without the refused values,
            # so the failure is recorded once, not again on every poll.
            small = Link(referral_id=referral.id, crm_id=record.crm_id, crm_provider=self.crm.provider)
            small.pc_fingerprint, small.pc_etag = pair.pc_fingerprint, referral.e_tag
            return self.recorder.fail_crm_side(written, small, [str(exc)])
        return self.recorder.audit(
            Outcome("created", referral.id, CRM_TO_PC, record.crm_id, referral.id, ("all",), text)
        )

    def _unsaved_link(
        self, referral: Referral, crm_id: str, agreed: dict[str, object], pc_fingerprint: str, created: CreatedReferral
    ) -> Link:
        """The pair's link as a merge after the write-back would take it: what both sides agreed on is what the
        referral was made with. A reused referral may have its row already (0.16 recorded the pair before the
        write-back)."""
        assert referral.id is not None
        existing = self.store.get_link(referral.id) if created.reused else None
        link = existing or Link(referral_id=referral.id)
        link.crm_id, link.crm_provider = crm_id, self.crm.provider
        link.last_values, link.pc_fingerprint = encode_agreed(agreed), pc_fingerprint
        remember_microsoft_copy(link, created.microsoft_made)
        return link

    def _sent_values(self, record: Opportunity) -> dict[str, object]:
        """The values a referral made from ``record`` holds, read as Partner Center reads them, in the CRM's
        stored form; Partner Center's own id and link are not known before the create."""
        return mapped_values(self.crm.stored_form(self.pairing.map(referral_as_made(record))))

    def _agreed_as_intended(self, intent: CreateIntent, pair: Pair) -> dict[str, object]:
        """The recorded intent with the id and link of the referral it made, which no one edits."""
        found = mapped_values(self.crm.stored_form(pair.mapped))
        own = {name: found[name] for name in ("referral_id", "referral_link")}
        return json.loads(intent.agreed) | own

    def _agreed_on_create(self, record: Opportunity, pair: Pair) -> tuple[dict[str, object], str]:
        """What both sides held when the referral was made: the values we sent, read as Partner Center reads
        them, plus what only Partner Center sets (its id, link and status). Not the referral as found now:
        when the create's answer was lost, the lookup may find it already edited in Partner Center, and that
        edit must still reach the CRM instead of being taken as agreed."""
        sent = self.pairing.map(referral_created_from(record))
        own = {name: getattr(pair.mapped, name) for name in ("status", "substatus", "referral_id", "referral_link")}
        created = sent.model_copy(update=own)
        return mapped_values(self.crm.stored_form(created)), fingerprint(created)
