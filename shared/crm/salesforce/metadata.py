"""The mapping checked against the org's own metadata (``python -m shared mapping check``).

``GET sobjects/Opportunity/describe`` lists every field with its type and picklist values; each mapped field,
choice value and stage is compared with it. Field API names are case-insensitive in Salesforce. A
single-currency org has no ``CurrencyIsoCode`` (the describe is how the adapter tells the kinds of org apart):
there the currency is the org's, and the currency entry's field is not used.
"""

from __future__ import annotations

from typing import Any

from ..org_columns import left_out as _left_out
from .api import SalesforceApi
from .mapping import CURRENCY_FIELD, SalesforceMapping

# The Salesforce field types each mapping type can write to.
FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "text": ("string", "textarea", "url", "email", "phone"),
    "memo": ("textarea", "string"),
    "list": ("string", "textarea"),
    "money": ("currency", "double"),
    "date": ("date",),
    "choice": ("picklist",),
    "lookup": ("picklist",),  # CurrencyIsoCode
    "boolean": ("boolean",),
}


def _values(definition: dict[str, Any]) -> set[str]:
    return {str(v.get("value")) for v in definition.get("picklistValues") or [] if v.get("active", True)}


def mapping_problems(api: SalesforceApi, mapping: SalesforceMapping) -> list[str]:
    """Every mapped field missing from Opportunity, of a type the mapping cannot write, or given a picklist value
    or stage the org does not have."""
    describe = api.json(api.request("GET", "sobjects/Opportunity/describe"))
    fields = {str(d["name"]).casefold(): d for d in describe.get("fields") or []}
    problems: list[str] = []

    def check(path: str, column: str, kind: str, optional: bool = False) -> dict[str, Any] | None:
        found = fields.get(column.casefold())
        if found is None:
            problems.append(f"{path}.column: '{column}' is not a field of Opportunity{_left_out(optional)}")
        elif found.get("type") not in FIELD_TYPES[kind]:
            wanted = " or ".join(FIELD_TYPES[kind])
            problems.append(
                f"{path}.column: '{column}' is {found.get('type')} in Salesforce; a {kind} field needs {wanted}"
            )
        return found

    single_currency = CURRENCY_FIELD.casefold() not in fields
    for name, entry in mapping.mapped():
        if name == "currency" and single_currency:
            # The adapter reads the org's currency instead; only a field of the org's own choosing is worth a word.
            if entry.column.casefold() != CURRENCY_FIELD.casefold():
                problems.append(
                    f"fields.currency.column: '{entry.column}' is not used: this org has a single currency, which is "
                    "the currency of every opportunity"
                )
            continue
        definition = check(f"fields.{name}", entry.column, entry.type, entry.optional)
        if definition is not None and entry.type == "choice":
            allowed = _values(definition)
            for code, value in entry.values.items():
                if value not in allowed:
                    problems.append(f"fields.{name}.values.{code}: '{value}' is not a value of {entry.column}")
    for index, extra in enumerate(mapping.extra):
        check(f"extra.{index}", extra.column, extra.type)
    stages = _values(fields.get("stagename") or {})
    for key, stage in mapping.status.stages.items():
        if stage not in stages:
            problems.append(f"status.stages.{key}: '{stage}' is not a stage of this org")
    return problems
