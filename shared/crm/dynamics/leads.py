"""Dynamics 365 leads made from Partner Center leads (:class:`shared.ports.LeadRecords` over the Dataverse Web API).

A lead is created by a create-only upsert on the referral-id alternate key of the lead table (``If-None-Match: *``),
so a retried create finds the lead the first attempt made. Its state reads as ``"statecode/statuscode"``. A seller
qualifies a lead with the QualifyLead action, which makes the opportunity and stamps it with
``originatingleadid``: that opportunity is looked up (one query) only for a qualified lead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from ...domain.errors import PreconditionFailed, ValidationFailed
from ...domain.leads import Lead
from ...domain.opportunity import Contact, CustomerAddress
from ...ports import Change
from ..lead_mapping import LeadMapping
from .mapping import odata_datetime, parse_datetime
from .webapi import DataverseRows

log = logging.getLogger(__name__)
QUALIFIED = 1
# Lead column -> the address part it holds.
ADDRESS_COLUMNS = {
    "address1_line1": "line1",
    "address1_line2": "line2",
    "address1_city": "city",
    "address1_stateorprovince": "state",
    "address1_postalcode": "postal_code",
    "address1_country": "country",
}
CONTACT_COLUMNS = {
    "firstname": "first_name",
    "lastname": "last_name",
    "emailaddress1": "email",
    "telephone1": "phone",
    "jobtitle": "title",
}
BASE_COLUMNS = ("leadid", "subject", "companyname", "description", "statecode", "statuscode", "modifiedon")


class DataverseLeads:
    def __init__(self, web: DataverseRows, mapping: LeadMapping) -> None:
        if not mapping.referral_id:
            raise ValidationFailed(["[lead] referral_id names no lead column; Partner Center leads cannot be kept"])
        self.web, self.mapping = web, mapping
        columns = [*BASE_COLUMNS, *CONTACT_COLUMNS, *ADDRESS_COLUMNS, mapping.referral_id]
        self.select = ",".join([*columns, *([mapping.deal_value] if mapping.deal_value else [])])

    def get_lead(self, crm_id: str) -> Lead | None:
        try:
            lead_id = str(uuid.UUID(crm_id))
        except ValueError:
            return None  # not a Dataverse row id
        row = self.web.get(f"leads({lead_id})", {"$select": self.select}, missing_ok=True)
        return self._to_lead(row) if row is not None else None

    def create_lead(self, lead: Lead) -> Lead:
        path = self._key_path(lead.referral_id)
        body = self._columns(lead)
        try:
            row = self.web.api.request(
                "PATCH",
                path,
                params={"$select": self.select},
                json=body,
                headers={"If-None-Match": "*", "Prefer": "return=representation"},
            ).json(parse_float=Decimal)
        except PreconditionFailed:
            # Already there (a retry whose first answer was lost, or a concurrent job): that lead is the answer.
            found = self.web.get(path, {"$select": self.select}, missing_ok=True)
            if found is None:
                raise
            log.info("lead for referral %s already existed; not created again", lead.referral_id)
            return self._to_lead(found)
        return self._to_lead(row)

    def lead_changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        odata_filter = f"{self.mapping.referral_id} ne null"
        if since is not None:
            odata_filter += f" and modifiedon ge {odata_datetime(since)}"
        params = {"$select": "leadid,modifiedon", "$filter": odata_filter, "$orderby": "modifiedon asc,leadid asc"}
        for row in self.web.rows("leads", params, page_size):
            yield Change(str(row["leadid"]), str(row.get("@odata.etag") or ""), parse_datetime(row.get("modifiedon")))

    # -- rows ---------------------------------------------------------------------------------------------------------
    def _to_lead(self, row: dict[str, Any]) -> Lead:
        state = f"{row.get('statecode')}/{row.get('statuscode')}"
        converted = None
        if row.get("statecode") == QUALIFIED:
            made = self.web.first("opportunities", "opportunityid", f"_originatingleadid_value eq {row['leadid']}")
            converted = str(made["opportunityid"]) if made else None
        amount = row.get(self.mapping.deal_value) if self.mapping.deal_value else None
        return Lead(
            crm_id=str(row["leadid"]),
            referral_id=row.get(self.mapping.referral_id),
            topic=row.get("subject"),
            company=row.get("companyname"),
            address=CustomerAddress(**{part: row.get(column) for column, part in ADDRESS_COLUMNS.items()}),
            contact=Contact(**{part: row.get(column) for column, part in CONTACT_COLUMNS.items()}),
            deal_value=Decimal(str(amount)) if amount is not None else None,
            notes=row.get("description"),
            state=state,
            converted_opportunity_id=converted,
            etag=row.get("@odata.etag"),
            modified_at=parse_datetime(row.get("modifiedon")),
        )

    def _columns(self, lead: Lead) -> dict[str, Any]:
        contact = lead.contact
        body: dict[str, Any] = {
            "subject": lead.topic,
            "companyname": lead.company,
            "description": lead.notes,
            **{column: getattr(contact, part) for column, part in CONTACT_COLUMNS.items()},
            **{column: getattr(lead.address, part) for column, part in ADDRESS_COLUMNS.items()},
        }
        # A lead without a person's last name cannot be qualified into a contact: the company stands in for it.
        body["lastname"] = contact.last_name or lead.company or lead.topic
        if self.mapping.deal_value and lead.deal_value is not None:
            body[self.mapping.deal_value] = float(lead.deal_value)
        return {k: v for k, v in body.items() if v is not None}

    def _key_path(self, referral_id: str | None) -> str:
        if not referral_id:
            raise ValidationFailed(["a lead needs the referral id it is made from"])
        value = quote(referral_id.replace("'", "''"), safe="")
        return f"leads({self.mapping.referral_id}='{value}')"
