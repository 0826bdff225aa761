"""Dataverse emulator: table definitions, as the Web API serves them under ``EntityDefinitions``.

``GET EntityDefinitions(LogicalName='<table>')/Attributes`` lists the table's columns (``LogicalName``,
``SchemaName``, ``AttributeType``, ``MetadataId``; ``$select`` narrows them), and the same path cast to a
metadata type (``/Microsoft.Dynamics.CRM.PicklistAttributeMetadata``, ``StatusAttributeMetadata``,
``StateAttributeMetadata``, ...) keeps the columns of that type, with ``$expand=OptionSet`` adding their
options. Lookup columns are listed under their own name (``transactioncurrencyid``), not as ``_x_value``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from .schema import (
    BIGINT,
    BOOL,
    CHOICE,
    CODE_NOT_FOUND,
    CODE_QUERY,
    DATE,
    DATETIME,
    DECIMAL,
    GUID,
    INT,
    MEMO,
    MONEY,
    OPPORTUNITY_STATUSES,
    STRING,
    ODataError,
    Table,
    bad_request,
)

ATTRIBUTE_TYPES = {
    STRING: "String",
    MEMO: "Memo",
    INT: "Integer",
    BIGINT: "BigInt",
    CHOICE: "Picklist",
    DECIMAL: "Decimal",
    MONEY: "Money",
    BOOL: "Boolean",
    DATE: "DateTime",
    DATETIME: "DateTime",
    GUID: "Uniqueidentifier",
}
PROPERTIES = ("MetadataId", "LogicalName", "SchemaName", "AttributeType")
STATE_LABELS = {0: "Open", 1: "Won", 2: "Lost"}
_EXPAND = re.compile(r"OptionSet(?:\(.*\))?")


def _attribute_type(table: Table, column: str) -> str:
    if column == "statecode":
        return "State"
    if column == "statuscode":
        return "Status"
    if column in table.lookups:
        navs = [nav for nav in table.navs.values() if nav.column == column]
        if any(nav.also for nav in navs):
            return "Owner"
        return "Customer" if len(navs) > 1 else "Lookup"
    return ATTRIBUTE_TYPES[table.columns[column]]


def _options(table: Table, column: str, kind: str) -> list[dict[str, Any]]:
    if kind == "Picklist":
        return [{"Value": v, "Label": _label(str(v))} for v in sorted(table.choices.get(column, ()))]
    if kind == "State":
        states = OPPORTUNITY_STATUSES if table.logical_name == "opportunity" else {0: (1,), 1: (2,)}
        return [{"Value": state, "Label": _label(STATE_LABELS.get(state, str(state)))} for state in states]
    if kind == "Status":
        states = OPPORTUNITY_STATUSES if table.logical_name == "opportunity" else {0: (1,), 1: (2,)}
        return [
            {"Value": code, "State": state, "Label": _label(str(code))}
            for state, codes in states.items()
            for code in codes
        ]
    return []


def _label(text: str) -> dict[str, Any]:
    return {"UserLocalizedLabel": {"Label": text, "LanguageCode": 1033}}


def attributes(table: Table, cast: str | None, query: dict[str, str]) -> list[dict[str, Any]]:
    """The table's attribute definitions, narrowed to ``cast`` and shaped by ``$select`` / ``$expand``."""
    selected = [p.strip() for p in query.get("$select", "").split(",") if p.strip()] or list(PROPERTIES)
    unknown = [p for p in selected if p not in PROPERTIES]
    if unknown:
        raise bad_request(f"Could not find a property named '{unknown[0]}' on type 'AttributeMetadata'.", CODE_QUERY)
    expand = query.get("$expand", "").strip()
    if expand and not _EXPAND.fullmatch(expand):
        raise bad_request(f"The $expand '{expand}' is not supported by the Dataverse emulator.", CODE_QUERY)
    if expand and not cast:
        raise bad_request("Could not find a property named 'OptionSet' on type 'AttributeMetadata'.", CODE_QUERY)
    wanted_type = cast.removesuffix("AttributeMetadata") if cast else None
    found = []
    for column in table.columns:
        name = column[1:].removesuffix("_value") if column in table.lookups else column
        kind = _attribute_type(table, column)
        if wanted_type and kind != wanted_type:
            continue
        full = {
            "@odata.type": f"#Microsoft.Dynamics.CRM.{kind}AttributeMetadata",
            "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/{table.logical_name}/{name}")),
            "LogicalName": name,
            "SchemaName": name,
            "AttributeType": kind,
        }
        item = {key: full[key] for key in ("@odata.type", "MetadataId", *selected)}
        if expand:
            item["OptionSet"] = {"Options": _options(table, column, kind)}
        found.append(item)
    return list({item["LogicalName"]: item for item in found}.values())


