"""Salesforce Leads made from Partner Center leads (:class:`shared.ports.LeadRecords` over the REST API).

A lead is created by an upsert on the Referral Identifier external id of Lead, so a retried create updates the lead
the first attempt made instead of adding one. Its state reads as its ``Status``; a seller converts it in the UI,
which sets ``IsConverted`` and ``ConvertedOpportunityId`` (read with the lead, no extra request) and leaves the lead
read-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from ...domain.errors import NotFound, ValidationFailed
from ...domain.leads import Lead
from ...domain.opportunity import Contact, CustomerAddress
from ...ports import Change
from ..lead_mapping import LeadMapping
from .api import SalesforceApi
from .auth import SERVICE
from .mapping import is_record_id, parse_modstamp, soql, soql_datetime, soql_string

LEAD_PREFIX = "00Q"
CONTACT_FIELDS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "Email": "email",
    "Phone": "phone",
    "Title": "title",
}
ADDRESS_FIELDS = {"City": "city", "State": "state", "PostalCode": "postal_code", "Country": "country"}
BASE_FIELDS = ("Id", "Company", "Description", "Street", "Status", "IsConverted", "ConvertedOpportunityId")
NO_COMPANY = "[not provided]"  # Company is required on a Lead; Salesforce's own placeholder for a person


class SalesforceLeads:
    def __init__(self, api: SalesforceApi, mapping: LeadMapping) -> None:
        if not mapping.referral_id:
            raise ValidationFailed(["[lead] referral_id names no Lead field; Partner Center leads cannot be kept"])
        self.api, self.mapping = api, mapping
        deal = [mapping.deal_value] if mapping.deal_value else []
        self.fields = [*BASE_FIELDS, *CONTACT_FIELDS, *ADDRESS_FIELDS, mapping.referral_id, *deal, "SystemModstamp"]

    def get_lead(self, crm_id: str) -> Lead | None:
        if not is_record_id(crm_id, LEAD_PREFIX):
            return None
        row = next(iter(self.api.query(soql("Lead", self.fields, f"Id = {soql_string(crm_id)}"))), None)
        return self._to_lead(row) if row is not None else None

    def create_lead(self, lead: Lead) -> Lead:
        if not lead.referral_id:
            raise ValidationFailed(["a lead needs the referral id it is made from"])
        response = self.api.request(
            "PATCH",
            f"sobjects/Lead/{self.mapping.referral_id}/{quote(lead.referral_id, safe='')}",
            json=self._fields_for(lead),
        )
        answer = self.api.json(response) if response.content else {}
        lead_id = answer.get("id") if isinstance(answer, dict) else None
        where = (
            f"Id = {soql_string(lead_id)}"
            if lead_id
            else f"{self.mapping.referral_id} = {soql_string(lead.referral_id)}"
        )
        row = next(iter(self.api.query(soql("Lead", self.fields, where))), None)
        if row is None:
            raise NotFound(SERVICE, f"lead for referral {lead.referral_id} vanished after the upsert", 404)
        return self._to_lead(row)

    def lead_changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        where = f"{self.mapping.referral_id} != null"
        if since is not None:
            where += f" AND SystemModstamp >= {soql_datetime(since)}"
        query = soql("Lead", ["Id", "SystemModstamp"], where, "SystemModstamp ASC, Id ASC")
        for page in self.api.query_pages(query, page_size):
            for row in page:
                stamp = row.get("SystemModstamp")
                yield Change(str(row["Id"]), str(stamp or ""), parse_modstamp(stamp) if stamp else None)

    # -- records ------------------------------------------------------------------------------------------------------
    def _to_lead(self, row: dict[str, Any]) -> Lead:
        street = str(row.get("Street") or "").split("\n", 1)
        address = {part: row.get(name) for name, part in ADDRESS_FIELDS.items()}
        address |= {"line1": street[0] or None, "line2": street[1] if len(street) > 1 else None}
        amount = row.get(self.mapping.deal_value) if self.mapping.deal_value else None
        stamp = row.get("SystemModstamp")
        return Lead(
            crm_id=str(row["Id"]),
            referral_id=row.get(self.mapping.referral_id),
            topic=None,  # a stock Lead has no topic field (it heads the description)
            company=None if row.get("Company") == NO_COMPANY else row.get("Company"),
            address=CustomerAddress(**address),
            contact=Contact(**{part: row.get(name) for name, part in CONTACT_FIELDS.items()}),
            deal_value=Decimal(str(amount)) if amount is not None else None,
            notes=row.get("Description"),
            state=row.get("Status"),
            converted_opportunity_id=row.get("ConvertedOpportunityId") if row.get("IsConverted") else None,
            etag=str(stamp or ""),
            modified_at=parse_modstamp(stamp) if stamp else None,
        )

    def _fields_for(self, lead: Lead) -> dict[str, Any]:
        contact, address = lead.contact, lead.address
        street = "\n".join(line for line in (address.line1, address.line2) if line)
        body: dict[str, Any] = {
            **{name: getattr(contact, part) for name, part in CONTACT_FIELDS.items()},
            **{name: getattr(address, part) for name, part in ADDRESS_FIELDS.items()},
            "Street": street or None,
            "Company": lead.company or NO_COMPANY,
            "Description": _description(lead),
        }
        # LastName is required: without a person, the company (or the topic) stands in for one.
        body["LastName"] = contact.last_name or lead.company or lead.topic
        if self.mapping.new_status:
            body["Status"] = self.mapping.new_status
        if self.mapping.deal_value and lead.deal_value is not None:
            body[self.mapping.deal_value] = float(lead.deal_value)
        return {k: v for k, v in body.items() if v is not None}


def _description(lead: Lead) -> str | None:
    """A stock Lead has no topic field: the referral's name heads the description."""
    parts = [part for part in (lead.topic, lead.notes) if part]
    return "\n\n".join(parts) or None
