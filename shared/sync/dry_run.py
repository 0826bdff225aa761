"""What a job for one record would do, and what each side would receive, without doing it.

It reads both sides and decides exactly as the engine does (:mod:`.pairing`, :meth:`.merging.Merging.plan`),
then stops: no write to Partner Center or the CRM, no link, state or audit row, no lease.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..domain.opportunity import Opportunity
from ..ports import CRM_TO_PC, PC_TO_CRM, Clock
from .leads import LeadSync
from .merging import Merging
from .opportunity_creation import OpportunityCreation
from .pairing import (
    REFERRAL_NOT_FOUND,
    Decision,
    NewReferral,
    Pairing,
    RefusedOpportunity,
    RefusedReferral,
    Settled,
    synchronised_here,
)
from .recording import REFUSED_BY_CRM, REFUSED_BY_PARTNER_CENTER
from .referral_creation import ReferralCreation


@dataclass(frozen=True)
class Preview:
    """``to_crm`` and ``to_pc`` map each field a side would receive to its value (JSON-ready). A first sync
    names instead what would be created: ``new_opportunity`` in the CRM, or a referral in Partner Center made
    from ``referral_source`` (and the CRM record then gets the referral's id, link and a success mark)."""

    direction: str
    action: str  # skipped | unchanged | refused | create-opportunity | create-referral | create-lead | merge | detach
    message: str
    referral_id: str | None = None
    crm_id: str | None = None
    to_crm: dict[str, Any] = field(default_factory=dict)
    to_pc: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    new_opportunity: Opportunity | None = None
    referral_source: Opportunity | None = None


class DryRun:
    def __init__(
        self,
        pairing: Pairing,
        merging: Merging,
        opportunities: OpportunityCreation,
        referrals: ReferralCreation,
        clock: Clock,
        leads: LeadSync | None = None,
    ) -> None:
        self.pairing, self.merging, self.clock = pairing, merging, clock
        self.opportunities, self.referrals, self.leads = opportunities, referrals, leads

    def referral(self, referral_id: str) -> Preview:
        referral = self.pairing.read_referral(referral_id)
        if referral is None:
            return Preview(PC_TO_CRM, "skipped", REFERRAL_NOT_FOUND, referral_id=referral_id)
        if self.leads is not None:
            link = self.pairing.store.get_link(referral_id)
            if self.leads.takes(referral, link):
                if link is None:
                    return Preview(PC_TO_CRM, "create-lead", "a lead would be created in the CRM", referral_id)
                action, message = self.leads.preview(referral, link)
                return Preview(PC_TO_CRM, action, message, referral_id, link.crm_id)
        return self._preview(self.pairing.for_referral(referral_id, referral))

    def opportunity(self, crm_id: str) -> Preview:
        return self._preview(self.pairing.for_opportunity(crm_id))

    def _preview(self, decision: Decision) -> Preview:
        if isinstance(decision, Settled):
            d = decision
            return Preview(d.direction, d.action, d.message, d.referral_id, d.crm_id)
        if isinstance(decision, RefusedReferral):
            referral_id = decision.pair.referral.id
            crm_id = decision.pair.link.crm_id if decision.pair.link else None
            return Preview(PC_TO_CRM, "refused", REFUSED_BY_CRM + " ".join(decision.reasons), referral_id, crm_id)
        if isinstance(decision, RefusedOpportunity):
            record, link = decision.record, decision.link
            message = REFUSED_BY_PARTNER_CENTER + " ".join(decision.reasons)
            return Preview(CRM_TO_PC, "refused", message, link.referral_id if link else None, record.crm_id)
        if isinstance(decision, NewReferral):
            source = self.referrals.outgoing(decision.record)
            message = "a co-sell referral would be created in Partner Center" + (
                ", with Microsoft's referral asking for its help" if source.help_code else ""
            )
            return Preview(CRM_TO_PC, "create-referral", message, crm_id=source.crm_id, referral_source=source)
        pair, direction = decision.pair, decision.direction
        referral_id = pair.referral.id
        if pair.record is None and synchronised_here(pair.link, self.opportunities.crm.provider):
            crm_id = pair.link.crm_id if pair.link else None
            message = "the opportunity was deleted in the CRM: the pair would be detached, nothing created"
            return Preview(direction, "detach", message, referral_id, crm_id)
        if pair.record is None:
            created = self.opportunities.new_opportunity(pair, self.clock.now())
            message = "an opportunity would be created in the CRM"
            return Preview(direction, "create-opportunity", message, referral_id, new_opportunity=created)
        merge = self.merging.plan(pair)
        crm_id = merge.record.crm_id
        if merge.problems:
            return Preview(
                direction, "refused", REFUSED_BY_PARTNER_CENTER + " ".join(merge.problems), referral_id, crm_id
            )
        update = self.merging.crm_update(merge, self.clock.now())
        to_crm = update.target.model_dump(mode="json", include=set(update.fields)) if update else {}
        to_pc = merge.record.model_dump(mode="json", include=set(merge.plan.to_pc))
        action = "merge" if merge.plan.changed else "unchanged"
        message = merge.plan.summary() if update is not None else "both sides already match"
        if merge.upgrade:
            message += "; Microsoft's referral would be added to the engagement unless it exists"
        return Preview(direction, action, message, referral_id, crm_id, to_crm, to_pc, list(merge.plan.notes))
