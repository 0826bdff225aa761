"""Creating a co-sell referral from a CRM opportunity, idempotently.

Partner Center's documented co-sell pattern is two referrals on one engagement: the partner's Shared
referral targeted at its solution and, when Microsoft's help is requested, a referral for Microsoft.
Before creating anything we look for what an earlier, interrupted attempt may already have created:
the partner's referral by ``externalReferenceId`` (the CRM id) and Microsoft's by engagement.
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
        assert record.crm_id is not None
        body = partner_referral_body(record)
        existing = next(
            (
                r
                for r in self.pc.list_referrals(f"externalReferenceId eq {_quoted(record.crm_id)}")
                if not is_microsoft_copy(r.target)
            ),
            None,
        )
        referral = existing or self.pc.create_referral(body)
        microsoft_id = self.ensure_microsoft_referral(referral, record) if record.help_code else None
        return CreatedReferral(referral, microsoft_id, existing is not None)

    def ensure_microsoft_referral(self, referral: Referral, record: Opportunity) -> str | None:
        """Microsoft's referral on the partner referral's engagement, created unless it exists already."""
        if not referral.engagement_id:
            return None
        copies = [
            r
            for r in self.pc.list_referrals(f"engagementId eq {_quoted(referral.engagement_id)}")
            if is_microsoft_copy(r.target)
        ]
        if copies:
            return copies[0].id
        body = microsoft_referral_body(partner_referral_body(record), referral.engagement_id)
        return self.pc.create_referral(body).id
