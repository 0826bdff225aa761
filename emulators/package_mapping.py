"""The connector's shipped field mappings, read as data: the emulated orgs have the columns they name.

The default column names live once, in ``shared/crm/<crm>/mapping.toml``. An emulator reads that file (never the
connector's code, so it cannot share the connector's mistakes) to give its organisation the custom columns and
choice values a real org would have been set up with.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@cache
def shipped_mapping(crm: str) -> dict[str, Any]:
    """The parsed ``mapping.toml`` of ``crm`` (``dynamics`` or ``salesforce``)."""
    with (ROOT / "shared" / "crm" / crm / "mapping.toml").open("rb") as handle:
        return tomllib.load(handle)


def column(crm: str, field: str) -> str:
    """The column the shipped mapping names for a neutral field."""
    return str(shipped_mapping(crm)["fields"][field]["column"])


def choice_values(crm: str, field: str) -> tuple[Any, ...]:
    """The CRM values of a choice field's table, in the file's order."""
    return tuple(shipped_mapping(crm)["fields"][field]["values"].values())


# Partner Center's current co-sell fields and Microsoft's side of the engagement: plain custom columns an org set
# up for the connector has too.
CURRENT_AND_MICROSOFT_FIELDS = (
    "solution_area",
    "solution_play",
    "partner_role",
    "purchase_intent",
    "microsoft_status",
    "microsoft_seller_name",
    "microsoft_seller_email",
    "microsoft_crm_id",
    "microsoft_notes",
)


def entry(crm: str, field: str) -> dict[str, Any]:
    """The shipped mapping's entry of a neutral field (column, type, max_length, label, values)."""
    return dict(shipped_mapping(crm)["fields"][field])
