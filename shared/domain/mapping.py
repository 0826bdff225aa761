"""Partner Center referral -> CRM-neutral opportunity, and the fingerprint of the mapped fields."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from decimal import Decimal

from .checkmark import strip_marks
from .opportunity import MAPPED_FIELDS, Contact, CustomerAddress, Opportunity
from .referral import AssistanceRequestCode, Member, Referral

DEFAULT_REFERRAL_LINK_TEMPLATE = "https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{referral_id}"


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _close_date(raw: str | None) -> date | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).date()
    except ValueError:
        return date.fromisoformat(raw[:10])


def _contact(member: Member) -> Contact:
    return Contact(
        first_name=_clean(member.first_name),
        last_name=_clean(member.last_name),
        email=_clean(member.email.lower() if member.email else None),
        phone=_clean(member.phone_number),
        title=_clean(member.title),
    )


def _help_code(raw: str | None) -> str | None:
    # "Unknown" means no help was asked for: the CRM picklist stays empty.
    if not raw or raw == AssistanceRequestCode.UNKNOWN:
        return None
    return raw


def referral_link(referral_id: str, template: str = DEFAULT_REFERRAL_LINK_TEMPLATE) -> str:
    return template.format(referral_id=referral_id)


def referral_to_opportunity(referral: Referral, link_template: str = DEFAULT_REFERRAL_LINK_TEMPLATE) -> Opportunity:
    profile = referral.customer_profile
    address = profile.address if profile and profile.address else None
    details = referral.details
    requirements = details.requirements if details else None
    invite = referral.invite_context
    return Opportunity(
        name=_clean(strip_marks(referral.name or "")),
        deal_value=details.deal_value if details else None,
        currency=_clean(details.currency.upper() if details and details.currency else None),
        close_date=_close_date(details.closing_date_time) if details else None,
        notes=_clean(details.notes) if details else None,
        customer_name=_clean(profile.name) if profile else None,
        customer_address=CustomerAddress(
            line1=_clean(address.address_line1),
            line2=_clean(address.address_line2),
            city=_clean(address.city),
            state=_clean(address.state),
            postal_code=_clean(address.postal_code),
            country=_clean(address.country.upper() if address.country else None),
        )
        if address
        else CustomerAddress(),
        customer_contacts=tuple(_contact(m) for m in (profile.team if profile else [])),
        help_code=_help_code(invite.assistance_request_code if invite else None),
        solution_ids=tuple(s.id for s in (requirements.solutions if requirements else [])),
        status=referral.status,
        substatus=referral.substatus,
        referral_id=referral.id,
        referral_link=referral_link(referral.id, link_template) if referral.id else None,
        sync_enabled=True,
    )


def _canonical(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if hasattr(value, "model_dump"):
        return {k: _canonical(v) for k, v in value.model_dump().items()}
    return value


def mapped_values(opportunity: Opportunity) -> dict[str, object]:
    """The synchronised fields in a canonical, JSON-able form (marks stripped from the name)."""
    values = {field: _canonical(getattr(opportunity, field)) for field in MAPPED_FIELDS}
    values["name"] = strip_marks(opportunity.name or "") or None
    return values


def fingerprint(opportunity: Opportunity) -> str:
    """A stable hash of the mapped fields: equal fingerprints mean nothing to synchronise."""
    payload = json.dumps(mapped_values(opportunity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def changed_fields(current: Opportunity, desired: Opportunity) -> list[str]:
    """Names of mapped fields whose canonical values differ between two opportunities."""
    before, after = mapped_values(current), mapped_values(desired)
    return [field for field in MAPPED_FIELDS if before[field] != after[field]]
