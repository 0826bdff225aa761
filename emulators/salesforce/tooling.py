"""Salesforce emulator: the Tooling API's ``CustomField``, as an admin's tools (and ``setup-crm``) create fields.

``POST /services/data/vNN.0/tooling/sobjects/CustomField`` with ``{"FullName": "Opportunity.Name__c", "Metadata":
{...}}`` adds the field to the object: from then on it is in the describe and can be written, queried and (an
External ID) upserted by, like a field created in Setup. The metadata is checked as the platform checks it (a custom
field's API name, a label, a length for text, visible lines for a long text area, a default for a checkbox, the
values of a picklist); the answer is the Tooling API's ``{"id", "success", "errors"}``. Fields added this way
outlive :meth:`~emulators.salesforce.SalesforceEmulator.reset`, as a customisation does.

``GET tooling/query?q=SELECT Id, DeveloperName FROM CustomField WHERE TableEnumOrId = 'Opportunity' AND DeveloperName
= 'Name'`` finds custom fields (``FullName`` and ``Metadata`` only when the result is one record, as documented);
``GET`` / ``PATCH tooling/sobjects/CustomField/<id>`` read a field's ``Metadata`` and replace it (same type: e.g. a
picklist given more values).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .._server import Handler, Request, Response
from .rest import API, json_body
from .schema import (
    BOOLEAN,
    CURRENCY,
    DATE,
    DOUBLE,
    PICKLIST,
    STRING,
    TEXTAREA,
    URL,
    FieldDef,
    SalesforceError,
    bad_request,
    make_id,
)

if TYPE_CHECKING:
    from .emulator import SalesforceEmulator

_API_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|_(?!_))*__c")
MAX_TEXT = 255
MAX_LONG_TEXT = 131072
MAX_LABEL = 40
# Metadata API field types the emulator can create, and the describe type each becomes.
TYPES = {
    "Checkbox": BOOLEAN,
    "Text": STRING,
    "Url": URL,
    "Picklist": PICKLIST,
    "TextArea": TEXTAREA,
    "LongTextArea": TEXTAREA,
    "Currency": CURRENCY,
    "Number": DOUBLE,
    "Date": DATE,
}


def _integrity(message: str) -> SalesforceError:
    return bad_request("FIELD_INTEGRITY_EXCEPTION", message)


def _length(metadata: dict[str, Any], low: int, high: int, kind: str) -> int:
    length = metadata.get("length")
    if isinstance(length, bool) or not isinstance(length, int) or not low <= length <= high:
        raise _integrity(f"Length: a {kind} field's length must be from {low} to {high}.")
    return length


def _picklist(metadata: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    value_set = metadata.get("valueSet")
    definition = value_set.get("valueSetDefinition") if isinstance(value_set, dict) else None
    values = definition.get("value") if isinstance(definition, dict) else None
    if not isinstance(values, list) or not values:
        raise _integrity("Picklist: a picklist needs its values (valueSet.valueSetDefinition.value).")
    names = [str(v.get("fullName") or "") if isinstance(v, dict) else "" for v in values]
    if not all(names):
        raise _integrity("Picklist: every value needs a fullName (its API name).")
    if len({n.casefold() for n in names}) != len(names):
        raise _integrity("Picklist: duplicate values.")
    assert isinstance(value_set, dict)
    return tuple(names), bool(value_set.get("restricted", False))


def field_definition(full_name: str, metadata: Any) -> FieldDef:
    """The field a ``CustomField`` body defines, refused as the platform refuses an invalid definition."""
    name = full_name.partition(".")[2]
    if not _API_NAME.fullmatch(name):
        raise _integrity(
            f"FullName: '{full_name}' is not Object.Field__c (letters, digits and single underscores, ending in __c)."
        )
    if not isinstance(metadata, dict):
        raise bad_request("INVALID_INPUT", "Metadata: the field's definition is required.")
    label = str(metadata.get("label") or "")
    if not label or len(label) > MAX_LABEL:
        raise _integrity(f"Label: a field needs a label of at most {MAX_LABEL} characters.")
    kind = str(metadata.get("type") or "")
    if kind not in TYPES:
        raise _integrity(f"Type: '{kind}' is not a field type the emulator creates ({', '.join(TYPES)}).")
    external_id = bool(metadata.get("externalId", False))
    if external_id and kind not in ("Text", "Number"):
        raise _integrity("External ID: only a Text, Number or Email field can be an External ID.")
    length: int | None = None
    picklist: tuple[str, ...] = ()
    restricted = False
    default: Any = None
    if kind == "Text":
        length = _length(metadata, 1, MAX_TEXT, "text")
    elif kind == "LongTextArea":
        length = _length(metadata, MAX_TEXT + 1, MAX_LONG_TEXT, "long text area")
        if not isinstance(metadata.get("visibleLines"), int):
            raise _integrity("Visible Lines: a long text area needs visibleLines.")
    elif kind in ("Url", "TextArea"):
        length = MAX_TEXT
    elif kind == "Checkbox":
        if str(metadata.get("defaultValue")).lower() not in ("true", "false"):
            raise _integrity("Default Value: a checkbox needs defaultValue true or false.")
        default = str(metadata["defaultValue"]).lower() == "true"
    elif kind == "Picklist":
        picklist, restricted = _picklist(metadata)
        length = MAX_TEXT
    return FieldDef(
        name,
        TYPES[kind],
        length,
        picklist=picklist,
        restricted=restricted,
        external_id=external_id,
        default=default,
        label=label,
    )


def field_metadata(definition: FieldDef) -> dict[str, Any]:
    """The ``Metadata`` of a custom field, as the Tooling API answers it."""
    kind = {v: k for k, v in TYPES.items() if k not in ("TextArea", "LongTextArea")}.get(definition.type)
    if definition.type == TEXTAREA:
        kind = "LongTextArea" if (definition.length or 0) > MAX_TEXT else "TextArea"
    metadata: dict[str, Any] = {"label": definition.label or definition.name, "type": kind}
    if kind in ("Text", "LongTextArea"):
        metadata["length"] = definition.length
    if kind == "LongTextArea":
        metadata["visibleLines"] = 10
    if kind == "Checkbox":
        metadata["defaultValue"] = "true" if definition.default else "false"
    if kind in ("Text", "Number"):
        metadata["externalId"] = definition.external_id
    if kind == "Picklist":
        values = [{"fullName": v, "label": v, "default": False} for v in definition.picklist]
        metadata["valueSet"] = {
            "restricted": definition.restricted,
            "valueSetDefinition": {"sorted": False, "value": values},
        }
    return metadata


_QUERY = re.compile(
    r"SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+CustomField(?:\s+WHERE\s+(?P<where>.+?))?\s*", re.IGNORECASE | re.DOTALL
)
_CONDITION = re.compile(r"(?P<field>\w+)\s*=\s*'(?P<value>(?:[^'\\]|\\.)*)'")
QUERYABLE = ("Id", "DeveloperName", "TableEnumOrId", "FullName", "Metadata")


class Tooling:
    def __init__(self, emu: SalesforceEmulator) -> None:
        self.emu = emu
        self._ids: dict[tuple[str, str], str] = {}  # (object, field name) -> the field's 00N id

    def routes(self) -> list[tuple[str, str, Handler]]:
        one = rf"{API}/tooling/sobjects/CustomField/(?P<id>[A-Za-z0-9]{{15,18}})"
        return [
            ("POST", rf"{API}/tooling/sobjects/CustomField/?", self._create_field),
            ("GET", rf"{API}/tooling/query/?", self._query),
            ("GET", one, self._get_field),
            ("PATCH", one, self._update_field),
        ]

    def _id(self, object_name: str, field_name: str) -> str:
        key = (object_name, field_name.lower())
        if key not in self._ids:
            self._ids[key] = make_id("00N", len(self._ids) + 1)
        return self._ids[key]

    def _custom_fields(self) -> list[tuple[str, FieldDef]]:
        return [
            (sobject.name, definition)
            for sobject in self.emu.objects.values()
            for definition in sobject.fields.values()
            if definition.name.endswith("__c")
        ]

    def _record(self, object_name: str, definition: FieldDef, full: bool, version: str) -> dict[str, Any]:
        record_id = self._id(object_name, definition.name)
        record: dict[str, Any] = {
            "attributes": {
                "type": "CustomField",
                "url": f"/services/data/{version}/tooling/sobjects/CustomField/{record_id}",
            },
            "Id": record_id,
            "DeveloperName": definition.name.removesuffix("__c"),
            "TableEnumOrId": object_name,
        }
        if full:
            record["FullName"] = f"{object_name}.{definition.name}"
            record["Metadata"] = field_metadata(definition)
        return record

    def _query(self, request: Request) -> Response:
        text = (request.query.get("q") or "").strip()
        match = _QUERY.fullmatch(text)
        if match is None:
            raise bad_request(
                "MALFORMED_QUERY", "The emulator's Tooling API answers SELECT ... FROM CustomField [WHERE ...]"
            )
        fields = [f.strip() for f in match.group("fields").split(",")]
        unknown = [f for f in fields if f not in QUERYABLE]
        if unknown:
            raise bad_request("INVALID_FIELD", f"No such column '{unknown[0]}' on entity 'CustomField'.")
        conditions: dict[str, str] = {}
        where = match.group("where") or ""
        for part in re.split(r"\s+AND\s+", where, flags=re.IGNORECASE) if where else []:
            condition = _CONDITION.fullmatch(part.strip())
            if condition is None or condition.group("field") not in ("DeveloperName", "TableEnumOrId", "Id"):
                raise bad_request("MALFORMED_QUERY", f"The emulator cannot filter CustomField by: {part.strip()}")
            conditions[condition.group("field")] = condition.group("value")
        found = [
            (name, definition)
            for name, definition in self._custom_fields()
            if conditions.get("TableEnumOrId", name).lower() == name.lower()
            and conditions.get("DeveloperName", definition.name.removesuffix("__c")).lower()
            == definition.name.removesuffix("__c").lower()
            and conditions.get("Id", self._id(name, definition.name)) == self._id(name, definition.name)
        ]
        full = "FullName" in fields or "Metadata" in fields
        if full and len(found) > 1:
            raise bad_request(
                "MALFORMED_QUERY",
                "When retrieving results with Metadata or FullName fields, the query qualifications"
                " must specify no more than one row for retrieval.",
            )
        version = request.params["version"]
        records = [self._record(name, definition, full, version) for name, definition in found]
        for record in records:
            for key in [k for k in record if k != "attributes" and k not in fields]:
                del record[key]
        body = {"size": len(records), "totalSize": len(records), "done": True, "records": records}
        return Response(200, {**body, "entityTypeName": "CustomField"})

    def _find(self, record_id: str) -> tuple[str, FieldDef]:
        for name, definition in self._custom_fields():
            if self._id(name, definition.name) == record_id:
                return name, definition
        raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")

    def _get_field(self, request: Request) -> Response:
        name, definition = self._find(request.params["id"])
        return Response(200, self._record(name, definition, True, request.params["version"]))

    def _update_field(self, request: Request) -> Response:
        name, old = self._find(request.params["id"])
        body = json_body(request)
        if not isinstance(body, dict):
            raise bad_request("JSON_PARSER_ERROR", "The body must be a CustomField with its Metadata.")
        definition = field_definition(f"{name}.{old.name}", body.get("Metadata"))
        if definition.type != old.type:
            raise _integrity(f"Type: the emulator does not change a field's type ({old.type} to {definition.type}).")
        sobject = self.emu.org.sobject(name)
        sobject.remove(old.name)
        sobject.add(definition)
        return Response(204)

    def _create_field(self, request: Request) -> Response:
        body = json_body(request)
        if not isinstance(body, dict):
            raise bad_request("JSON_PARSER_ERROR", "The body must be a CustomField: FullName and Metadata.")
        full_name = str(body.get("FullName") or "")
        object_name = full_name.partition(".")[0]
        sobject = self.emu.org.sobject(object_name) if object_name else None
        if sobject is None:
            raise _integrity("FullName: name the object and the field, e.g. Opportunity.Name__c.")
        definition = field_definition(full_name, body.get("Metadata"))
        sobject.add(definition)  # refuses a second field of the same name: DUPLICATE_DEVELOPER_NAME
        field_id = self._id(sobject.name, definition.name)
        return Response(201, {"id": field_id, "success": True, "errors": [], "warnings": [], "infos": []})
