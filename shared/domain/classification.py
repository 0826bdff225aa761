"""Lead or co-sell opportunity (reference: Partner Center referrals API introduction), and the
``SYNC_COSELL_ONLY`` rule that decides whether a referral flows from Partner Center to the CRM."""

from __future__ import annotations

from enum import StrEnum

from .referral import Referral

MICROSOFT_ORG_ID = "msft"


class ReferralCategory(StrEnum):
    MARKETPLACE_LEAD = "marketplace-lead"
    QUALIFIED_LEAD = "qualified-lead"
    COSELL_OPPORTUNITY = "co-sell-opportunity"

    @property
    def is_lead(self) -> bool:
        return self is not ReferralCategory.COSELL_OPPORTUNITY


def classify(referral: Referral) -> ReferralCategory:
    """Classify by (type, qualification, inviteContext.invitedBy.organizationId).

    Independent + Direct + (msft | none)               -> marketplace lead
    Independent + Sales/MarketingQualified + msft       -> qualified lead
    Independent | Shared + SalesQualified | None + other -> co-sell opportunity
    """
    invite = referral.invite_context
    invited_by = invite.invited_by.organization_id if invite and invite.invited_by else None
    from_microsoft = invited_by is None or invited_by.lower() == MICROSOFT_ORG_ID
    qualification = referral.qualification or "None"
    if referral.type == "Shared":
        return ReferralCategory.COSELL_OPPORTUNITY
    if qualification == "Direct" and from_microsoft:
        return ReferralCategory.MARKETPLACE_LEAD
    if qualification in ("SalesQualified", "MarketingQualified") and invited_by == MICROSOFT_ORG_ID:
        return ReferralCategory.QUALIFIED_LEAD
    if qualification == "MarketingQualified":
        return ReferralCategory.QUALIFIED_LEAD
    return ReferralCategory.COSELL_OPPORTUNITY


def should_sync_to_crm(referral: Referral, cosell_only: bool) -> bool:
    """With ``SYNC_COSELL_ONLY`` on, leads stay in Partner Center; off, they flow too."""
    return not (cosell_only and classify(referral).is_lead)