def table_named(tables: dict[str, Table], logical_name: str) -> Table:
    for table in tables.values():
        if table.logical_name == logical_name:
            return table
    raise ODataError(404, f"Could not find entity with LogicalName = '{logical_name}'.", "0x80040217")


# -- customising a table: new columns, options and alternate keys -----------------------------------------------------
# The attribute metadata types a column can be created as, and the emulator's column type for each.
CREATABLE = {
    "StringAttributeMetadata": STRING,
    "MemoAttributeMetadata": MEMO,
    "BooleanAttributeMetadata": BOOL,
    "PicklistAttributeMetadata": CHOICE,
    "MoneyAttributeMetadata": MONEY,
    "DecimalAttributeMetadata": DECIMAL,
    "IntegerAttributeMetadata": INT,
    "DateTimeAttributeMetadata": DATE,
}
MAX_LENGTHS = {STRING: 4000, MEMO: 1048576}
KEY_TYPES = frozenset({STRING, INT, DECIMAL, CHOICE, DATE, DATETIME, GUID})
_SCHEMA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{1,7}_[A-Za-z0-9_]+")


def _has_label(label: Any) -> bool:
    localized = label.get("LocalizedLabels") if isinstance(label, dict) else None
    return bool(localized) and all(
        isinstance(item, dict) and str(item.get("Label") or "").strip() for item in localized
    )


