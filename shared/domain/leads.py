"""Partner Center leads as CRM lead records (``SYNC_COSELL_ONLY=false``): what a lead is made of, what a seller's
qualification or disqualification means for the referral, and what a converted lead's opportunity and the referral
agreed on when the pair moves to that opportunity.

A lead's state is read by the adapter as one text: Dynamics 365 ``"statecode/statuscode"`` (``"2/6"``), Salesforce
the ``Status`` picklist value. The CRM's lead settings (``[lead]`` in its mapping file) say which states are
qualified and which disqualified, and why Partner Center is told a disqualified lead was declined.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .opportunity import Contact, CustomerAddress, Opportunity
from .policies import is_closed


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
    wins. Any other state is open."""

    model_config = ConfigDict(frozen=True)

    qualified: tuple[str, ...] = ()
    disqualified: Mapping[str, str] = Field(default_factory=dict)

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
