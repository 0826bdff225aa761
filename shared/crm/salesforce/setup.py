"""``python -m shared setup-crm`` for Salesforce: the connector's Opportunity and Lead fields and its permission set.

- fields: read from ``sobjects/Opportunity/describe``; a missing one is created with the Tooling API
  (``POST tooling/sobjects/CustomField`` with its ``FullName`` and ``Metadata``), the Referral Identifier as a unique
  External ID and "How can Microsoft help?" as a restricted picklist with the mapping's values; a value missing
  from an existing picklist is appended (its ``Metadata`` read with ``tooling/query`` and the ``CustomField``
  record, and written back whole with the org's own values kept);
- the same for Lead (``sobjects/Lead/describe``): the ``[lead]`` mapping's Referral Identifier, a unique External ID
  every lead upsert is keyed on, and its deal-value field when that is custom. They are checked and made whatever
  ``SYNC_COSELL_ONLY`` says: switching leads on is an app setting, not a new setup run, and without the External ID
  every lead would fail to be created at run time; a mapping that names no lead referral-id field opts out;
- the permission set (``PermissionSet``) with object permissions (``ObjectPermissions``: read, create and edit
  Opportunity, Lead, Account and Contact, and View All of them, because the poll reads every flagged opportunity and
  every lead made from a referral, whoever owns it) and field-level security (``FieldPermissions``: read and edit on
  every custom field), assigned to the run-as user (``PermissionSetAssignment``).

A page layout section is not made: a Layout's metadata is the whole layout, and writing it would replace the org's
own; the report says what to add by hand. ``crm/salesforce/`` holds the same fields and permission set as SFDX
source for ``sf project deploy start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from ..setup_report import CustomField, SetupReport, custom_fields, guarded, lead_custom_fields
from .api import SalesforceApi
from .mapping import SalesforceMapping, soql, soql_string

OPPORTUNITY = "Opportunity"
LEAD = "Lead"
DEFAULT_PERMISSION_SET = "Cosell_Connector"
MAX_TEXT = 255
MAX_LONG_TEXT = 131072
# What the run-as user does with each object: (read, create, edit, view all).
OBJECT_ACCESS: dict[str, tuple[bool, bool, bool, bool]] = {
    "Opportunity": (True, True, True, True),
    "Lead": (True, True, True, True),
    "Account": (True, True, True, True),
    "Contact": (True, True, True, True),
}
GRANTS = ("PermissionsRead", "PermissionsCreate", "PermissionsEdit", "PermissionsViewAllRecords")
# The describe types that can hold each kind of custom field.
DESCRIBE_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("boolean",),
    "text": ("string", "textarea"),
    "url": ("url", "string"),
    "memo": ("textarea",),
    "choice": ("picklist",),
    "money": ("currency", "double"),
    "date": ("date",),
}


@dataclass(frozen=True)
class SalesforceSetupConfig:
    mapping: SalesforceMapping
    permission_set: str = DEFAULT_PERMISSION_SET
    run_as_user: str | None = None  # the integration user's username, to be given the permission set


def is_custom_field(name: str) -> bool:
    return name.lower().endswith("__c")


def custom_fields_by_object(mapping: SalesforceMapping) -> dict[str, list[CustomField]]:
    """The custom fields each object needs: the opportunity mapping's and the ``[lead]`` table's (the SFDX source in
    ``crm/salesforce/`` is written from the same)."""
    return {
        OPPORTUNITY: custom_fields(mapping, is_custom_field),
        LEAD: lead_custom_fields(mapping.lead, is_custom_field),
    }


def field_metadata(field: CustomField) -> dict[str, Any]:
    """The Metadata API definition of a custom field (Tooling ``CustomField.Metadata``; the SFDX
    ``.field-meta.xml`` holds the same)."""
    kind, length = field.shape.kind, field.shape.length
    metadata: dict[str, Any] = {"label": field.label[:40], "description": f"Partner Center co-sell: {field.label}"}
    if kind == "boolean":
        metadata.update(type="Checkbox", defaultValue="false")
    elif kind == "text" and (length or MAX_TEXT) <= MAX_TEXT:
        metadata.update(type="Text", length=length or MAX_TEXT)
        if field.shape.key:
            metadata.update(externalId=True, unique=True, caseSensitive=False)
    elif kind in ("text", "memo"):
        metadata.update(type="LongTextArea", length=max(MAX_TEXT + 1, min(length or MAX_LONG_TEXT, MAX_LONG_TEXT)))
        metadata["visibleLines"] = 10
    elif kind == "url":
        metadata.update(type="Url")
    elif kind == "choice":
        values = [{"fullName": str(v), "label": str(v), "default": False} for v in field.values.values()]
        metadata.update(
            type="Picklist",
            valueSet={"restricted": True, "valueSetDefinition": {"sorted": False, "value": values}},
        )
    elif kind == "money":
        metadata.update(type="Currency", precision=18, scale=2)
    elif kind == "date":
        metadata.update(type="Date")
    return metadata


class SalesforceSetup:
    def __init__(self, config: SalesforceSetupConfig, api: SalesforceApi) -> None:
        self.config = config
        self.api = api

    def run(self, apply: bool) -> SetupReport:
        report = SetupReport("Salesforce", apply)
        objects = custom_fields_by_object(self.config.mapping)
        for sobject, fields in objects.items():
            if fields:
                guarded(report, f"{sobject} fields", partial(self._fields, report, sobject, fields, apply))
        report.add(
            "page layout section",
            "manual",
            f"add a 'Partner Center' section with the {len(objects[OPPORTUNITY])} Opportunity fields above to its page "
            "layout "
            "(Setup > Object Manager > Opportunity > Page Layouts); setup-crm does not replace an org's layout",
        )
        name = self.config.permission_set
        permission_set = guarded(report, f"permission set {name}", lambda: self._permission_set(report, apply))
        if permission_set is not None:
            guarded(report, "object permissions", lambda: self._objects(report, permission_set, apply))
            for sobject, fields in objects.items():
                if fields:
                    grant = partial(self._field_access, report, permission_set, sobject, fields, apply)
                    guarded(report, f"field permissions on {sobject}", grant)
            guarded(report, "run-as user", lambda: self._assignment(report, permission_set, apply))
        report.add(
            "edit access to sellers' opportunities",
            "manual",
            "the connector writes opportunities the run-as user does not own: give it Read/Write through a sharing "
            "rule, or Modify All on Opportunity in its profile (Salesforce grants Modify All only with Delete, so "
            "the permission set leaves it out)",
        )
        return report

    # -- fields ---------------------------------------------------------------------------------------------------
    def _fields(self, report: SetupReport, sobject: str, fields: list[CustomField], apply: bool) -> None:
        describe = self.api.json(self.api.request("GET", f"sobjects/{sobject}/describe"))
        found = {str(d["name"]).casefold(): d for d in describe.get("fields") or []}
        for field in fields:
            what = f"field {sobject}.{field.column} ({field.label})"
            if field.shape.kind not in DESCRIBE_TYPES:
                report.add(what, "manual", f"a {field.shape.kind} field is a relationship; create it by hand")
                continue
            definition = found.get(field.column.casefold())
            if definition is None:
                self._create(report, what, sobject, field, apply)
                continue
            kind = str(definition.get("type"))
            if kind not in DESCRIBE_TYPES[field.shape.kind]:
                report.add(
                    what, "failed", f"it is {kind}; the connector needs {' or '.join(DESCRIBE_TYPES[field.shape.kind])}"
                )
            elif field.shape.key and not definition.get("externalId"):
                report.add(what, "failed", "it is not an External ID: edit the field in Setup and tick External ID")
            else:
                report.add(what, "exists", kind + (" (External ID)" if field.shape.key else ""))
                if field.shape.kind == "choice":
                    self._values(report, sobject, field, definition, apply)

    def _create(self, report: SetupReport, what: str, sobject: str, field: CustomField, apply: bool) -> None:
        metadata = field_metadata(field)
        if not apply:
            report.add(what, "missing", str(metadata["type"]))
            return
        body = {"FullName": f"{sobject}.{field.column}", "Metadata": metadata}
        if guarded(report, what, lambda: self.api.request("POST", "tooling/sobjects/CustomField", json=body)):
            report.add(what, "created", str(metadata["type"]) + (" (External ID, unique)" if field.shape.key else ""))

    def _values(
        self, report: SetupReport, sobject: str, field: CustomField, definition: dict[str, Any], apply: bool
    ) -> None:
        have = {str(v.get("value")) for v in definition.get("picklistValues") or [] if v.get("active", True)}
        missing = [str(v) for v in field.values.values() if str(v) not in have]
        what = f"values of {sobject}.{field.column}"
        if not missing:
            report.add(what, "exists", ", ".join(str(v) for v in field.values.values()))
        elif not apply:
            report.add(what, "missing", ", ".join(repr(v) for v in missing))
        elif guarded(report, what, lambda: self._add_values(sobject, field, missing)):
            report.add(what, "created", ", ".join(repr(v) for v in missing))

    def _add_values(self, sobject: str, field: CustomField, missing: list[str]) -> bool:
        """Append values to a picklist through the Tooling API: its Metadata is read and written back whole, with
        the org's own values kept (an inactive value of the same name is reported, not revived)."""
        developer_name = field.column.removesuffix("__c").removesuffix("__C")
        where = f"TableEnumOrId = {soql_string(sobject)} AND DeveloperName = {soql_string(developer_name)}"
        found = self.api.json(
            self.api.request("GET", "tooling/query", params={"q": soql("CustomField", ["Id"], where)})
        )
        records = found.get("records") or []
        if len(records) != 1:
            raise LookupError(f"the Tooling API does not find {sobject}.{field.column} as a custom field")
        path = f"tooling/sobjects/CustomField/{records[0]['Id']}"
        metadata = dict(self.api.json(self.api.request("GET", path)).get("Metadata") or {})
        definition = (metadata.get("valueSet") or {}).get("valueSetDefinition") or {}
        values = list(definition.get("value") or [])
        known = {str(v.get("fullName")) for v in values}
        if known & set(missing):
            raise LookupError(f"{', '.join(sorted(known & set(missing)))}: inactive values; activate them in Setup")
        values += [{"fullName": v, "label": v, "default": False} for v in missing]
        metadata["valueSet"] = {**metadata["valueSet"], "valueSetDefinition": {**definition, "value": values}}
        self.api.request("PATCH", path, json={"Metadata": metadata})
        return True

    # -- the permission set ---------------------------------------------------------------------------------------
    def _permission_set(self, report: SetupReport, apply: bool) -> str | None:
        name = self.config.permission_set
        what = f"permission set {name}"
        rows = list(self.api.query(soql("PermissionSet", ["Id"], f"Name = {soql_string(name)}")))
        if rows:
            report.add(what, "exists")
            return str(rows[0]["Id"])
        if not apply:
            report.add(what, "missing", "object and field permissions for the run-as user")
            return None
        body = {
            "Name": name,
            "Label": "Co-sell connector",
            "Description": "What the Partner Center co-sell connector's run-as user needs.",
        }
        created = self.api.json(self.api.request("POST", "sobjects/PermissionSet", json=body, idempotent=False))
        report.add(what, "created")
        return str(created["id"])

    def _objects(self, report: SetupReport, parent: str, apply: bool) -> None:
        query = soql("ObjectPermissions", ["Id", "SobjectType", *GRANTS], f"ParentId = {soql_string(parent)}")
        held = {str(r["SobjectType"]): r for r in self.api.query(query)}
        for sobject, access in OBJECT_ACCESS.items():
            wanted = {grant: True for grant, on in zip(GRANTS, access, strict=True) if on}
            what = f"object permissions on {sobject}"
            words = "read, create, edit, view all"
            row = held.get(sobject)
            if row is not None and all(row.get(g) for g in wanted):
                report.add(what, "exists", words)
            elif not apply:
                report.add(what, "missing", words)
            elif row is None:
                self.api.request(
                    "POST", "sobjects/ObjectPermissions", json={"ParentId": parent, "SobjectType": sobject, **wanted}
                )
                report.add(what, "created", words)
            else:
                self.api.request("PATCH", f"sobjects/ObjectPermissions/{row['Id']}", json=wanted)
                report.add(what, "created", f"{words} (added to the existing grant)")

    def _field_access(
        self, report: SetupReport, parent: str, sobject: str, fields: list[CustomField], apply: bool
    ) -> None:
        query = soql(
            "FieldPermissions",
            ["Id", "Field", "PermissionsRead", "PermissionsEdit"],
            f"ParentId = {soql_string(parent)} AND SobjectType = {soql_string(sobject)}",
        )
        held = {str(r["Field"]).casefold(): r for r in self.api.query(query)}
        wanted = {"PermissionsRead": True, "PermissionsEdit": True}
        for field in fields:
            name = f"{sobject}.{field.column}"
            what = f"field access to {name}"
            row = held.get(name.casefold())
            if row is not None and row.get("PermissionsRead") and row.get("PermissionsEdit"):
                report.add(what, "exists", "read, edit")
            elif not apply:
                report.add(what, "missing", "read, edit")
            elif row is None:
                body = {"ParentId": parent, "SobjectType": sobject, "Field": name, **wanted}
                self.api.request("POST", "sobjects/FieldPermissions", json=body)
                report.add(what, "created", "read, edit")
            else:
                self.api.request("PATCH", f"sobjects/FieldPermissions/{row['Id']}", json=wanted)
                report.add(what, "created", "read, edit (added to the existing grant)")

    def _assignment(self, report: SetupReport, parent: str, apply: bool) -> None:
        username = self.config.run_as_user
        if not username:
            report.add(
                "run-as user",
                "manual",
                "not checked: pass --run-as-user (the integration user's username) to give it "
                + self.config.permission_set,
            )
            return
        what = f"run-as user {username}"
        users = list(self.api.query(soql("User", ["Id", "IsActive"], f"Username = {soql_string(username)}")))
        if not users:
            report.add(what, "failed" if apply else "missing", "no user has this username")
            return
        user_id = str(users[0]["Id"])
        query = soql(
            "PermissionSetAssignment",
            ["Id"],
            f"AssigneeId = {soql_string(user_id)} AND PermissionSetId = {soql_string(parent)}",
        )
        if list(self.api.query(query)):
            report.add(what, "exists", f"holds {self.config.permission_set}")
        elif not apply:
            report.add(what, "missing", f"does not hold {self.config.permission_set}")
        else:
            body = {"AssigneeId": user_id, "PermissionSetId": parent}
            self.api.request("POST", "sobjects/PermissionSetAssignment", json=body)
            report.add(what, "created", f"{self.config.permission_set} assigned")
