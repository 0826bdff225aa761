"""Where an operator opens a record: the CRM's own page for the opportunity or lead, and the referral in Partner
Center."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from ..ports import LINK_KIND_LEAD

# A CRM record's kind (Link.crm_kind; None is an opportunity) -> its Dataverse table / Salesforce object.
DATAVERSE_TABLES: dict[str | None, str] = {None: "opportunity", LINK_KIND_LEAD: "lead"}
SALESFORCE_OBJECTS: dict[str | None, str] = {None: "Opportunity", LINK_KIND_LEAD: "Lead"}


@dataclass(frozen=True)
class RecordLinks:
    crm_provider: str  # "dynamics" | "salesforce"
    crm_base_url: str | None  # DATAVERSE_URL, or the Salesforce org's My Domain / instance URL
    referral_link_template: str  # REFERRAL_LINK_TEMPLATE, with {referral_id}

    def crm(self, crm_id: str | None, crm_kind: str | None = None) -> str | None:
        """The record's page; ``crm_kind`` as :attr:`shared.ports.Link.crm_kind` (None: an opportunity)."""
        if not crm_id or not self.crm_base_url or crm_kind not in DATAVERSE_TABLES:
            return None
        base, record = self.crm_base_url.rstrip("/"), quote(crm_id, safe="")
        if self.crm_provider == "salesforce":
            return f"{base}/lightning/r/{SALESFORCE_OBJECTS[crm_kind]}/{record}/view"
        return f"{base}/main.aspx?pagetype=entityrecord&etn={DATAVERSE_TABLES[crm_kind]}&id={record}"

    def referral(self, referral_id: str | None) -> str | None:
        if not referral_id:
            return None
        return self.referral_link_template.replace("{referral_id}", quote(referral_id, safe=""))
