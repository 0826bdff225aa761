"""The ``[lead]`` table of a CRM's mapping file: where a lead made from a Partner Center lead keeps the referral id,
and how the lead's states read (``SYNC_COSELL_ONLY=false`` only; see :mod:`shared.domain.leads`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..domain.leads import LeadOutcome, LeadRules

DISQUALIFIED = LeadOutcome.DISQUALIFIED


class LeadMapping(BaseModel):
    """``referral_id``: the lead column (Dataverse) or field (Salesforce) holding the referral id, an alternate key
    or external id so that a retried create finds the lead; ``deal_value``: the lead column for the deal value (""
    leaves it out); ``new_status``: the status a new lead gets ("" the CRM's default); ``qualified`` and
    ``disqualified``, ``closed``: see :class:`~shared.domain.leads.LeadRules`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    referral_id: str = ""
    deal_value: str = ""
    new_status: str = ""
    qualified: tuple[str, ...] = ()
    disqualified: dict[str, str] = Field(default_factory=dict)
    closed: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _closed_states_read_as_disqualified(self) -> LeadMapping:
        # The lead must read back as disqualified: read as open it would stay on the seller's worklist, read as
        # qualified its echo would try to accept a referral Partner Center has closed.
        rules = self.rules()
        closing = self.closed.items()
        wrong = [f"{sub} = {state!r}" for sub, state in closing if rules.outcome(state)[0] is not DISQUALIFIED]
        if wrong:
            raise ValueError(f"[lead.closed] names states that [lead.disqualified] does not list: {', '.join(wrong)}")
        return self

    def rules(self) -> LeadRules:
        return LeadRules(qualified=self.qualified, disqualified=self.disqualified, closed=self.closed)
