"""Partner Center's current co-sell fields: solution area, solution play, partner role (services co-sell) and the
customer's marketplace purchase intent, where a referral holds them.

Microsoft documents the first three as "required for Services co-sell referrals only" without their JSON shape,
so they are read from the top-level members named here and passed through as text: a value Partner Center sends
as an object or a list is read by its ``id`` (or ``name``). The purchase intent is the documented attribute
``{"id": <code>, "type": "CustomerMarketplaceIntent"}`` in ``details.requirements.additionalRequirements``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .opportunity import Opportunity
from .referral import Referral

# Neutral field -> the referral's top-level JSON member (unconfirmed names: Microsoft's tables spell them
# PartnerRole, SolutionArea, SolutionPlay; JSON is camelCase).
SERVICES_COSELL_MEMBERS: Mapping[str, str] = {
    "solution_area": "solutionArea",
    "solution_play": "solutionPlay",
    "partner_role": "partnerRole",
}
PURCHASE_INTENT_TYPE = "CustomerMarketplaceIntent"
CURRENT_FIELDS = (*SERVICES_COSELL_MEMBERS, "purchase_intent")
LABELS: Mapping[str, str] = {
    "solution_area": "solution area",
    "solution_play": "solution play",
    "partner_role": "partner role",
    "purchase_intent": "marketplace purchase intent",
}


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        return _text(value[0]) if value else None
    if isinstance(value, Mapping):
        return _text(value.get("id") or value.get("name"))
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _attributes(referral: Referral) -> list[Any]:
    requirements = referral.details.requirements if referral.details else None
    additional = getattr(requirements, "additional_requirements", None) if requirements else None
    attributes = additional.get("attributes") if isinstance(additional, Mapping) else None
    return attributes if isinstance(attributes, list) else []


def current_fields(referral: Referral) -> dict[str, str | None]:
    """The four fields as the referral holds them; None where it holds nothing."""
    extra = referral.model_extra or {}
    values: dict[str, str | None] = {name: _text(extra.get(member)) for name, member in SERVICES_COSELL_MEMBERS.items()}
    intent = next(
        (a for a in _attributes(referral) if isinstance(a, Mapping) and a.get("type") == PURCHASE_INTENT_TYPE), None
    )
    values["purchase_intent"] = _text(intent.get("id")) if intent else None
    return values


def purchase_intent_attributes(code: str | None, existing: list[Any]) -> list[Any]:
    """``existing`` attributes with the purchase intent replaced by ``code`` (removed when None); the others kept."""
    kept = [a for a in existing if not (isinstance(a, Mapping) and a.get("type") == PURCHASE_INTENT_TYPE)]
    return [*kept, {"id": code, "type": PURCHASE_INTENT_TYPE}] if code else kept


def existing_attributes(referral: Referral) -> list[Any]:
    return list(_attributes(referral))


def services_cosell_problems(opportunity: Opportunity) -> list[str]:
    """Partner Center requires solution area, solution play and partner role together on a services co-sell
    referral: one or two of them set means the others are missing."""
    given = [name for name in SERVICES_COSELL_MEMBERS if getattr(opportunity, name)]
    missing = [LABELS[name] for name in SERVICES_COSELL_MEMBERS if name not in given]
    if not given or not missing:
        return []
    return [
        "Partner Center requires solution area, solution play and partner role together for a services co-sell "
        f"referral; set the {' and the '.join(missing)} too, or clear the "
        f"{' and the '.join(LABELS[name] for name in given)}."
    ]


def current_fields_json(opportunity: Opportunity) -> dict[str, str]:
    """The services co-sell members a referral made from ``opportunity`` holds (only those set)."""
    return {
        member: value
        for name, member in SERVICES_COSELL_MEMBERS.items()
        if (value := getattr(opportunity, name)) is not None
    }
