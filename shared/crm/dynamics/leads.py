"""Dynamics 365 leads made from Partner Center leads (:class:`shared.ports.LeadRecords` over the Dataverse Web API).

A lead is created by a create-only upsert on the referral-id alternate key of the lead table (``If-None-Match: *``),
so a retried create finds the lead the first attempt made (and never moves it to another owner). Its state reads as
``"statecode/statuscode"``; Partner Center's later changes are written conditioned on the lead's etag, a
disqualification with them in the same request. A seller
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
from ...domain.routing import Owner
from ...ports import Change
from ..lead_mapping import LeadMapping
from .changes import modified_changes
from .mapping import parse_datetime
from .owners import owner_bind
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

    def create_lead(self, lead: Lead, owner: Owner | None = None) -> Lead:
        path = self._key_path(lead.referral_id)
        body = {k: v for k, v in self._columns(lead).items() if v is not None}
        if owner is not None:
            body["ownerid@odata.bind"] = owner_bind(owner)  # a create-only upsert: an existing lead keeps its owner
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

    def stored_lead(self, lead: Lead) -> Lead:
        return self._to_lead({k: v for k, v in self._columns(lead).items() if v is not None}, read=False)

    def update_lead(self, current: Lead, desired: Lead, fields: list[str], state: str | None) -> Lead:
        columns = self._columns(desired)
        body = {column: columns.get(column) for name in fields for column in self._columns_of(name)}
        if state is not None:
            statecode, _, statuscode = state.partition("/")
            body["statecode"] = int(statecode)
            if statuscode:
                body["statuscode"] = int(statuscode)
        lead_id = str(uuid.UUID(str(current.crm_id)))
        row = self.web.patch("leads", lead_id, body, current.etag, self.select)
        return self._to_lead(row)

    def lead_changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        return modified_changes(self.web, "leads", "leadid", f"{self.mapping.referral_id} ne null", since, page_size)

    # -- rows ---------------------------------------------------------------------------------------------------------
    def _to_lead(self, row: dict[str, Any], read: bool = True) -> Lead:
        """``row`` as read (``read``), or the columns of a write as they would read back."""
        state = f"{row.get('statecode')}/{row.get('statuscode')}" if read else None
        converted = None
        if read and row.get("statecode") == QUALIFIED:
            made = self.web.first("opportunities", "opportunityid", f"_originatingleadid_value eq {row['leadid']}")
            converted = str(made["opportunityid"]) if made else None
        amount = row.get(self.mapping.deal_value) if self.mapping.deal_value else None
        return Lead(
            crm_id=str(row["leadid"]) if read else None,
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

    def _columns_of(self, name: str) -> tuple[str, ...]:
        """The columns holding the Lead attribute ``name``."""
        deal = (self.mapping.deal_value,) if self.mapping.deal_value else ()
        owned = {"topic": ("subject",), "company": ("companyname",), "notes": ("description",), "deal_value": deal}
        owned |= {"contact": tuple(CONTACT_COLUMNS), "address": tuple(ADDRESS_COLUMNS)}
        return owned[name]

    def _columns(self, lead: Lead) -> dict[str, Any]:
        """Every column ``lead`` sets, None where it has no value."""
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
        if self.mapping.deal_value:
            body[self.mapping.deal_value] = float(lead.deal_value) if lead.deal_value is not None else None
        return body

    def _key_path(self, referral_id: str | None) -> str:
        if not referral_id:
            raise ValidationFailed(["a lead needs the referral id it is made from"])
        value = quote(referral_id.replace("'", "''"), safe="")
        return f"leads({self.mapping.referral_id}='{value}')"
