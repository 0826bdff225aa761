"""Partner Center leads as CRM lead records (``SYNC_COSELL_ONLY=false``): what a lead is made of, what a seller's
qualification or disqualification means for the referral, and what a converted lead's opportunity and the referral
agreed on when the pair moves to that opportunity.

A lead's state is read by the adapter as one text: Dynamics 365 ``"statecode/statuscode"`` (``"2/6"``), Salesforce
the ``Status`` picklist value. The CRM's lead settings (``[lead]`` in its mapping file) say which states are
qualified and which disqualified, and why Partner Center is told a disqualified lead was declined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .bounded import same_value
from .mapping import mapped_values
from .opportunity import Contact, CustomerAddress, Opportunity
from .policies import Direction, Side, is_closed, travels_to, winner


class LeadOutcome(StrEnum):
    OPEN = "open"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"


class Lead(BaseModel):
    """A CRM lead in neutral terms; ``state`` as the CRM reads it, ``converted_opportunity_id`` the opportunity the
    seller's qualification made (Dataverse ``originatingleadid``, Salesforce ``ConvertedOpportunityId``)."""

    model_config = ConfigDict(frozen=True)

    crm_id: str | None = None
    referral_id: str | None = None
    topic: str | None = None
    company: str | None = None
    address: CustomerAddress = Field(default_factory=CustomerAddress)
    contact: Contact = Field(default_factory=Contact)
    deal_value: Decimal | None = None
    notes: str | None = None
    state: str | None = None
    converted_opportunity_id: str | None = None
    etag: str | None = None
    modified_at: datetime | None = None


class LeadRules(BaseModel):
    """How lead states read: ``qualified`` lists states (or Dynamics statecodes) that mean qualified,
    ``disqualified`` maps a state (or statecode) to the ``statusReason`` a decline sends; the more specific key
    wins. Any other state is open. ``closed`` maps the substatus of a referral Partner Center closed (``Expired``,
    ``Declined``, ``Lost``, ``Won``) to the disqualified state its open lead is given; a substatus not listed leaves
    the lead open and says so in the audit trail."""

    model_config = ConfigDict(frozen=True)

    qualified: tuple[str, ...] = ()
    disqualified: Mapping[str, str] = Field(default_factory=dict)
    closed: Mapping[str, str] = Field(default_factory=dict)

    def outcome(self, state: str | None) -> tuple[LeadOutcome, str | None]:
        """The outcome of ``state`` and, for a disqualified lead, the reason Partner Center is given."""
        if not state:
            return LeadOutcome.OPEN, None
        general = state.split("/", 1)[0]
        for key in (state, general):
            if key in self.disqualified:
                return LeadOutcome.DISQUALIFIED, self.disqualified[key] or None
            if key in self.qualified:
                return LeadOutcome.QUALIFIED, None
        return LeadOutcome.OPEN, None


def lead_from_referral(mapped: Opportunity) -> Lead:
    """The lead a referral (already mapped to neutral terms) becomes: topic, company and address, the first customer
    contact, the deal value and the notes."""
    contact = mapped.customer_contacts[0] if mapped.customer_contacts else Contact()
    return Lead(
        referral_id=mapped.referral_id,
        topic=mapped.name,
        company=mapped.customer_name,
        address=mapped.customer_address,
        contact=contact,
        deal_value=mapped.deal_value,
        notes=mapped.notes,
    )


def referral_move(
    outcome: LeadOutcome, reason: str | None, status: str | None, substatus: str | None
) -> tuple[str, str, str | None] | None:
    """(status, substatus, statusReason) the referral must move to for a lead's outcome, None when it is there
    already or Partner Center allows no such move. Qualifying accepts a New referral; disqualifying declines a New
    one and loses an accepted one (Partner Center declines only before acceptance)."""
    if outcome is LeadOutcome.OPEN or is_closed(status):
        return None
    if outcome is LeadOutcome.QUALIFIED:
        return ("Active", "Accepted", None) if status == "New" else None
    if status == "New":
        return "Closed", "Declined", reason
    return "Closed", "Lost", reason


# The referral's status is the one the lead's qualification has just set: the opportunity takes it (a Salesforce
# conversion starts at the org's first stage, which reads as not accepted yet).
REFERRAL_DECIDES = frozenset({"status", "substatus", "status_reason"})


def conversion_base(pc_values: Mapping[str, object], crm_values: Mapping[str, object]) -> dict[str, object]:
    """What the converted lead's opportunity and the referral count as agreed when the pair moves to the opportunity:
    a field the opportunity leaves empty takes the referral's value, and one the seller filled in (from the lead, or
    while converting it) goes to the referral; the status is the referral's."""
    return {
        name: crm_values.get(name) if name in REFERRAL_DECIDES or _empty(crm_values.get(name)) else pc_values.get(name)
        for name in pc_values
    }


