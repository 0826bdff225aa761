"""Salesforce Leads made from Partner Center leads (:class:`shared.ports.LeadRecords` over the REST API).

A lead is created by an upsert on the Referral Identifier external id of Lead, so a retried create updates the lead
the first attempt made instead of adding one. Its state reads as its ``Status``; a seller converts it in the UI,
which sets ``IsConverted`` and ``ConvertedOpportunityId`` (read with the lead, no extra request) and leaves the lead
read-only. Partner Center's later changes are written with ``If-Unmodified-Since`` the lead's ``SystemModstamp``, as
opportunities are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from ...domain.errors import NotFound, PreconditionFailed, ValidationFailed
from ...domain.leads import Lead
from ...domain.opportunity import Contact, CustomerAddress
from ...domain.routing import Owner
from ...ports import Change
from ..lead_mapping import LeadMapping
from .api import SalesforceApi
from .auth import SERVICE
from .changes import modstamp_changes
from .mapping import http_date, is_record_id, parse_modstamp, soql, soql_string
from .same_second import must_read_again

LEAD_PREFIX = "00Q"
USER_PREFIX = "005"  # INBOUND_OWNER names Users on Salesforce (the setting refuses queues for opportunities)
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
    def __init__(
        self,
        api: SalesforceApi,
        mapping: LeadMapping,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._now, self._sleep = now, sleep
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

    def create_lead(self, lead: Lead, owner: Owner | None = None) -> Lead:
        if not lead.referral_id:
            raise ValidationFailed(["a lead needs the referral id it is made from"])
        body = {k: v for k, v in self._fields_for(lead).items() if v is not None}
        if owner is not None:
            if owner.kind != "user" or not is_record_id(owner.id, USER_PREFIX):
                raise ValidationFailed([f"'{owner}' cannot own a lead made by the connector: name a User (005...)"])
            if self._find(lead.referral_id) is None:
                # An upsert that finds the lead updates it, and an OwnerId would take it from whoever owns it now:
                # the owner goes only with a real create (a retry after a lost answer finds the lead it made).
                body["OwnerId"] = owner.id
        response = self.api.request(
            "PATCH",
            f"sobjects/Lead/{self.mapping.referral_id}/{quote(lead.referral_id, safe='')}",
            json=body,
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

    def stored_lead(self, lead: Lead) -> Lead:
        return self._to_lead({k: v for k, v in self._fields_for(lead).items() if v is not None}, read=False)

    def update_lead(self, current: Lead, desired: Lead, fields: list[str], state: str | None) -> Lead:
        crm_id = str(current.crm_id)
        if not is_record_id(crm_id, LEAD_PREFIX):
            raise ValidationFailed([f"'{crm_id}' is not a Salesforce Lead id"])
        written = self._fields_for(desired)
        body = {name: written.get(name) for attribute in fields for name in self._fields_of(attribute)}
        if state is not None:
            body["Status"] = state
        if must_read_again(current.modified_at, self._now, self._sleep):
            # An edit in the second of the version read would pass the write condition (see same_second.py).
            fresh = self._read(crm_id)
            if fresh.modified_at != current.modified_at or fresh != current:
                raise PreconditionFailed(SERVICE, f"lead {crm_id} changed in the second of the version read", 412)
        headers = {"If-Unmodified-Since": http_date(current.modified_at)} if current.modified_at else {}
        self.api.request("PATCH", f"sobjects/Lead/{crm_id}", json=body, headers=headers)
        return self._read(crm_id)

    def _read(self, crm_id: str) -> Lead:
        row = next(iter(self.api.query(soql("Lead", self.fields, f"Id = {soql_string(crm_id)}"))), None)
        if row is None:
            raise NotFound(SERVICE, f"lead {crm_id} disappeared while it was being written", 404)
        return self._to_lead(row)

    def lead_changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        return modstamp_changes(self.api, "Lead", f"{self.mapping.referral_id} != null", since, page_size)

    # -- records ------------------------------------------------------------------------------------------------------
    def _find(self, referral_id: str) -> dict[str, Any] | None:
        where = f"{self.mapping.referral_id} = {soql_string(referral_id)}"
        return next(iter(self.api.query(soql("Lead", ["Id"], where))), None)

    def _to_lead(self, row: dict[str, Any], read: bool = True) -> Lead:
        """``row`` as read (``read``), or the fields of a write as they would read back."""
        street = str(row.get("Street") or "").split("\n", 1)
        address = {part: row.get(name) for name, part in ADDRESS_FIELDS.items()}
        address |= {"line1": street[0] or None, "line2": street[1] if len(street) > 1 else None}
        amount = row.get(self.mapping.deal_value) if self.mapping.deal_value else None
        stamp = row.get("SystemModstamp")
        return Lead(
            crm_id=str(row["Id"]) if read else None,
            referral_id=row.get(self.mapping.referral_id),
            topic=None,  # a stock Lead has no topic field (it heads the description)
            company=None if row.get("Company") == NO_COMPANY else row.get("Company"),
            address=CustomerAddress(**address),
            contact=Contact(**{part: row.get(name) for name, part in CONTACT_FIELDS.items()}),
            deal_value=Decimal(str(amount)) if amount is not None else None,
            notes=row.get("Description"),
            state=row.get("Status") if read else None,
            converted_opportunity_id=row.get("ConvertedOpportunityId") if row.get("IsConverted") else None,
            etag=str(stamp or ""),
            modified_at=parse_modstamp(stamp) if stamp else None,
        )

    def _fields_of(self, attribute: str) -> tuple[str, ...]:
        """The Lead fields holding the attribute ``attribute`` (the topic heads the Description)."""
        deal = (self.mapping.deal_value,) if self.mapping.deal_value else ()
        owned = {"topic": ("Description",), "notes": ("Description",), "company": ("Company",), "deal_value": deal}
        owned |= {"contact": tuple(CONTACT_FIELDS), "address": ("Street", *ADDRESS_FIELDS)}
        return owned[attribute]

    def _fields_for(self, lead: Lead) -> dict[str, Any]:
        """Every field ``lead`` sets, None where it has no value."""
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
        if self.mapping.deal_value:
            body[self.mapping.deal_value] = float(lead.deal_value) if lead.deal_value is not None else None
        return body


def _description(lead: Lead) -> str | None:
    """A stock Lead has no topic field: the referral's name heads the description."""
    parts = [part for part in (lead.topic, lead.notes) if part]
    return "\n\n".join(parts) or None
