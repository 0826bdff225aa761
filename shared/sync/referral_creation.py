"""Creating a co-sell referral from a CRM opportunity, exactly once.

Partner Center's documented co-sell pattern is two referrals on one engagement: the partner's Shared
referral targeted at its solution and, when Microsoft's help is requested, a referral for Microsoft.
Each is looked up by a key chosen for that purpose before it is created, and looked up again by the
same key when the answer to its create is lost (the create may have taken effect): the partner's
referral by ``externalReferenceId`` (the CRM id, Microsoft's copies excluded) and Microsoft's by the
engagement id and Microsoft's target. A create is sent a second time only when nothing is found.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.opportunity import Opportunity
from ..domain.referral import Referral
from ..domain.referral_builder import is_microsoft_copy, microsoft_referral_body, partner_referral_body
from ..ports import PartnerCenter


@dataclass(frozen=True)
class CreatedReferral:
    referral: Referral
    microsoft_referral_id: str | None
    reused: bool


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ReferralCreator:
    def __init__(self, pc: PartnerCenter) -> None:
        self.pc = pc

    def ensure(self, record: Opportunity) -> CreatedReferral:
        crm_id = record.crm_id
        assert crm_id is not None
        existing = self.partner_referral(crm_id)
        referral = existing or self.pc.create_referral(
            partner_referral_body(record), find=lambda: self.partner_referral(crm_id)
        )
        microsoft_id = self.ensure_microsoft_referral(referral, record) if record.help_code else None
        return CreatedReferral(referral, microsoft_id, existing is not None)

    def partner_referral(self, crm_id: str) -> Referral | None:
        """The partner's own referral for a CRM opportunity; a Microsoft copy with the same reference is not it."""
        return next(
            (
                r
                for r in self.pc.list_referrals(f"externalReferenceId eq {_quoted(crm_id)}")
                if not is_microsoft_copy(r.target)
            ),
            None,
        )

    def microsoft_referral(self, engagement_id: str) -> Referral | None:
        """The referral for Microsoft on an engagement."""
        return next(
            (
                r
                for r in self.pc.list_referrals(f"engagementId eq {_quoted(engagement_id)}")
                if is_microsoft_copy(r.target)
            ),
            None,
        )

    def ensure_microsoft_referral(self, referral: Referral, record: Opportunity) -> str | None:
        """Microsoft's referral on the partner referral's engagement, created unless it exists already."""
        engagement_id = referral.engagement_id
        if not engagement_id:
            return None
        existing = self.microsoft_referral(engagement_id)
        if existing is not None:
            return existing.id
        body = microsoft_referral_body(partner_referral_body(record), engagement_id)
        return self.pc.create_referral(body, find=lambda: self.microsoft_referral(engagement_id)).id
