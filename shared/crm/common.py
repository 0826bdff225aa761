"""What the Dynamics 365 and Salesforce adapters share: field groups and JSON value parsing.

Both adapters read the same neutral :class:`~shared.domain.opportunity.Opportunity` from rows whose amounts,
dates and product lists arrive the same way, so the parsing lives here once; anything particular to one
CRM (keys, status mapping, query literals) stays in that adapter's own modules.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from ..domain.opportunity import Opportunity

# Neutral fields the adapters write apart from the plain columns: the customer's account and the status.
CUSTOMER_FIELDS = frozenset({"customer_name", "customer_address"})
STATUS_FIELDS = frozenset({"status", "substatus"})


class CustomFieldNames(Protocol):
    """Names of the connector's custom fields on the CRM's opportunity (from settings)."""

    help: str
    products: str
    referral_id: str
    referral_link: str
    sync: str
    audit: str


def custom_field_values(
    names: CustomFieldNames,
    opportunity: Opportunity,
    wanted: Set[str],
    help_value: Callable[[str | None], Any],
    check_referral_id: Callable[[str | None], str],
    audit_max_chars: int,
) -> dict[str, Any]:
    """The custom fields among ``wanted``, keyed by the CRM's field names; both CRMs store them alike."""
    o, body = opportunity, {}
    if "help_code" in wanted:
        body[names.help] = help_value(o.help_code)
    if "solution_ids" in wanted:
        body[names.products] = ", ".join(o.solution_ids) or None
    if "referral_id" in wanted:
        body[names.referral_id] = check_referral_id(o.referral_id)
    if "referral_link" in wanted:
        body[names.referral_link] = o.referral_link
    if "sync_enabled" in wanted:
        body[names.sync] = o.sync_enabled
    if "audit" in wanted:
        body[names.audit] = o.audit[:audit_max_chars] if o.audit is not None else None
    return body


def to_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def to_date(value: Any) -> date | None:
    return None if not value else date.fromisoformat(str(value)[:10])


def split_products(value: Any) -> tuple[str, ...]:
    """Solution ids from the comma-separated products column."""
    return tuple(part.strip() for part in str(value or "").split(",") if part.strip())
