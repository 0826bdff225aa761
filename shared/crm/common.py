"""What the Dynamics 365 and Salesforce adapters share: field groups and JSON value parsing.

Both adapters read the same neutral :class:`~shared.domain.opportunity.Opportunity` from rows whose amounts,
dates and product lists arrive the same way, so the parsing lives here once; anything particular to one
CRM (keys, status mapping, query literals) stays in that adapter's own modules.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

# Neutral fields the adapters write apart from the plain columns: the customer's account and the status.
CUSTOMER_FIELDS = frozenset({"customer_name", "customer_address"})
STATUS_FIELDS = frozenset({"status", "substatus"})


def to_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def to_date(value: Any) -> date | None:
    return None if not value else date.fromisoformat(str(value)[:10])


def split_products(value: Any) -> tuple[str, ...]:
    """Solution ids from the comma-separated products column."""
    return tuple(part.strip() for part in str(value or "").split(",") if part.strip())
