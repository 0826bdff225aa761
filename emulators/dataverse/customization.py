"""Dataverse emulator: customising the organisation through the Web API, as ``setup-crm`` and an admin's tools do.

- ``POST EntityDefinitions(LogicalName='<table>')/Attributes`` with an ``<Type>AttributeMetadata`` body creates a
  column; from then on it can be read, written and filtered like any other (it outlives :meth:`reset`, as a
  customisation does). ``InsertOptionValue`` adds an option to a choice; ``PublishXml`` publishes.
- ``GET`` / ``POST EntityDefinitions(LogicalName='<table>')/Keys``: alternate keys (``EntityKeyMetadata``); a new key
  is enforced at once and can address rows (``opportunities(<column>='...')``).
- Security: the ``businessunits``, ``roles`` and ``privileges`` tables (the root business unit and the standard
  privileges of the tables the connector uses are seeded by every reset); ``RetrieveRolePrivilegesRole(RoleId=…)``
  and ``roles(<id>)/Microsoft.Dynamics.CRM.AddPrivilegesRole`` read and grant a role's privileges; a user's roles
  are ``systemusers(<id>)/systemuserroles_association``, given with ``…/$ref``.

The emulator does not enforce privileges on data requests; a test refuses a request with an injected 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .._server import Handler, Request, Response
from .metadata import key_definitions, new_attribute, new_key, new_option, table_named
from .odata import json_body
from .schema import BOOL, CHOICE, CODE_DUPLICATE, CODE_NOT_FOUND, GUID_RE, ODataError, Table, bad_request
from .store import Store

ROOT_BUSINESS_UNIT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "dataverse-emulator/businessunit/root"))
DEPTHS = ("Basic", "Local", "Deep", "Global")
PRIVILEGE_TABLES = ("Opportunity", "Account", "Contact", "Activity", "Lead")
PRIVILEGE_VERBS = ("Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign", "Share")
OTHER_PRIVILEGES = ("prvReadTransactionCurrency", "prvReadUser", "prvReadTeam", "prvReadBusinessUnit")
PRIVILEGE_NAMES = (*(f"prv{v}{t}" for t in PRIVILEGE_TABLES for v in PRIVILEGE_VERBS), *OTHER_PRIVILEGES)
ROLE_PRIVILEGES = "RetrieveRolePrivilegesRoleResponse"
GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def privilege_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/privilege/{name}"))


class Customization:
    """Columns, option values and keys added through the metadata API, and the security model's state."""

    def __init__(self, store: Store, lock: AbstractContextManager[Any], base_url: Callable[[Request], str]) -> None:
        self.store = store
        self.lock = lock
        self.base_url = base_url
        self.key_names: dict[tuple[str, tuple[str, ...]], str] = {}
        self.role_privileges: dict[str, dict[str, str]] = {}  # roleid -> privilegeid -> depth
        self.user_roles: dict[str, set[str]] = {}  # systemuserid -> roleids
        self.published: list[str] = []

    def reset(self) -> None:
        """Seed the root business unit and the privileges; forget role grants (the rows were emptied)."""
        self.role_privileges.clear()
        self.user_roles.clear()
        self.published.clear()
        units = self.store.table("businessunits")
        self.store.insert(units, {"businessunitid": ROOT_BUSINESS_UNIT_ID, "name": "Contoso"}, {}, seeding=True)
        privileges = self.store.table("privileges")
        for name in PRIVILEGE_NAMES:
            self.store.insert(privileges, {"privilegeid": privilege_id(name), "name": name}, {}, seeding=True)

    def routes(self, api: str) -> list[tuple[str, str, Handler]]:
        definition = rf"{api}/EntityDefinitions\(LogicalName='(?P<logical>\w+)'\)"
        return [
            ("POST", rf"{definition}/Attributes", self._create_attribute),
            ("GET", rf"{definition}/Keys", self._keys),
            ("POST", rf"{definition}/Keys", self._create_key),
            ("POST", rf"{api}/(?:Microsoft\.Dynamics\.CRM\.)?InsertOptionValue", self._insert_option),
            ("POST", rf"{api}/(?:Microsoft\.Dynamics\.CRM\.)?PublishXml", self._publish),
            ("GET", rf"{api}/RetrieveRolePrivilegesRole\(RoleId=(?P<id>{GUID})\)", self._role_privileges),
            (
                "POST",
                rf"{api}/roles\((?P<id>{GUID})\)/Microsoft\.Dynamics\.CRM\.AddPrivilegesRole",
                self._add_privileges,
            ),
            ("GET", rf"{api}/systemusers\((?P<id>{GUID})\)/systemuserroles_association", self._user_roles),
            (
                "POST",
                rf"{api}/systemusers\((?P<id>{GUID})\)/systemuserroles_association/(?:\$|%24)ref",
                self._assign_role,
            ),
        ]

    # -- columns, options, keys ------------------------------------------------------------------------------
    def _table(self, request: Request) -> Table:
        return table_named(self.store.tables, request.params["logical"])

    def _create_attribute(self, request: Request) -> Response:
        table = self._table(request)
        body = json_body(request)
        with self.lock:
            name, kind, options = new_attribute(table, body)
            table.columns[name] = kind
            if kind == CHOICE:
                table.choices[name] = options
            if kind == BOOL:
                table.defaults[name] = bool(body.get("DefaultValue", False))
        metadata_id = uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/{table.logical_name}/{name}")
        location = (
            f"{self.base_url(request)}/EntityDefinitions(LogicalName='{table.logical_name}')/Attributes({metadata_id})"
        )
        return Response(204, None, {"OData-EntityId": location})

    def _insert_option(self, request: Request) -> Response:
        body = json_body(request)
        table = table_named(self.store.tables, str(body.get("EntityLogicalName") if isinstance(body, dict) else ""))
        with self.lock:
            column, value = new_option(table, body)
            table.choices[column] = table.choices.get(column, frozenset()) | {value}
        return Response(200, {"NewOptionValue": value})

    def _publish(self, request: Request) -> Response:
        body = json_body(request)
        xml = body.get("ParameterXml") if isinstance(body, dict) else None
        if not isinstance(xml, str) or "<importexportxml>" not in xml:
            raise bad_request("PublishXml needs ParameterXml: <importexportxml> naming what to publish.")
        with self.lock:
            self.published.append(xml)
        return Response(204)

    def _keys(self, request: Request) -> Response:
        table = self._table(request)
        with self.lock:
            names = {cols: n for (logical, cols), n in self.key_names.items() if logical == table.logical_name}
            value = key_definitions(table, names, dict(request.query))
        context = f"{self.base_url(request)}/$metadata#EntityDefinitions('{table.logical_name}')/Keys"
        return Response(200, {"@odata.context": context, "value": value})

    def _create_key(self, request: Request) -> Response:
        table = self._table(request)
        body = json_body(request)
        with self.lock:
            name, columns = new_key(table, body)
            table.keys = (*table.keys, columns)
            self.key_names[(table.logical_name, columns)] = name
        return Response(204)

    # -- security -------------------------------------------------------------------------------------------
    def _role(self, role_id: str) -> str:
        role_id = role_id.lower()
        if role_id not in self.store.rows["roles"]:
            raise ODataError(404, f"role With Id = {role_id} Does Not Exist", CODE_NOT_FOUND)
        return role_id

    def _role_privileges(self, request: Request) -> Response:
        with self.lock:
            role_id = self._role(request.params["id"])
            role = self.store.rows["roles"][role_id]
            unit = role.values.get("_businessunitid_value")
            names = {
                str(row.values["privilegeid"]): str(row.values["name"])
                for row in self.store.rows["privileges"].values()
            }
            granted = [
                {"Depth": depth, "PrivilegeId": pid, "BusinessUnitId": unit, "PrivilegeName": names.get(pid, "")}
                for pid, depth in self.role_privileges.get(role_id, {}).items()
            ]
        return Response(
            200,
            {
                "@odata.context": f"{self.base_url(request)}/$metadata#Microsoft.Dynamics.CRM.{ROLE_PRIVILEGES}",
                "RolePrivileges": granted,
            },
        )

    def _add_privileges(self, request: Request) -> Response:
        body = json_body(request)
        items = body.get("Privileges") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise bad_request("AddPrivilegesRole needs Privileges: a list of RolePrivilege.")
        with self.lock:
            role_id = self._role(request.params["id"])
            grants: dict[str, str] = {}
            for item in items:
                pid = str(item.get("PrivilegeId") or "").lower() if isinstance(item, dict) else ""
                depth = item.get("Depth") if isinstance(item, dict) else None
                if pid not in self.store.rows["privileges"]:
                    raise ODataError(404, f"privilege With Id = {pid} Does Not Exist", CODE_NOT_FOUND)
                if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth < len(DEPTHS):
                    depth = DEPTHS[depth]
                if depth not in DEPTHS:
                    raise bad_request(f"'{depth}' is not a PrivilegeDepth ({', '.join(DEPTHS)}).")
                grants[pid] = str(depth)
            self.role_privileges.setdefault(role_id, {}).update(grants)
        return Response(204)

    def _user(self, user_id: str) -> str:
        user_id = user_id.lower()
        if user_id not in self.store.rows["systemusers"]:
            raise ODataError(404, f"systemuser With Id = {user_id} Does Not Exist", CODE_NOT_FOUND)
        return user_id

    def _user_roles(self, request: Request) -> Response:
        with self.lock:
            user_id = self._user(request.params["id"])
            roles = [
                self.store.rows["roles"][r]
                for r in sorted(self.user_roles.get(user_id, ()))
                if r in self.store.rows["roles"]
            ]
            value = [{"roleid": row.values["roleid"], "name": row.values.get("name")} for row in roles]
        return Response(200, {"value": value})

    def _assign_role(self, request: Request) -> Response:
        body = json_body(request)
        reference = str(body.get("@odata.id") or "") if isinstance(body, dict) else ""
        found = GUID_RE.search(reference.rpartition("roles(")[2]) if "roles(" in reference else None
        if found is None:
            raise bad_request('The body must be {"@odata.id": "<service root>/roles(<roleid>)"}.')
        with self.lock:
            user_id = self._user(request.params["id"])
            role_id = self._role(found.group(0))
            held = self.user_roles.setdefault(user_id, set())
            if role_id in held:
                raise ODataError(400, "Cannot insert duplicate key: the user already holds this role.", CODE_DUPLICATE)
            held.add(role_id)
        return Response(204)
