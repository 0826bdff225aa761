"""CRM opportunity -> Partner Center wire format: the create bodies of a co-sell referral and JSON Patch updates."""

from __future__ import annotations

from typing import Any

from ..domain.checkmark import strip_marks
from ..domain.classification import MICROSOFT_ORG_ID
from ..domain.current_fields import (
    SERVICES_COSELL_MEMBERS,
    current_fields_json,
    existing_attributes,
    purchase_intent_attributes,
)
from ..domain.opportunity import Contact, Opportunity
from ..domain.referral import Referral
from ..domain.referral_rules import closing_date_time


def _member(contact: Contact) -> dict[str, Any]:
    member = {
        "firstName": contact.first_name,
        "lastName": contact.last_name,
        "email": contact.email,
        "phoneNumber": contact.phone,
        "title": contact.title,
    }
    return {k: v for k, v in member.items() if v is not None}


def _solutions(opportunity: Opportunity) -> list[dict[str, str]]:
    return [{"id": sid} for sid in opportunity.solution_ids]


def partner_referral_body(opportunity: Opportunity) -> dict[str, Any]:
    """The partner's Shared referral, targeted at its co-sell solution, keyed by the CRM id."""
    help_requested = opportunity.help_code is not None
    address = opportunity.customer_address
    body: dict[str, Any] = {
        "name": strip_marks(opportunity.name or ""),
        "externalReferenceId": opportunity.crm_id,
        "type": "Shared",
        "qualification": "SalesQualified",
        "status": "New",
        "substatus": "Pending",
        "target": [{"type": "SolutionProfile", "id": opportunity.solution_ids[0]}],
        "customerProfile": {
            "name": opportunity.customer_name,
            "address": {
                k: v
                for k, v in {
                    "addressLine1": address.line1,
                    "addressLine2": address.line2,
                    "city": address.city,
                    "state": address.state,
                    "postalCode": address.postal_code,
                    "country": address.country,
                }.items()
                if v is not None
            },
            "team": [_member(c) for c in opportunity.customer_contacts],
        },
        "consent": {
            "consentToToShareInfoWithOthers": help_requested,
            "consentToContact": help_requested,
            "consentToShareReferralWithMicrosoftSellers": help_requested,
        },
        "details": {
            "notes": opportunity.notes,
            "dealValue": float(opportunity.deal_value) if opportunity.deal_value is not None else None,
            "currency": opportunity.currency,
            "closingDateTime": closing_date_time(opportunity.close_date),
            "requirements": {"solutions": _solutions(opportunity)},
        },
    }
    if help_requested:
        body["inviteContext"] = {"assistanceRequestCode": opportunity.help_code}
    body.update(current_fields_json(opportunity))
    if opportunity.purchase_intent:
        attributes = purchase_intent_attributes(opportunity.purchase_intent, [])
        body["details"]["requirements"]["additionalRequirements"] = {"attributes": attributes}
    return body


def microsoft_referral_body(partner_body: dict[str, Any], engagement_id: str) -> dict[str, Any]:
    """The linked referral for Microsoft on the same engagement (documented co-sell pattern)."""
    body = {k: v for k, v in partner_body.items() if k != "externalReferenceId"}
    body["engagementId"] = engagement_id
    body["target"] = [{"type": "BusinessProfileLocation", "id": MICROSOFT_ORG_ID}]
    return body


def _help_operations(code: str, referral: Referral) -> list[dict[str, Any]]:
    """Ask for Microsoft's help on an existing referral: the request code and consent to share it."""
    operations: list[dict[str, Any]] = []
    if referral.invite_context is None:
        operations.append({"op": "add", "path": "/inviteContext", "value": {"assistanceRequestCode": code}})
    else:
        operations.append({"op": "replace", "path": "/inviteContext/assistanceRequestCode", "value": code})
    consent = {"consentToShareReferralWithMicrosoftSellers": True, "consentToContact": True}
    if referral.consent is None:
        operations.append({"op": "add", "path": "/consent", "value": consent})
    else:
        operations.extend({"op": "replace", "path": f"/consent/{k}", "value": v} for k, v in consent.items())
    return operations


def patch_operations(opportunity: Opportunity, fields: list[str], referral: Referral) -> list[dict[str, Any]]:
    """JSON Patch (``replace``/``add`` only) carrying ``fields`` of the opportunity to ``referral``."""
    o = opportunity
    has_requirements = referral.details is not None and referral.details.requirements is not None
    values: dict[str, tuple[str, Any]] = {
        "name": ("/name", strip_marks(o.name or "")),
        "deal_value": ("/details/dealValue", float(o.deal_value) if o.deal_value is not None else None),
        "currency": ("/details/currency", o.currency),
        "close_date": ("/details/closingDateTime", closing_date_time(o.close_date)),
        "notes": ("/details/notes", o.notes),
        "customer_contacts": ("/customerProfile/team", [_member(c) for c in o.customer_contacts]),
        "status": ("/status", o.status),
        "substatus": ("/substatus", o.substatus),
        "status_reason": ("/statusReason", o.status_reason),
    }
    operations: list[dict[str, Any]] = []
    for field in fields:
        if field == "solution_ids":
            if has_requirements:
                operations.append({"op": "replace", "path": "/details/requirements/solutions", "value": _solutions(o)})
            else:
                operations.append({"op": "add", "path": "/details/requirements", "value": {"solutions": _solutions(o)}})
        elif field == "help_code" and o.help_code is not None:
            operations.extend(_help_operations(o.help_code, referral))
        elif field in SERVICES_COSELL_MEMBERS:
            # "add" sets a member whether or not the referral has it yet (RFC 6902).
            operations.append({"op": "add", "path": "/" + SERVICES_COSELL_MEMBERS[field], "value": getattr(o, field)})
        elif field == "purchase_intent":
            operations.append(_purchase_intent_operation(o.purchase_intent, referral))
        elif field in values:
            path, value = values[field]
            operations.append({"op": "replace", "path": path, "value": value})
    return operations


def _purchase_intent_operation(code: str | None, referral: Referral) -> dict[str, Any]:
    """The intent attribute replaced in the referral's attributes, the other attributes kept. The objects above
    them are not replaced (the same patch may set the deal value or the solutions in them): Partner Center makes
    the ones a referral does not have yet, as it does for ``/details/dealValue``."""
    attributes = purchase_intent_attributes(code, existing_attributes(referral))
    requirements = referral.details.requirements if referral.details else None
    if requirements is None or requirements.additional_requirements is None:
        path, value = "/details/requirements/additionalRequirements", {"attributes": attributes}
        return {"op": "add", "path": path, "value": value}
    return {"op": "add", "path": "/details/requirements/additionalRequirements/attributes", "value": attributes}
