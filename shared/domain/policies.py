"""Decisions that need no I/O: who wins a conflict, which status moves Partner Center allows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from .opportunity import MAPPED_FIELDS

Side = Literal["pc", "crm"]

# When both sides changed a field since the last sync: Partner Center owns its workflow fields and what
# Microsoft decides; the seller's CRM owns the commercial facts the seller maintains.
DEFAULT_FIELD_OWNERS: dict[str, Side] = {
    "status": "pc",
    "substatus": "pc",
    "help_code": "pc",
    "referral_id": "pc",
    "referral_link": "pc",
    "name": "crm",
    "deal_value": "crm",
    "currency": "crm",
    "close_date": "crm",
    "notes": "crm",
    "customer_name": "crm",
    "customer_address": "crm",
    "customer_contacts": "crm",
    "solution_ids": "crm",
}


def parse_field_owners(text: str) -> dict[str, Side]:
    """``"notes=pc,deal_value=crm"`` -> overrides of :data:`DEFAULT_FIELD_OWNERS`."""
    owners = dict(DEFAULT_FIELD_OWNERS)
    for part in (p.strip() for p in text.split(",") if p.strip()):
        field, _, side = part.partition("=")
        field, side = field.strip(), side.strip().lower()
        if field not in MAPPED_FIELDS:
            raise ValueError(f"'{field}' is not a synchronised field ({', '.join(MAPPED_FIELDS)})")
        if side not in ("pc", "crm"):
            raise ValueError(f"owner of '{field}' must be 'pc' or 'crm', not '{side}'")
        owners[field] = side  # type: ignore[assignment]
    return owners


def winner(field: str, owners: Mapping[str, Side]) -> Side:
    return owners.get(field, "pc")


# Partner Center's status table: the statuses each status may move to, and the substatuses each allows.
NEXT_STATUS: dict[str, frozenset[str]] = {
    "New": frozenset({"New", "Active", "Closed"}),
    "Active": frozenset({"Active", "Closed"}),
    "Closed": frozenset({"Closed"}),
}
SUBSTATUS_OF: dict[str, frozenset[str]] = {
    "New": frozenset({"Pending", "Received"}),
    "Active": frozenset({"Accepted"}),
    "Closed": frozenset({"Won", "Lost", "Declined", "Expired"}),
}


def transition_allowed(current: str | None, status: str | None, substatus: str | None) -> bool:
    if status is None or current is None:
        return False
    if status not in NEXT_STATUS.get(current, frozenset()):
        return False
    return substatus is None or substatus in SUBSTATUS_OF.get(status, frozenset())


def is_closed(status: str | None) -> bool:
    return status == "Closed"
