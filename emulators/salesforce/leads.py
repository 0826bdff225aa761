"""Salesforce emulator: what a write may do to a Lead, and converting one as a seller does in the UI.

The REST API cannot convert a lead (Apex ``Database.convertLead`` and the SOAP ``convertLead`` call can), so the
emulator offers it on its control API, the way a seller's "Convert" button works: an account (or the one named), a
contact and, unless asked not to, an opportunity at the org's first open stage are made from the lead; the lead gets
a converted status, ``IsConverted``, ``ConvertedDate`` and the ``Converted*Id`` of what was made, and takes no
more writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from .schema import LEAD_STATUSES, bad_request

if TYPE_CHECKING:
    from .store import Org

Record = dict[str, Any]

CONVERT_DEFAULT_DAYS = 30  # the close date a converted lead's opportunity gets, from today


def check_lead_write(row: Record, changes: Record) -> None:
    """A converted status comes from conversion only."""
    status = changes.get("Status")
    if status is not None and LEAD_STATUSES.get(str(status)) and not row.get("IsConverted"):
        raise bad_request(
            "FIELD_INTEGRITY_EXCEPTION",
            f"Status: '{status}' is a converted status; convert the lead to set it",
            ["Status"],
        )


def convert_lead(org: Org, lead_id: str, options: Mapping[str, Any], today: date) -> Record:
    """Convert the lead; returns the ``Converted*Id`` fields. ``options``: ``convertedStatus`` (default: the
    org's converted status), ``accountId`` (an existing account instead of a new one), ``opportunityName``,
    ``doNotCreateOpportunity``."""
    lead = org.get("Lead", lead_id)
    if lead is None:
        raise org.not_found("Lead", lead_id)
    if lead.get("IsConverted"):
        raise bad_request("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
    status = str(options.get("convertedStatus") or next(s for s, converted in LEAD_STATUSES.items() if converted))
    if not LEAD_STATUSES.get(status):
        raise bad_request("INVALID_STATUS", f"'{status}' is not a converted lead status", ["convertedStatus"])
    account_id = options.get("accountId")
    if account_id:
        if org.get("Account", str(account_id)) is None:
            raise bad_request("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {account_id}")
    else:
        account = {
            "Name": lead["Company"],
            "BillingStreet": lead.get("Street"),
            "BillingCity": lead.get("City"),
            "BillingState": lead.get("State"),
            "BillingPostalCode": lead.get("PostalCode"),
            "BillingCountry": lead.get("Country"),
        }
        account_id = org.insert("Account", {k: v for k, v in account.items() if v is not None})["Id"]
    contact = {
        "FirstName": lead.get("FirstName"),
        "LastName": lead["LastName"],
        "Email": lead.get("Email"),
        "Phone": lead.get("Phone"),
        "Title": lead.get("Title"),
        "AccountId": account_id,
    }
    contact_id = org.insert("Contact", {k: v for k, v in contact.items() if v is not None})["Id"]
    opportunity_id = None
    if not options.get("doNotCreateOpportunity"):
        stage = next(name for name, (closed, _won) in org.stages.items() if not closed)
        opportunity = {
            "Name": str(options.get("opportunityName") or f"{lead['Company']}-"),
            "StageName": stage,
            "CloseDate": (today + timedelta(days=CONVERT_DEFAULT_DAYS)).isoformat(),
            "AccountId": account_id,
            "Description": lead.get("Description"),
            "LeadSource": lead.get("LeadSource"),
        }
        opportunity_id = org.insert("Opportunity", {k: v for k, v in opportunity.items() if v is not None})["Id"]
        org.insert(
            "OpportunityContactRole", {"OpportunityId": opportunity_id, "ContactId": contact_id, "IsPrimary": True}
        )
    converted = {
        "Status": status,
        "IsConverted": True,
        "ConvertedDate": today,
        "ConvertedAccountId": account_id,
        "ConvertedContactId": contact_id,
        "ConvertedOpportunityId": opportunity_id,
    }
    org.changing("Lead", lead)
    lead.update(converted)
    lead["LastModifiedDate"] = lead["SystemModstamp"] = org._stamp()  # a conversion is a change of the lead
    org.changed("Lead", lead)
    return {k: v for k, v in converted.items() if k.startswith("Converted") and k != "ConvertedDate"}
