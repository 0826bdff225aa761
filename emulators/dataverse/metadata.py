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