def new_attribute(table: Table, body: Any) -> tuple[str, str, frozenset[int]]:
    """(logical name, column type, options) of the column ``body`` defines, refused as the service refuses an
    incomplete or clashing definition."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be an attribute metadata object.")
    odata_type = str(body.get("@odata.type") or "").removeprefix("#").removeprefix("Microsoft.Dynamics.CRM.")
    if odata_type not in CREATABLE:
        raise bad_request(f"'{odata_type or 'missing @odata.type'}' is not an attribute type that can be created here.")
    kind = CREATABLE[odata_type]
    schema_name = str(body.get("SchemaName") or "")
    if not _SCHEMA_NAME.fullmatch(schema_name):
        raise bad_request(
            f"SchemaName '{schema_name}' is not valid: a custom column's name starts with its publisher's "
            "customization prefix and an underscore (e.g. new_Name)."
        )
    logical = schema_name.lower()
    if logical in table.columns or f"_{logical}_value" in table.columns:
        raise bad_request(
            f"An attribute with the name {schema_name} already exists on {table.logical_name}.", "0x80047013"
        )
    if not _has_label(body.get("DisplayName")):
        raise bad_request("The attribute's DisplayName needs at least one localized label.")
    if kind in MAX_LENGTHS:
        length = body.get("MaxLength")
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_LENGTHS[kind]:
            raise bad_request(f"MaxLength of a {odata_type} must be a whole number from 1 to {MAX_LENGTHS[kind]}.")
    options: frozenset[int] = frozenset()
    option_set = body.get("OptionSet")
    if kind == BOOL:
        if not isinstance(option_set, dict) or not all(
            isinstance(option_set.get(side), dict) for side in ("TrueOption", "FalseOption")
        ):
            raise bad_request("A BooleanAttributeMetadata needs an OptionSet with TrueOption and FalseOption.")
    if kind == CHOICE:
        items = option_set.get("Options") if isinstance(option_set, dict) else None
        if not isinstance(items, list) or not items:
            raise bad_request(
                "A PicklistAttributeMetadata needs an OptionSet with its Options (or a global option set)."
            )
        values = [item.get("Value") for item in items if isinstance(item, dict)]
        if len(values) != len(items) or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise bad_request("Every option needs a whole-number Value and a Label.")
        if not all(_has_label(item.get("Label")) for item in items):
            raise bad_request("Every option needs a whole-number Value and a Label.")
        if len(set(values)) != len(values):
            raise bad_request("The option values of a choice must be unique.")
        options = frozenset(values)
    return logical, kind, options


def new_option(table: Table, body: Any) -> tuple[str, int]:
    """(column, value) of an ``InsertOptionValue`` request for a local choice of ``table``."""
    column = str(body.get("AttributeLogicalName") or "") if isinstance(body, dict) else ""
    value = body.get("Value") if isinstance(body, dict) else None
    if table.columns.get(column) != CHOICE:
        raise bad_request(f"'{column}' is not a choice column of {table.logical_name}.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("InsertOptionValue needs the new option's whole-number Value.")
    if value in table.choices.get(column, frozenset()):
        raise bad_request(f"The value {value} is already used by an option of {column}.", "0x80044184")
    if not _has_label(body.get("Label")):
        raise bad_request("InsertOptionValue needs the new option's Label.")
    return column, value


def key_name(columns: tuple[str, ...]) -> str:
    return "_".join(columns) + "_key"


def key_definitions(table: Table, names: dict[tuple[str, ...], str], query: dict[str, str]) -> list[dict[str, Any]]:
    """The table's alternate keys as ``EntityKeyMetadata`` (their indexes are built at once here: Active)."""
    full_keys = ("MetadataId", "SchemaName", "LogicalName", "KeyAttributes", "EntityKeyIndexStatus")
    selected = [p.strip() for p in query.get("$select", "").split(",") if p.strip()] or list(full_keys)
    unknown = [p for p in selected if p not in full_keys]
    if unknown:
        raise bad_request(f"Could not find a property named '{unknown[0]}' on type 'EntityKeyMetadata'.", CODE_QUERY)
    found = []
    for columns in table.keys:
        name = names.get(columns, key_name(columns))
        full = {
            "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/{table.logical_name}/key/{name}")),
            "SchemaName": name,
            "LogicalName": name.lower(),
            "KeyAttributes": list(columns),
            "EntityKeyIndexStatus": "Active",
        }
        found.append({"@odata.type": "#Microsoft.Dynamics.CRM.EntityKeyMetadata", **{k: full[k] for k in selected}})
    return found


def new_key(table: Table, body: Any) -> tuple[str, tuple[str, ...]]:
    """(schema name, columns) of the alternate key ``body`` defines."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be an entity key metadata object.")
    schema_name = str(body.get("SchemaName") or "")
    columns = body.get("KeyAttributes")
    if not _SCHEMA_NAME.fullmatch(schema_name):
        raise bad_request(f"SchemaName '{schema_name}' is not valid for an entity key.")
    if not _has_label(body.get("DisplayName")):
        raise bad_request("The key's DisplayName needs at least one localized label.")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise bad_request("KeyAttributes must list the key's columns by logical name.")
    for column in columns:
        if column not in table.columns:
            raise bad_request(f"Could not find an attribute named '{column}' on {table.logical_name}.", CODE_NOT_FOUND)
        if table.columns[column] not in KEY_TYPES or column in table.lookups:
            raise bad_request(f"The attribute '{column}' cannot be part of an entity key (its type is not allowed).")
    key = tuple(columns)
    if any(set(key) == set(existing) for existing in table.keys):
        raise bad_request(f"An entity key with the attributes {', '.join(key)} already exists on {table.logical_name}.")
    return schema_name, key
