"""The ``[lead]`` table of a CRM's mapping file: where a lead made from a Partner Center lead keeps the referral id,
and how the lead's states read (``SYNC_COSELL_ONLY=false`` only; see :mod:`shared.domain.leads`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..domain.leads import LeadRules


class LeadMapping(BaseModel):
    """``referral_id``: the lead column (Dataverse) or field (Salesforce) holding the referral id, an alternate key
    or external id so that a retried create finds the lead; ``deal_value``: the lead column for the deal value (""
    leaves it out); ``new_status``: the status a new lead gets ("" the CRM's default); ``qualified`` and
    ``disqualified``: see :class:`~shared.domain.leads.LeadRules`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    referral_id: str = ""
    deal_value: str = ""
    new_status: str = ""
    qualified: tuple[str, ...] = ()
    disqualified: dict[str, str] = Field(default_factory=dict)

    def rules(self) -> LeadRules:
        return LeadRules(qualified=self.qualified, disqualified=self.disqualified)
