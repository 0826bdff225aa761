"""Partner Center referral -> CRM-neutral opportunity, and the fingerprint of the mapped fields."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from decimal import Decimal

from .checkmark import strip_marks
from .current_fields import CURRENT_FIELDS, current_fields
from .customer_fields import contact, customer_address
from .opportunity import MAPPED_FIELDS, Contact, CustomerAddress, Opportunity
from .referral import AssistanceRequestCode, Referral

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


def _clean_code(value: str | None) -> str | None:
    return _clean(value.upper() if value else None)


def _clean_contact(contact: Contact) -> Contact:
    return Contact(
        first_name=_clean(contact.first_name),
        last_name=_clean(contact.last_name),
        email=_clean(contact.email.lower() if contact.email else None),
        phone=_clean(contact.phone),
        title=_clean(contact.title),
    )


def _clean_address(address: CustomerAddress) -> CustomerAddress:
    return CustomerAddress(
        line1=_clean(address.line1),
        line2=_clean(address.line2),
        city=_clean(address.city),
        state=_clean(address.state),
        postal_code=_clean(address.postal_code),
        country=_clean_code(address.country),
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
        currency=_clean_code(details.currency) if details else None,
        close_date=_close_date(details.closing_date_time) if details else None,
        notes=_clean(details.notes) if details else None,
        customer_name=_clean(profile.name) if profile else None,
        customer_address=_clean_address(customer_address(address)) if address else CustomerAddress(),
        customer_contacts=tuple(_clean_contact(contact(m)) for m in (profile.team if profile else [])),
        help_code=_help_code(invite.assistance_request_code if invite else None),
        solution_ids=tuple(s.id for s in (requirements.solutions if requirements else [])),
        status=referral.status,
        substatus=referral.substatus,
        status_reason=_clean(referral.status_reason),
        referral_id=referral.id,
        referral_link=referral_link(referral.id, link_template) if referral.id else None,
        sync_enabled=True,
        **current_fields(referral),
    )


def _canonical(value: object) -> object:
    if isinstance(value, Decimal):
        # -0 is 0: Decimal's sign of zero survives normalize() and would make equal amounts differ.
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if hasattr(value, "model_dump"):
        return {k: _canonical(v) for k, v in value.model_dump().items()}
    return value


def mapped_values(opportunity: Opportunity) -> dict[str, object]:
    """The synchronised fields in a canonical, JSON-able form: marks stripped from the name, and text cleaned
    as :func:`referral_to_opportunity` cleans what Partner Center returns. A value the seller typed with stray
    spaces or in another case reads back cleaned after it was sent; compared raw, it would come back from
    Partner Center as a change and overwrite the seller's text."""
    o = opportunity
    cleaned = o.model_copy(
        update={
            "name": _clean(strip_marks(o.name or "")),
            "currency": _clean_code(o.currency),
            "notes": _clean(o.notes),
            "customer_name": _clean(o.customer_name),
            "customer_address": _clean_address(o.customer_address),
            "customer_contacts": tuple(_clean_contact(c) for c in o.customer_contacts),
            **{name: _clean(getattr(o, name)) for name in CURRENT_FIELDS},
        }
    )
    return {field: _canonical(getattr(cleaned, field)) for field in MAPPED_FIELDS}


def fingerprint(opportunity: Opportunity) -> str:
    """A stable hash of the mapped fields: equal fingerprints mean nothing to synchronise."""
    payload = json.dumps(mapped_values(opportunity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def changed_fields(current: Opportunity, desired: Opportunity) -> list[str]:
    """Names of mapped fields whose canonical values differ between two opportunities."""
    before, after = mapped_values(current), mapped_values(desired)
    return [field for field in MAPPED_FIELDS if before[field] != after[field]]
