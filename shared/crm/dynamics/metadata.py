"""The mapping checked against the organisation's own metadata (``python -m shared mapping check``).

Column definitions come from ``EntityDefinitions(LogicalName='opportunity')/Attributes`` (and the account's,
for the country column); the options of choice columns and the statuses of the opportunity from the same
collection cast to ``PicklistAttributeMetadata`` / ``StatusAttributeMetadata`` with their ``OptionSet``
expanded, as the Web API documents for reading table definitions.
"""

from __future__ import annotations

from typing import Any

from ..org_columns import left_out as _left_out
from .mapping import DataverseMapping
from .webapi import DataverseRows

# The Dataverse attribute types each mapping type can write to.
ATTRIBUTE_TYPES: dict[str, tuple[str, ...]] = {
    "text": ("String", "Memo"),
    "memo": ("Memo", "String"),
    "list": ("String", "Memo"),
    "money": ("Money", "Decimal", "Double"),
    "date": ("DateTime",),
    "choice": ("Picklist",),
    "lookup": ("Lookup",),
    "boolean": ("Boolean",),
}


def _definitions(web: DataverseRows, entity: str, cast: str = "") -> list[dict[str, Any]]:
    path = f"EntityDefinitions(LogicalName='{entity}')/Attributes" + (f"/Microsoft.Dynamics.CRM.{cast}" if cast else "")
    params = {"$select": "LogicalName"} if cast else {"$select": "LogicalName,AttributeType"}
    if cast:
        params["$expand"] = "OptionSet($select=Options)"
    return list((web.get(path, params) or {}).get("value", []))


def _options(definition: dict[str, Any]) -> list[dict[str, Any]]:
    return list((definition.get("OptionSet") or {}).get("Options") or [])


def mapping_problems(web: DataverseRows, mapping: DataverseMapping) -> list[str]:
    """Every mapped column missing from the organisation, of a type the mapping cannot write, or given a choice
    or status value the column does not have."""
    types = {str(a["LogicalName"]): str(a.get("AttributeType")) for a in _definitions(web, "opportunity")}
    problems: list[str] = []

    def check(path: str, column: str, kind: str, optional: bool = False) -> None:
        found = types.get(column)
        if found is None:
            problems.append(f"{path}.column: '{column}' is not a column of the opportunity table{_left_out(optional)}")
        elif found not in ATTRIBUTE_TYPES[kind]:
            wanted = " or ".join(ATTRIBUTE_TYPES[kind])
            problems.append(f"{path}.column: '{column}' is {found} in Dataverse; a {kind} field needs {wanted}")

    for name, entry in mapping.mapped():
        check(f"fields.{name}", entry.column, entry.type, entry.optional)
    for index, extra in enumerate(mapping.extra):
        check(f"extra.{index}", extra.column, extra.type)

    choices = {
        str(d["LogicalName"]): {o.get("Value") for o in _options(d)}
        for d in _definitions(web, "opportunity", "PicklistAttributeMetadata")
    }
    for name, entry in mapping.mapped():
        if entry.type == "choice" and entry.column in choices:
            for code, value in entry.values.items():
                if value not in choices[entry.column]:
                    problems.append(f"fields.{name}.values.{code}: {value} is not an option of {entry.column}")

    statuses = {
        (o.get("State"), o.get("Value"))
        for d in _definitions(web, "opportunity", "StatusAttributeMetadata")
        for o in _options(d)
    }
    for key in mapping.status.write:
        status, _, substatus = key.partition("/")
        target = mapping.status.target(status, substatus or None)
        if target is not None and statuses and target not in statuses:
            problems.append(f"status.write.{key}: statuscode {target[1]} is not a status of statecode {target[0]}")

    country = mapping.customer.account_country
    if country not in {str(a["LogicalName"]) for a in _definitions(web, "account")}:
        problems.append(f"customer.account_country: '{country}' is not a column of the account table")
    return problems