def _empty(value: object) -> bool:
    if value is None or value == "" or value == () or value == []:
        return True
    if isinstance(value, Mapping):
        return all(_empty(v) for v in value.values())
    return False


# -- Partner Center's changes to a lead that exists ------------------------------------------------------------------
# The lead's synchronised values, named as the opportunity's fields they come from, so that CONFLICT_RULES and the
# mapping's owners decide a field both sides changed as they do for opportunities.
LEAD_FIELDS: dict[str, str] = {
    "topic": "name",
    "company": "customer_name",
    "address": "customer_address",
    "contact": "customer_contacts",
    "deal_value": "deal_value",
    "notes": "notes",
}
REFERRAL_STATE = "referral_status"  # key in a lead's base values: the referral's "status/substatus" last seen


def lead_values(lead: Lead) -> dict[str, object]:
    """The lead's synchronised values in the canonical, JSON-able form opportunities are compared in (text cleaned,
    amounts normalised), keyed by the opportunity field each comes from."""
    as_opportunity = Opportunity(
        name=lead.topic,
        customer_name=lead.company,
        customer_address=lead.address,
        customer_contacts=(lead.contact,),
        deal_value=lead.deal_value,
        notes=lead.notes,
    )
    values = mapped_values(as_opportunity)
    return {name: values[name] for name in LEAD_FIELDS.values()}


def lead_base(pc_values: Mapping[str, object], status: str | None, substatus: str | None) -> dict[str, object]:
    """What a lead job records as seen in Partner Center: the referral's values as the lead stores them, and its
    status. The next job compares against it to tell Partner Center's changes from the seller's."""
    return {**pc_values, REFERRAL_STATE: f"{status}/{substatus}"}


@dataclass
class LeadPlan:
    """What a change of the referral does to its open lead: ``fields`` (lead attribute names) take Partner Center's
    values, ``state`` is the disqualified state the lead moves to (None: it keeps its own), ``notes`` say what was
    left and why."""

    fields: list[str] = field(default_factory=list)
    state: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        return bool(self.fields or self.state)


def plan_lead_update(
    pc_values: Mapping[str, object],
    crm_values: Mapping[str, object],
    base: Mapping[str, object] | None,
    owners: Mapping[str, Side],
    referral_status: tuple[str | None, str | None],
    outcome: LeadOutcome,
    rules: LeadRules,
    directions: Mapping[str, Direction] | None = None,
) -> LeadPlan:
    """Partner Center's changes since ``base`` (None: a lead made before bases were kept) for a lead whose seller
    has the last word on what Partner Center did not change.

    A field Partner Center changed goes to the lead unless the seller changed it too and the field's owner is the
    CRM; a field only the seller changed stays. A referral Partner Center closed disqualifies an open lead with the
    state ``rules.closed`` gives its substatus. A lead the seller closed (qualified or disqualified) takes nothing:
    the notes say what Partner Center changed. Each change is acted on once: the base then holds it."""
    plan = LeadPlan()
    status, substatus = referral_status
    moved = base is None or base.get(REFERRAL_STATE) != f"{status}/{substatus}"
    changed: list[str] = []
    for attribute, name in LEAD_FIELDS.items():
        if not travels_to(name, "crm", directions or {}):
            continue  # the mapping sends it to Partner Center only
        if base is not None and same_value(pc_values[name], base.get(name)):
            continue  # Partner Center did not change it: the lead keeps whatever the seller made of it
        if pc_values[name] == crm_values[name]:
            continue
        seller_changed = base is None or not same_value(crm_values[name], base.get(name))
        if seller_changed and winner(name, owners) == "crm":
            if base is not None:
                plan.notes.append(f"{name} changed on both sides; the CRM wins")
            continue
        changed.append(attribute)
    if outcome is not LeadOutcome.OPEN:
        if changed:
            plan.notes.append(f"the lead is {outcome.value} in the CRM; not written: {', '.join(changed)}")
        if moved and is_closed(status) and outcome is LeadOutcome.QUALIFIED:
            plan.notes.append(f"Partner Center closed the referral as {status}/{substatus}; the lead is left qualified")
        return plan
    plan.fields = changed
    if moved and is_closed(status):
        plan.state = rules.closed.get(str(substatus)) or None
        if plan.state is None:
            plan.notes.append(
                f"Partner Center closed the referral as {status}/{substatus}; no lead state is mapped for "
                f"{substatus} ([lead.closed]), so the lead stays open"
            )
    return plan
