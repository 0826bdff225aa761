"""``python -m shared setup-crm`` for Dynamics 365: the connector's columns, key and security role in Dataverse.

Everything goes through the Dataverse Web API, as the metadata documentation describes it:

- columns: read from ``EntityDefinitions(LogicalName='opportunity')/Attributes`` and created by POSTing an
  ``<Type>AttributeMetadata`` there (a choice with its local ``OptionSet``); a missing option of an existing
  choice is added with the ``InsertOptionValue`` action; what was created is published with ``PublishXml``;
- the alternate key on the referral-id column: ``EntityDefinitions(LogicalName='opportunity')/Keys``;
- the same for the lead table (``EntityDefinitions(LogicalName='lead')``): the ``[lead]`` mapping's referral-id column
  and its alternate key, which every lead create is keyed on. They are checked and made whatever
  ``SYNC_COSELL_ONLY`` says: switching leads on is an app setting, not a new setup run, and without the key every
  lead would fail to be created at run time; a mapping that names no lead referral-id column opts out;
- the security role the application user needs: ``roles`` in the root business unit, its privileges read with
  ``RetrieveRolePrivilegesRole`` and added with ``AddPrivilegesRole`` (organisation-wide: the poll reads every
  flagged opportunity and lead, whoever owns it), and given to the application user through
  ``systemuserroles_association``.

A form section is not made: forms are ``systemform`` rows whose layout is FormXml, and rewriting an
organisation's customised form blind could lose its changes; the report says what to add by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import requests

from ...httpclient import ApiClient, TokenProvider, create_once
from ..setup_report import CustomField, SetupReport, custom_fields, guarded, lead_custom_fields
from .auth import SERVICE
from .delta import report_change_tracking
from .mapping import DataverseMapping
from .webapi import ODATA_HEADERS, DataverseRows, web_api_root

OPPORTUNITY = "opportunity"
LEAD = "lead"
DEFAULT_ROLE = "Co-sell connector"
# The attribute metadata type each custom field is created as, and the AttributeType values that can hold it.
METADATA_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ("BooleanAttributeMetadata", ("Boolean",)),
    "text": ("StringAttributeMetadata", ("String", "Memo")),
    "url": ("StringAttributeMetadata", ("String",)),
    "memo": ("MemoAttributeMetadata", ("Memo",)),
    "choice": ("PicklistAttributeMetadata", ("Picklist",)),
    "money": ("MoneyAttributeMetadata", ("Money", "Decimal")),
    "date": ("DateTimeAttributeMetadata", ("DateTime",)),
}
MEMO_MAX = 1048576
STRING_MAX = 4000
# What the application user does, privilege by privilege (all organisation-wide).
PRIVILEGES: dict[str, str] = {
    "prvReadOpportunity": "poll flagged opportunities (change tracking needs organisation-wide read)",
    "prvWriteOpportunity": "write Partner Center's changes, the Referral Identifier, Link, Audit and ✔/✖",
    "prvCreateOpportunity": "create an opportunity for each new referral",
    "prvAppendOpportunity": "link an opportunity to its account and contact",
    "prvAppendToOpportunity": "record the close of a won or lost opportunity",
    "prvAssignOpportunity": "give a new opportunity to the owner INBOUND_OWNER names",
    "prvReadAccount": "find the customer's account",
    "prvCreateAccount": "create the customer's account",
    "prvWriteAccount": "keep the customer's account in step",
    "prvAppendToAccount": "make the account the opportunity's customer",
    "prvReadContact": "find the customer's contacts by e-mail",
    "prvCreateContact": "create the customer's contacts",
    "prvWriteContact": "keep the customer's contacts in step",
    "prvAppendContact": "link a contact to its account",
    "prvAppendToContact": "make a contact the opportunity's contact",
    "prvReadTransactionCurrency": "read the currency of a deal",
    "prvCreateActivity": "close an opportunity as won or lost (the opportunity close activity)",
    "prvReadActivity": "read the opportunity close",
    "prvReadUser": "check the user INBOUND_OWNER names",
    "prvReadTeam": "check the team INBOUND_OWNER names",
    "prvReadLead": "poll the leads made from Partner Center leads (SYNC_COSELL_ONLY=false)",
    "prvCreateLead": "create a lead for each new Partner Center lead",
    "prvWriteLead": "write Partner Center's changes to a lead, and find a lead whose create was retried",
    "prvAssignLead": "give a new lead to the owner INBOUND_OWNER names",
}
DEPTHS = ("Basic", "Local", "Deep", "Global")


@dataclass(frozen=True)
class DataverseSetupConfig:
    org_url: str
    api_version: str
    mapping: DataverseMapping
    role_name: str = DEFAULT_ROLE
    application_id: str | None = None  # the app's identity (its application/client id), to be given the role
    language_code: int = 1033
    timeout: float = 30.0


def _label(text: str, language: int) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": language}
        ],
    }


def _definition(entity: str) -> str:
    return f"EntityDefinitions(LogicalName='{entity}')"


def _quoted(text: str) -> str:
    return text.replace("'", "''")


class DataverseSetup:
    def __init__(
        self, config: DataverseSetupConfig, token: TokenProvider | None, session: requests.Session | None = None
    ) -> None:
        self.config = config
        self.api = ApiClient(
            SERVICE,
            web_api_root(config.org_url, config.api_version),
            token,
            timeout=config.timeout,
            default_headers=ODATA_HEADERS,
            session=session,
        )
        self.web = DataverseRows(self.api)

    # -- the whole run ------------------------------------------------------------------------------------------
    def run(self, apply: bool) -> SetupReport:
        report = SetupReport("Dynamics 365 (Dataverse)", apply)
        fields = custom_fields(self.config.mapping, is_custom_column)
        tables = {OPPORTUNITY: fields, LEAD: lead_custom_fields(self.config.mapping.lead, is_custom_column)}
        changed = [name for name, columns in tables.items() if columns and self._table(report, name, columns, apply)]
        if changed:
            guarded(report, _publish_step(changed), lambda: self._publish(report, changed))
        report.add(
            "form section",
            "manual",
            f"add a 'Partner Center' section with the {len(fields)} opportunity columns above to its main form in "
            "the form designer (setup-crm does not rewrite an organisation's FormXml)",
        )
        tracking = f"change tracking on {OPPORTUNITY}"
        guarded(report, tracking, lambda: report_change_tracking(report, self.web, OPPORTUNITY))
        role = guarded(report, f"security role '{self.config.role_name}'", lambda: self._role(report, apply))
        if role is not None:
            guarded(report, "role privileges", lambda: self._privileges(report, role, apply))
            guarded(report, "application user", lambda: self._assignment(report, role, apply))
        return report

    # -- columns ------------------------------------------------------------------------------------------------
    def _table(self, report: SetupReport, entity: str, fields: list[CustomField], apply: bool) -> bool:
        """One table's custom columns and the alternate key on its referral-id column; True when a column was
        created (the table then needs publishing)."""
        created = guarded(report, f"{entity} columns", lambda: self._columns(report, entity, fields, apply))
        referral = next((f for f in fields if f.shape.key), None)
        if referral is not None:
            what = f"alternate key on {referral.column} ({entity})"
            guarded(report, what, lambda: self._key(report, entity, referral, apply))
        return bool(created)

    def _columns(self, report: SetupReport, entity: str, fields: list[CustomField], apply: bool) -> bool:
        attributes = self.web.get(f"{_definition(entity)}/Attributes", {"$select": "LogicalName,AttributeType"}) or {}
        types = {str(a["LogicalName"]): str(a.get("AttributeType")) for a in attributes.get("value", [])}
        created = False
        for field in fields:
            what = f"{entity} column {field.column} ({field.label})"
            if field.shape.kind not in METADATA_TYPES:
                report.add(what, "manual", f"a {field.shape.kind} column is a relationship; create it by hand")
                continue
            found = types.get(field.column)
            allowed = METADATA_TYPES[field.shape.kind][1]
            if found is not None and found not in allowed:
                report.add(what, "failed", f"it is {found}; the connector needs {' or '.join(allowed)}")
            elif found is not None:
                report.add(what, "exists", found)
                if field.shape.kind == "choice":
                    self._options(report, entity, field, apply)
            elif not apply:
                report.add(what, "missing", METADATA_TYPES[field.shape.kind][0].removesuffix("AttributeMetadata"))
            else:
                kind = METADATA_TYPES[field.shape.kind][0].removesuffix("AttributeMetadata")
                if guarded(report, what, partial(self._create_attribute, entity, field)):
                    report.add(what, "created", kind)
                    created = True
        return created

    def _create_attribute(self, entity: str, field: CustomField) -> bool:
        self.api.request("POST", f"{_definition(entity)}/Attributes", json=self._attribute(field), idempotent=False)
        return True

    def _attribute(self, field: CustomField) -> dict[str, Any]:
        language = self.config.language_code
        kind = field.shape.kind
        body: dict[str, Any] = {
            "@odata.type": f"Microsoft.Dynamics.CRM.{METADATA_TYPES[kind][0]}",
            "SchemaName": field.column,
            "DisplayName": _label(field.label, language),
            "Description": _label(f"Partner Center co-sell connector: {field.label}", language),
            "RequiredLevel": {"Value": "None", "CanBeChanged": True},
        }
        if kind in ("text", "url"):
            body["MaxLength"] = min(field.shape.length or 100, STRING_MAX)
            body["FormatName"] = {"Value": "Url" if kind == "url" else "Text"}
        elif kind == "memo":
            body["MaxLength"] = min(field.shape.length or MEMO_MAX, MEMO_MAX)
            body["FormatName"] = {"Value": "TextArea"}
        elif kind == "boolean":
            body["DefaultValue"] = False
            body["OptionSet"] = {
                "@odata.type": "Microsoft.Dynamics.CRM.BooleanOptionSetMetadata",
                "TrueOption": {"Value": 1, "Label": _label("Yes", language)},
                "FalseOption": {"Value": 0, "Label": _label("No", language)},
            }
        elif kind == "choice":
            body["OptionSet"] = {
                "@odata.type": "Microsoft.Dynamics.CRM.OptionSetMetadata",
                "IsGlobal": False,
                "OptionSetType": "Picklist",
                "Options": [
                    {"Value": value, "Label": _label(field.option_label(code), language)}
                    for code, value in field.values.items()
                ],
            }
        elif kind == "money":
            body["PrecisionSource"] = 2  # the currency's precision
        elif kind == "date":
            body["Format"] = "DateOnly"
            body["DateTimeBehavior"] = {"Value": "DateOnly"}
        return body

    def _options(self, report: SetupReport, entity: str, field: CustomField, apply: bool) -> None:
        path = f"{_definition(entity)}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
        answer = self.web.get(path, {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}) or {}
        definition = next((d for d in answer.get("value", []) if d.get("LogicalName") == field.column), {})
        have = {o.get("Value") for o in (definition.get("OptionSet") or {}).get("Options") or []}
        missing = [(code, value) for code, value in field.values.items() if value not in have]
        what = f"options of {entity}.{field.column}"
        if not missing:
            report.add(what, "exists", ", ".join(str(v) for v in field.values.values()))
            return
        listed = ", ".join(f"{value} ({field.option_label(code)})" for code, value in missing)
        if not apply:
            report.add(what, "missing", listed)
            return
        for code, value in missing:
            self.api.request(
                "POST",
                "InsertOptionValue",
                json={
                    "EntityLogicalName": entity,
                    "AttributeLogicalName": field.column,
                    "Value": value,
                    "Label": _label(field.option_label(code), self.config.language_code),
                },
                idempotent=False,
            )
        report.add(what, "created", listed)

    def _publish(self, report: SetupReport, entities: list[str]) -> None:
        listed = "".join(f"<entity>{entity}</entity>" for entity in entities)
        xml = f"<importexportxml><entities>{listed}</entities></importexportxml>"
        self.api.request("POST", "PublishXml", json={"ParameterXml": xml})
        report.add(_publish_step(entities), "created", "PublishXml")

    # -- the alternate key --------------------------------------------------------------------------------------
    def _key(self, report: SetupReport, entity: str, field: CustomField, apply: bool) -> None:
        what = f"alternate key on {field.column} ({entity})"
        params = {"$select": "SchemaName,KeyAttributes,EntityKeyIndexStatus"}
        keys = (self.web.get(f"{_definition(entity)}/Keys", params) or {}).get("value", [])
        found = next((k for k in keys if list(k.get("KeyAttributes") or []) == [field.column]), None)
        if found is not None:
            status = str(found.get("EntityKeyIndexStatus") or "")
            if status == "Failed":
                report.add(
                    what, "failed", f"{found.get('SchemaName')}: its index failed; reactivate it in the key's page"
                )
            else:
                report.add(what, "exists", f"{found.get('SchemaName')} ({status or 'status unknown'})")
            return
        if not apply:
            report.add(what, "missing", "upserts by referral id need it")
            return
        body = {
            "SchemaName": f"{field.column}_key",
            "DisplayName": _label(field.label, self.config.language_code),
            "KeyAttributes": [field.column],
        }
        self.api.request("POST", f"{_definition(entity)}/Keys", json=body, idempotent=False)
        report.add(what, "created", f"{field.column}_key (Dataverse builds its index in the background)")

    # -- the security role --------------------------------------------------------------------------------------
    def _root_business_unit(self) -> str:
        unit = self.web.first("businessunits", "businessunitid", "_parentbusinessunitid_value eq null")
        if unit is None:
            raise LookupError("the organisation has no root business unit")
        return str(unit["businessunitid"])

    def _role(self, report: SetupReport, apply: bool) -> dict[str, str] | None:
        what = f"security role '{self.config.role_name}'"
        unit = self._root_business_unit()
        name = _quoted(self.config.role_name)

        def find() -> dict[str, Any] | None:
            return self.web.first("roles", "roleid,name", f"name eq '{name}' and _businessunitid_value eq {unit}")

        role = find()
        if role is not None:
            report.add(what, "exists")
            return {"roleid": str(role["roleid"]), "unit": unit}
        if not apply:
            report.add(what, "missing", "the application user's role, with the privileges listed by --apply")
            return None

        def create() -> dict[str, Any]:
            body = {"name": self.config.role_name, "businessunitid@odata.bind": f"/businessunits({unit})"}
            response = self.api.request(
                "POST", "roles", json=body, params={"$select": "roleid"}, headers={"Prefer": "return=representation"}
            )
            created: dict[str, Any] = response.json()
            return created

        role = create_once(create, find, f"security role '{self.config.role_name}'")
        report.add(what, "created", f"in the root business unit {unit}")
        return {"roleid": str(role["roleid"]), "unit": unit}

    def _privileges(self, report: SetupReport, role: dict[str, str], apply: bool) -> None:
        answer = self.web.get(f"RetrieveRolePrivilegesRole(RoleId={role['roleid']})") or {}
        held = {str(p.get("PrivilegeName")): _depth(p.get("Depth")) for p in answer.get("RolePrivileges") or []}
        wanted = [name for name in PRIVILEGES if held.get(name, -1) < DEPTHS.index("Global")]
        if len(wanted) < len(PRIVILEGES):
            report.add(
                "role privileges",
                "exists",
                f"{len(PRIVILEGES) - len(wanted)} of {len(PRIVILEGES)} held organisation-wide",
            )
        if not wanted:
            return
        if not apply:
            for name in wanted:
                report.add(f"privilege {name} (organisation)", "missing", PRIVILEGES[name])
            return
        odata_filter = " or ".join(f"name eq '{name}'" for name in wanted)
        ids = {
            str(p["name"]): str(p["privilegeid"])
            for p in self.web.rows("privileges", {"$select": "privilegeid,name", "$filter": odata_filter})
        }
        unknown = [name for name in wanted if name not in ids]
        for name in unknown:
            report.add(f"privilege {name} (organisation)", "failed", "the organisation has no such privilege")
        grant = [
            {"PrivilegeId": ids[name], "BusinessUnitId": role["unit"], "Depth": "Global", "PrivilegeName": name}
            for name in wanted
            if name in ids
        ]
        if grant:
            self.api.request(
                "POST",
                f"roles({role['roleid']})/Microsoft.Dynamics.CRM.AddPrivilegesRole",
                json={"Privileges": grant},
                idempotent=True,  # adding a privilege the role holds changes nothing
            )
        for item in grant:
            report.add(
                f"privilege {item['PrivilegeName']} (organisation)", "created", PRIVILEGES[item["PrivilegeName"]]
            )

    def _assignment(self, report: SetupReport, role: dict[str, str], apply: bool) -> None:
        app = self.config.application_id
        if not app:
            report.add(
                "application user",
                "manual",
                "not checked: pass --application-id (the client id of the app's managed identity or app registration) "
                "to check that its application user holds the role",
            )
            return
        what = f"application user of {app}"
        user = self.web.first("systemusers", "systemuserid,fullname", f"applicationid eq {app}")
        if user is None:
            report.add(
                what,
                "failed" if apply else "missing",
                "no application user has this application id: add it in the Power Platform admin center "
                "(Environment > Settings > Users + permissions > Application users > New app user)",
            )
            return
        user_id = str(user["systemuserid"])
        roles = self.web.get(f"systemusers({user_id})/systemuserroles_association", {"$select": "roleid"}) or {}
        if any(str(r.get("roleid")) == role["roleid"] for r in roles.get("value", [])):
            report.add(what, "exists", f"{user.get('fullname')} holds '{self.config.role_name}'")
            return
        if not apply:
            report.add(what, "missing", f"{user.get('fullname')} does not hold '{self.config.role_name}'")
            return
        reference = {"@odata.id": self.api.url(f"roles({role['roleid']})")}
        self.api.request("POST", f"systemusers({user_id})/systemuserroles_association/$ref", json=reference)
        report.add(what, "created", f"'{self.config.role_name}' given to {user.get('fullname')}")


def is_custom_column(column: str) -> bool:
    """A custom column's logical name starts with its publisher's prefix (``new_``, ``contoso_``); the opportunity's
    own columns have none."""
    return "_" in column.strip("_")


def _publish_step(entities: list[str]) -> str:
    return f"publish the {' and '.join(entities)} table" + ("s" if len(entities) > 1 else "")


def _depth(value: object) -> int:
    if isinstance(value, int) and 0 <= value < len(DEPTHS):
        return value
    return DEPTHS.index(str(value)) if str(value) in DEPTHS else -1
