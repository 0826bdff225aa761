"""Microsoft's side of a co-sell engagement, as the partner's CRM shows it.

A co-sell engagement holds the partner's referral and Microsoft's (the one targeted at Microsoft, or owned by
Microsoft's organisation). When Microsoft's seller works the deal, Partner Center raises ``related-referral-*``
events; Microsoft's status, its seller, its CRM (MSX) id and its invite notes are then read from Microsoft's
referral and shown on the partner's opportunity. They are Microsoft's: they travel to the CRM only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .classification import MICROSOFT_ORG_ID
from .opportunity import MICROSOFT_SIDE_FIELDS, Opportunity
from .referral import Referral
from .referral_rules import is_microsoft_copy

RELATED_REFERRAL_EVENTS = frozenset({"related-referral-created", "related-referral-updated"})

_LABELS: Mapping[str, str] = {
    "microsoft_status": "status",
    "microsoft_seller_name": "seller",
    "microsoft_seller_email": "seller e-mail",
    "microsoft_crm_id": "Microsoft CRM id",
    "microsoft_notes": "notes",
}


def is_microsoft_referral(referral: Referral) -> bool:
    return referral.organization_id == MICROSOFT_ORG_ID or is_microsoft_copy(referral.target)


def microsoft_referral(partner: Referral, engagement: Iterable[Referral]) -> Referral | None:
    """Microsoft's referral among the engagement's: one Microsoft's organisation owns first, else the one the
    partner addressed to Microsoft."""
    others = [r for r in engagement if r.id != partner.id and is_microsoft_referral(r)]
    owned = [r for r in others if r.organization_id == MICROSOFT_ORG_ID]
    return (owned or others or [None])[0]


def _clean(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def microsoft_side(partner: Referral, microsoft: Referral) -> dict[str, str | None]:
    """The neutral values of Microsoft's side: its status as ``Status/Substatus``, its first team member as the
    seller, the MSX id (Microsoft's referral's, else the partner's copy of it) and its invite notes."""
    status = "/".join(part for part in (microsoft.status, microsoft.substatus) if part and part != "None")
    seller = microsoft.team[0] if microsoft.team else None
    seller_name = " ".join(p for p in (seller.first_name, seller.last_name) if p) if seller else None
    msx_ids = (r.tracking_info.microsoft_msx_id for r in (microsoft, partner) if r.tracking_info)
    msx = next((value for value in msx_ids if value), None)
    notes = microsoft.invite_context.notes if microsoft.invite_context else None
    return {
        "microsoft_status": _clean(status),
        "microsoft_seller_name": _clean(seller_name),
        "microsoft_seller_email": _clean(seller.email.lower() if seller and seller.email else None),
        "microsoft_crm_id": _clean(msx),
        "microsoft_notes": _clean(notes),
    }


def changed_side(shown: Opportunity, wanted: Opportunity) -> list[str]:
    """The fields of Microsoft's side that differ between what the CRM shows and what it should show (both in
    the CRM's stored form)."""
    return [f for f in MICROSOFT_SIDE_FIELDS if _clean(getattr(shown, f)) != _clean(getattr(wanted, f))]


def describe(wanted: Opportunity, fields: Iterable[str]) -> str:
    """The Audit line of a change on Microsoft's side, e.g. ``Microsoft's side: status Active/Accepted; seller
    Jane Doe``."""
    parts = []
    for name in fields:
        value = getattr(wanted, name)
        if name == "microsoft_notes":
            parts.append("notes updated" if value else "notes cleared")
        else:
            parts.append(f"{_LABELS[name]} {value}" if value else f"{_LABELS[name]} cleared")
    return "Microsoft's side: " + "; ".join(parts)
