"""Realistic referral JSON for tests and the demo, with every field the connector maps.

``overrides`` are merged into the sample: dict values merge recursively, lists and scalars replace,
and ``None`` removes the key (handy for "missing solution" or "no contact" cases), e.g.
``cosell_referral(name="Fabrikam", details={"dealValue": 1000}, customerProfile={"team": []})``.
"""

from __future__ import annotations

import copy
from typing import Any

MICROSOFT_ORG_ID = "msft"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``overrides`` merged in (see the module docstring)."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _customer_profile() -> dict[str, Any]:
    return {
        "name": "Contoso Pharmaceuticals",
        "address": {
            "addressLine1": "1 Microsoft Way",
            "addressLine2": "Building 4",
            "city": "Redmond",
            "state": "WA",
            "postalCode": "98052",
            "country": "US",
        },
        "size": "1001to5000employees",
        "team": [
            {
                "firstName": "Avery",
                "lastName": "Howard",
                "email": "avery.howard@contoso.example",
                "phoneNumber": "+1 425 555 0100",
                "title": "CIO",
            }
        ],
        "ids": [],
    }


def _details() -> dict[str, Any]:
    return {
        "notes": "Customer wants to move its lab analytics to Azure before the end of the fiscal year.",
        "dealValue": 250000.0,
        "currency": "USD",
        "closingDateTime": "2030-06-30T00:00:00Z",
        "customerRequestedContact": True,
        "requirements": {
            "industries": [{"id": "Healthcare"}],
            "products": [{"id": "Azure"}],
            "services": [{"id": "DeploymentOrMigration"}],
            "solutions": [{"id": "SOL-34104-EBB", "name": "Contoso Lab Analytics on Azure", "type": "Name"}],
        },
    }


def _consent(shared_with_microsoft: bool = True) -> dict[str, Any]:
    return {
        "consentToToShareInfoWithOthers": True,
        "consentToContact": True,
        "consentToShareReferralWithMicrosoftSellers": shared_with_microsoft,
        "consentToMicrosoftToContactSpecificPartners": shared_with_microsoft,
    }


def _partner_team() -> list[dict[str, Any]]:
    return [
        {
            "firstName": "Jordan",
            "lastName": "Reyes",
            "email": "jordan.reyes@partner.example",
            "phoneNumber": "+1 206 555 0142",
            "title": "Account executive",
        }
    ]


def cosell_referral(**overrides: Any) -> dict[str, Any]:
    """An incoming co-sell opportunity shared by Microsoft (Shared, SalesQualified, invited by msft)."""
    sample = {
        "name": "Contoso - lab analytics migration",
        "status": "New",
        "substatus": "Pending",
        "type": "Shared",
        "qualification": "SalesQualified",
        "direction": "Incoming",
        "target": [{"type": "SolutionProfile", "id": "SOL-34104-EBB"}],
        "customerProfile": _customer_profile(),
        "consent": _consent(),
        "details": _details(),
        "team": _partner_team(),
        "inviteContext": {
            "notes": "Microsoft seller requests a technical architecture session.",
            "invitedBy": {"organizationId": MICROSOFT_ORG_ID, "organizationName": "Microsoft"},
            "assistanceRequestCode": "CustomerTechnicalArchitecture",
        },
    }
    return merge(sample, overrides)


def lead_referral(**overrides: Any) -> dict[str, Any]:
    """An incoming qualified lead from Microsoft (Independent, MarketingQualified, invited by msft)."""
    sample = cosell_referral(
        name="Fabrikam - Dynamics 365 field service evaluation",
        type="Independent",
        qualification="MarketingQualified",
        target=[],
        inviteContext={
            "notes": "Marketing qualified lead from a Microsoft campaign.",
            "assistanceRequestCode": "Unknown",
        },
        customerProfile={
            "name": "Fabrikam Inc.",
            "address": {
                "addressLine1": "200 Lake St",
                "addressLine2": None,
                "city": "Chicago",
                "state": "IL",
                "postalCode": "60601",
            },
        },
        details={
            "dealValue": 40000.0,
            "requirements": {"solutions": [], "products": [{"id": "Dynamics365Enterprise"}]},
        },
    )
    return merge(sample, overrides)


def outgoing_cosell_body(**overrides: Any) -> dict[str, Any]:
    """A create (POST) body for a partner-originated co-sell referral, as the connector would send it."""
    sample = cosell_referral(
        direction=None,
        status="New",
        substatus="Pending",
        qualification="SalesQualified",
        inviteContext={"invitedBy": None, "notes": "Please join the architecture workshop."},
        externalReferenceId="00000000-0000-0000-0000-000000000001",
    )
    return merge(sample, overrides)
