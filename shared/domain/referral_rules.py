"""What Partner Center allows and does with a co-sell referral, as far as the sync must know it.

The wire format (create bodies, JSON Patch) belongs to the Partner Center adapter; what the merge and the
engine reason about is here: which fields a partner may still change, which referral is Microsoft's copy,
and what a referral created from an opportunity holds once Partner Center has it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any

from .checkmark import strip_marks
from .classification import MICROSOFT_ORG_ID
from .current_fields import current_fields_json, purchase_intent_attributes
from .customer_fields import member, referral_address
from .opportunity import Opportunity
from .referral import (
    CustomerProfile,
    Details,
    InviteContext,
    Referral,
    ReferralStatus,
    ReferralSubstatus,
    Requirements,
    Solution,
)

# Fields Partner Center lets a partner change on an existing referral. The customer's location cannot be
# edited after creation. Asking for Microsoft's help later is an upgrade to co-sell: the request and the
# consent are patched and Microsoft's referral is added to the engagement; it cannot be withdrawn.
PATCHABLE_FIELDS = frozenset(
    {
        "help_code",
        "name",
        "deal_value",
        "currency",
        "close_date",
        "notes",
        "customer_contacts",
        "solution_ids",
        "status",
        "substatus",
        "status_reason",
        "solution_area",
        "solution_play",
        "partner_role",
        "purchase_intent",
    }
)


def is_microsoft_copy(targets: Iterable[Any]) -> bool:
    """The referral a partner creates *for Microsoft* in a co-sell engagement targets Microsoft's profile."""
    return any(
        getattr(t, "type", None) == "BusinessProfileLocation" and getattr(t, "id", None) == MICROSOFT_ORG_ID
        for t in targets
    )


def closing_date_time(value: date | None) -> str | None:
    """Partner Center's form of a closing date: midnight UTC of that day."""
    return f"{value.isoformat()}T00:00:00Z" if value else None


def referral_created_from(opportunity: Opportunity) -> Referral:
    """The partner's referral as the create body describes it, in every field the mapping reads: posted New/Pending
    (:func:`referral_as_made` is what Partner Center then holds); the id and engagement are Partner Center's own."""
    o = opportunity
    return Referral(
        name=strip_marks(o.name or ""),
        external_reference_id=o.crm_id,
        status=ReferralStatus.NEW,
        substatus=ReferralSubstatus.PENDING,
        customer_profile=CustomerProfile(
            name=o.customer_name,
            address=referral_address(o.customer_address),
            team=[member(c) for c in o.customer_contacts],
        ),
        details=Details(
            notes=o.notes,
            # The deal value travels as a JSON number: Partner Center keeps the double nearest to it.
            deal_value=Decimal(str(float(o.deal_value))) if o.deal_value is not None else None,
            currency=o.currency,
            closing_date_time=closing_date_time(o.close_date),
            requirements=Requirements(
                solutions=[Solution(id=sid) for sid in o.solution_ids],
                additional_requirements={"attributes": purchase_intent_attributes(o.purchase_intent, [])}
                if o.purchase_intent
                else None,
            ),
        ),
        invite_context=InviteContext(assistance_request_code=o.help_code) if o.help_code is not None else None,
        **current_fields_json(o),
    )


def referral_as_made(opportunity: Opportunity) -> Referral:
    """The referral Partner Center holds right after creating it from ``opportunity``: a deal a partner creates
    starts Active/Accepted, whatever status the create posts (reference: partner-center-api.md, statuses)."""
    posted = referral_created_from(opportunity)
    return posted.model_copy(update={"status": ReferralStatus.ACTIVE, "substatus": ReferralSubstatus.ACCEPTED})
