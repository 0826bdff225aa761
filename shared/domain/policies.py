"""Decisions that need no I/O: who wins a conflict, which way a field travels, which status moves Partner
Center allows.

Who owns each field and which way it travels are declared by the CRM's field mapping (``shared/crm/*/mapping.toml``);
``CONFLICT_RULES`` overrides owners. These functions only apply what they are given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .opportunity import MAPPED_FIELDS, Opportunity

Side = Literal["pc", "crm"]
Direction = Literal["both", "pc->crm", "crm->pc"]


def parse_field_owners(text: str) -> dict[str, Side]:
    """``"notes=pc,deal_value=crm"`` -> the owners it names (overrides of the mapping's)."""
    owners: dict[str, Side] = {}
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


def travels_to(field: str, side: Side, directions: Mapping[str, Direction]) -> bool:
    """Whether changes of ``field`` are sent to ``side`` (a field not named travels both ways)."""
    return directions.get(field, "both") in ("both", "crm->pc" if side == "pc" else "pc->crm")


def only_what_travels(opportunity: Opportunity, directions: Mapping[str, Direction], side: Side) -> Opportunity:
    """``opportunity`` with the fields that never travel to ``side`` left empty: what a new record there gets."""
    empty: dict[str, Any] = {
        name: Opportunity.model_fields[name].get_default(call_default_factory=True)
        for name in MAPPED_FIELDS
        if not travels_to(name, side, directions)
    }
    return opportunity.model_copy(update=empty) if empty else opportunity


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
