"""Partner Center leads as CRM leads (``SYNC_COSELL_ONLY=false``).

A lead referral becomes a CRM lead, not an opportunity: the pipeline holds only what a seller has qualified. The link
row names the lead (``crm_kind`` lead). What the seller then does travels to the referral:

- qualifying the lead accepts the referral (Active/Accepted);
- disqualifying it declines the referral (Closed/Declined, or Closed/Lost once accepted) with the reason the
  mapping's ``[lead.disqualified]`` table gives for the lead's status;
- converting it (Dynamics 365 QualifyLead, Salesforce Convert) makes an opportunity: the link moves to it, the
  opportunity gets the referral id, link and the sync flag, and from then on it is an ordinary pair, so its edits
  update the same referral and no second one is made.

Changes Partner Center makes to a lead referral after the lead exists reach the open lead with the two-sided rules
of opportunities (:func:`~shared.domain.leads.plan_lead_update`): a field Partner Center changed is written unless
the seller changed it too and the CRM owns it; a referral Partner Center closed (expired, declined, lost)
disqualifies the lead. The link's base values hold what Partner Center had at the last sync, so each change is
written once and a repeated or echoed event writes nothing. The lead gets the ``INBOUND_OWNER`` owner on create.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import cached_property

from ..domain.audit_text import audit_line, prepend
from ..domain.bounded import encode_agreed
from ..domain.classification import classify
from ..domain.deletions import LINK_DETACHED
from ..domain.errors import NotFound, PermanentError, PreconditionFailed, TransientError, ValidationFailed
from ..domain.leads import (
    REFERRAL_STATE,
    Lead,
    LeadOutcome,
    LeadPlan,
    conversion_base,
    lead_base,
    lead_from_referral,
    lead_values,
    plan_lead_update,
    referral_move,
)
from ..domain.mapping import fingerprint, mapped_values
from ..domain.opportunity import Opportunity
from ..domain.policies import is_closed
from ..domain.referral import Referral
from ..domain.referral_rules import is_microsoft_copy
from ..ports import (
    CRM_TO_PC,
    LINK_KIND_LEAD,
    PC_TO_CRM,
    Clock,
    Crm,
    LeadRecords,
    Link,
    PartnerCenter,
    SyncStore,
)
from .options import EngineOptions
from .pairing import REFERRAL_NOT_FOUND, Pair, Pairing
from .recording import Outcome, Recorder

log = logging.getLogger(__name__)

LEAD_CREATED = "lead created in the CRM (a Partner Center lead; SYNC_COSELL_ONLY is off)"
LEAD_IN_STEP = "the lead holds Partner Center's values already"
LEAD_GONE = "the lead is not found in the CRM; it is not made again"
LEAD_OPEN = "the lead is still open; nothing to send"
LEAD_NOT_OURS = "a lead the connector did not make from a Partner Center referral"
CLOSED_LEAD = "a closed Partner Center lead is not brought into the CRM"
CREATE_REFUSED = "The CRM refused the lead; retried with the referral's next change:"
MAX_CONFLICT_RETRIES = 3
ALREADY_MOVED = "the lead was converted; its opportunity carries the pair"
CONVERSION_FIELDS = ("referral_id", "referral_link", "sync_enabled")
Reconcile = Callable[[Pair, str], Outcome]


def is_lead_link(link: Link | None) -> bool:
    return link is not None and link.crm_kind == LINK_KIND_LEAD


class LeadSync:
    def __init__(
        self,
        pc: PartnerCenter,
        crm: Crm,
        store: SyncStore,
        pairing: Pairing,
        recorder: Recorder,
        options: EngineOptions,
        clock: Clock,
        reconcile: Reconcile,
    ) -> None:
        """``reconcile`` merges a pair (the engine's); a converted lead's opportunity is merged with the referral
        in the job that moves the link to it."""
        self.pc, self.crm, self.store, self.pairing, self.recorder = pc, crm, store, pairing, recorder
        self.options, self.clock, self.reconcile = options, clock, reconcile

    @cached_property
    def leads(self) -> LeadRecords:
        return self.crm.lead_records()

    # -- a referral changed --------------------------------------------------------------------------------------
    def takes(self, referral: Referral, link: Link | None) -> bool:
        """Whether the referral's job is a lead's: its link names a lead, or it is a lead with no link yet and
        leads are synchronised. A lead made into an opportunity before this version keeps its opportunity."""
        if link is not None:
            return is_lead_link(link)
        return (
            not self.options.sync_cosell_only and classify(referral).is_lead and not is_microsoft_copy(referral.target)
        )

    def for_referral(self, referral: Referral, link: Link | None) -> Outcome:
        assert referral.id is not None
        if link is not None:
            if link.last_status == LINK_DETACHED:
                return self.recorder.note(LINK_DETACHED, PC_TO_CRM, LINK_DETACHED, link.crm_id, referral.id)
            return self._update_lead(referral, link)
        if is_closed(referral.status):
            return self.recorder.note("skipped", PC_TO_CRM, CLOSED_LEAD, referral_id=referral.id)
        mapped = self.pairing.map(referral)
        new_lead = lead_from_referral(mapped)
        # Routed as an opportunity would be (INBOUND_OWNER), on create only: a seller's reassignment sticks.
        rule = self.options.inbound_routing.rule_for(mapped)
        try:
            created = self.leads.create_lead(new_lead, rule.owner if rule is not None else None)
        except (PermanentError, ValidationFailed) as exc:
            reasons = exc.reasons if isinstance(exc, ValidationFailed) else [str(exc)]
            message = f"{CREATE_REFUSED} {' '.join(reasons)}"
            return self.recorder.audit(Outcome("failed", referral.id, PC_TO_CRM, None, referral.id, (), message))
        link = Link(referral.id)
        link.last_values = encode_agreed(self._base(referral, new_lead))
        self._record(link, referral, created, fingerprint(mapped))
        message = f"{classify(referral).value}: {LEAD_CREATED}"
        if rule is not None:
            message += f"; routed to {rule.owner} by INBOUND_OWNER rule '{rule.text}'"
        return self.recorder.audit(
            Outcome("created", referral.id, PC_TO_CRM, created.crm_id, referral.id, ("all",), message, LINK_KIND_LEAD)
        )

    def _base(self, referral: Referral, pc_lead: Lead) -> dict[str, object]:
        """What Partner Center holds, as the lead stores it: the next job's base."""
        return lead_base(lead_values(self.leads.stored_lead(pc_lead)), referral.status, referral.substatus)

    def _update_lead(self, referral: Referral, link: Link) -> Outcome:
        """Partner Center's changes since the last sync, written to the lead as :func:`plan_lead_update` decides,
        conditioned on the lead as read; a lead a seller changed meanwhile is read again and the plan made anew."""
        assert referral.id is not None and link.crm_id is not None
        mapped = self.pairing.map(referral)
        pc_lead = lead_from_referral(mapped)
        base = self._base(referral, pc_lead)
        for _ in range(MAX_CONFLICT_RETRIES):
            planned = self._plan(referral, link, base)
            if planned is None:
                return self.recorder.note("unchanged", PC_TO_CRM, LEAD_GONE, link.crm_id, referral.id)
            lead, plan = planned
            if not plan.writes:
                break
            try:
                lead = self.leads.update_lead(lead, pc_lead, plan.fields, plan.state)
            except PreconditionFailed:
                log.info("lead %s changed while Partner Center's changes were written; reading it again", lead.crm_id)
                continue
            break
        else:
            raise TransientError("sync", f"lead {link.crm_id} kept changing while Partner Center's changes were sent")
        new_values = encode_agreed(base)
        if not plan.writes:
            # Only a version we wrote is an echo: the lead as read may hold a seller's change its own job must see.
            lead = lead.model_copy(update={"etag": link.crm_etag})
        if not (plan.writes or plan.notes):
            if new_values != link.last_values:
                link.last_values = new_values
                self._record(link, referral, lead, fingerprint(mapped))
            return self.recorder.note("unchanged", PC_TO_CRM, LEAD_IN_STEP, link.crm_id, referral.id)
        link.last_values = new_values
        self._record(link, referral, lead, fingerprint(mapped))
        return self.recorder.audit(
            Outcome(
                "updated" if plan.writes else "unchanged",
                referral.id,
                PC_TO_CRM,
                lead.crm_id,
                referral.id,
                tuple([*plan.fields, *(["status"] if plan.state else [])]),
                _lead_summary(plan, referral),
                LINK_KIND_LEAD,
            )
        )

    def preview(self, referral: Referral, link: Link) -> tuple[str, str]:
        """(action, message) a job for ``referral`` would take on its lead, writing nothing."""
        if link.last_status == LINK_DETACHED or link.crm_id is None:
            return "unchanged", LINK_DETACHED
        planned = self._plan(referral, link, self._base(referral, lead_from_referral(self.pairing.map(referral))))
        if planned is None:
            return "unchanged", LEAD_GONE
        plan = planned[1]
        if not (plan.writes or plan.notes):
            return "unchanged", LEAD_IN_STEP
        return ("update-lead" if plan.writes else "unchanged"), _lead_summary(plan, referral)

    def _plan(self, referral: Referral, link: Link, base: dict[str, object]) -> tuple[Lead, LeadPlan] | None:
        """The lead as it is now and what Partner Center's changes since the link's base do to it (None: the lead
        is gone)."""
        assert link.crm_id is not None
        lead = self.leads.get_lead(link.crm_id)
        if lead is None:
            return None
        outcome, _reason = self.options.lead_rules.outcome(lead.state)
        plan = plan_lead_update(
            base,
            lead_values(lead),
            json.loads(link.last_values) if link.last_values else None,
            self.options.field_owners,
            (referral.status, referral.substatus),
            outcome,
            self.options.lead_rules,
            self.options.field_directions,
        )
        return lead, plan

    # -- a lead changed -----------------------------------------------------------------------------------------------
    def for_lead(self, lead_id: str) -> Outcome:
        lead = self.leads.get_lead(lead_id)
        if lead is None:
            return self.recorder.note("skipped", CRM_TO_PC, "lead not found in the CRM", lead_id)
        link = self.store.find_link_by_crm_id(lead_id)
        if link is None and lead.referral_id:
            link = self.store.get_link(lead.referral_id)
        if link is None:
            return self.recorder.note("skipped", CRM_TO_PC, LEAD_NOT_OURS, lead_id)
        if link.last_status == LINK_DETACHED:
            return self.recorder.note(LINK_DETACHED, CRM_TO_PC, LINK_DETACHED, lead_id, link.referral_id)
        if not is_lead_link(link) and link.crm_id != lead.converted_opportunity_id:
            return self.recorder.note("skipped", CRM_TO_PC, LEAD_NOT_OURS, lead_id, link.referral_id)
        outcome, reason = self.options.lead_rules.outcome(lead.state)
        if outcome is LeadOutcome.OPEN:
            return self.recorder.note("unchanged", CRM_TO_PC, LEAD_OPEN, lead_id, link.referral_id)
        try:
            referral, move = self._move_referral(link.referral_id, outcome, reason)
        except NotFound:
            return self.recorder.note("skipped", CRM_TO_PC, REFERRAL_NOT_FOUND, lead_id, link.referral_id)
        except PermanentError as exc:
            message = f"lead {outcome.value}, but Partner Center refused the referral's change: {exc}"
            return self.recorder.audit(
                Outcome("failed", link.referral_id, CRM_TO_PC, lead_id, link.referral_id, (), message, LINK_KIND_LEAD)
            )
        if outcome is LeadOutcome.QUALIFIED and lead.converted_opportunity_id:
            return self._follow_conversion(link, referral, lead, move)
        if move is None:
            return self.recorder.note("unchanged", CRM_TO_PC, f"lead {outcome.value}; the referral is there already")
        if link.last_values:
            # The referral's new status is ours: its echo is no change of Partner Center's. The fields keep their
            # base, so a change Partner Center made meanwhile still reaches the lead.
            moved = json.loads(link.last_values) | {REFERRAL_STATE: f"{referral.status}/{referral.substatus}"}
            link.last_values = encode_agreed(moved)
        self._record(link, referral, lead, fingerprint(self.pairing.map(referral)))
        return self.recorder.audit(
            Outcome(
                "updated",
                link.referral_id,
                CRM_TO_PC,
                lead_id,
                link.referral_id,
                ("status",),
                _moved(outcome, move),
                crm_kind=LINK_KIND_LEAD,
            )
        )

    def _move_referral(
        self, referral_id: str, outcome: LeadOutcome, reason: str | None
    ) -> tuple[Referral, tuple[str, str, str | None] | None]:
        """The referral after the move the lead's outcome asks for (None: none needed), written conditioned on its
        eTag; a referral changed meanwhile is read again and the move decided anew."""
        for _ in range(MAX_CONFLICT_RETRIES):
            referral = self.pc.get(referral_id)
            move = referral_move(outcome, reason, referral.status, referral.substatus)
            if move is None:
                return referral, None
            status, substatus, status_reason = move
            sent = Opportunity(status=status, substatus=substatus, status_reason=status_reason)
            fields = ["status", "substatus", *(["status_reason"] if status_reason else [])]
            try:
                return self.pc.update(referral, sent, fields), move
            except PreconditionFailed:
                log.info("referral %s changed while the lead's outcome was written; reading it again", referral_id)
        raise TransientError("sync", f"referral {referral_id} kept changing while the lead's outcome was written")

    def _follow_conversion(
        self, link: Link, referral: Referral, lead: Lead, move: tuple[str, str, str | None] | None
    ) -> Outcome:
        """The link moves to the opportunity the conversion made, which gets the referral id, link and sync flag, so
        that the CRM poll sees its edits and they update this referral. Recorded before the opportunity is written:
        a job dying in between finds the pair on the opportunity, and the next lead job writes it again."""
        assert lead.converted_opportunity_id is not None and referral.id is not None
        opportunity = self.crm.get_opportunity(lead.converted_opportunity_id)
        if opportunity is None:
            message = f"the lead's opportunity {lead.converted_opportunity_id} is not found; the pair stays on the lead"
            return self.recorder.note("skipped", CRM_TO_PC, message, lead.crm_id, referral.id)
        pair = self.pairing.pair(referral)
        wanted = {"referral_id": referral.id, "referral_link": pair.mapped.referral_link, "sync_enabled": True}
        desired = opportunity.model_copy(update=wanted)
        moving = is_lead_link(link)
        if moving:
            base = conversion_base(mapped_values(self.crm.stored_form(pair.mapped)), mapped_values(desired))
            link.crm_kind, link.crm_id, link.crm_etag, link.crm_fingerprint = None, opportunity.crm_id, None, None
            link.last_values = encode_agreed(base)
            self.recorder.record_link(link, referral, pair.pc_fingerprint, None, "pending")
        fields = [name for name in CONVERSION_FIELDS if getattr(opportunity, name) != wanted[name]]
        if not (fields or moving):
            # Moved and written by an earlier job: the opportunity's own jobs carry the pair.
            return self.recorder.note("unchanged", CRM_TO_PC, ALREADY_MOVED, opportunity.crm_id, referral.id)
        line = f"Converted from lead {lead.crm_id}: linked to Partner Center referral {referral.id}"
        audit = prepend(opportunity.audit, audit_line(self.clock.now(), True, line), self.options.audit_max_chars)
        desired = desired.model_copy(update={"audit": audit})
        opportunity = self.crm.update_opportunity(opportunity, desired, [*fields, "audit"])
        if moving:
            message = f"lead {lead.crm_id} converted: the pair moves to opportunity {opportunity.crm_id}"
            if move is not None:
                message += f"; {_moved(LeadOutcome.QUALIFIED, move)}"
            self.recorder.audit(
                Outcome("updated", referral.id, CRM_TO_PC, opportunity.crm_id, referral.id, ("crm_id",), message)
            )
        return self.reconcile(self.pairing.pair(referral, opportunity, self.store.get_link(referral.id)), CRM_TO_PC)

    def _record(self, link: Link, referral: Referral, lead: Lead, pc_fingerprint: str) -> None:
        link.crm_id, link.crm_kind, link.crm_etag = lead.crm_id, LINK_KIND_LEAD, lead.etag
        self.recorder.record_link(link, referral, pc_fingerprint, None, "ok")


def _lead_summary(plan: LeadPlan, referral: Referral) -> str:
    parts = [f"Updated from Partner Center: {', '.join(plan.fields)}"] if plan.fields else []
    if plan.state:
        because = f" ({referral.status_reason})" if referral.status_reason else ""
        parts.append(
            f"lead disqualified ({plan.state}): Partner Center closed the referral as "
            f"{referral.status}/{referral.substatus}{because}"
        )
    text = "; ".join(parts) or "Lead not changed"
    return text + (" (" + "; ".join(plan.notes) + ")" if plan.notes else "")


def _moved(outcome: LeadOutcome, move: tuple[str, str, str | None]) -> str:
    status, substatus, reason = move
    because = f" ({reason})" if reason else ""
    return f"lead {outcome.value}: referral set to {status}/{substatus}{because}"
