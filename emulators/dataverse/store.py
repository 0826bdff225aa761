"""Dataverse emulator: the organisation's rows and the rules the service applies when they are written.

Every write goes through :meth:`Store.insert` / :meth:`Store.update` / :meth:`Store.delete`, which apply
what the platform applies: column types, read-only system columns, lookups written only through
``@odata.bind`` to a row that exists, unique alternate keys, the opportunity state model (closed rows are
read-only until reopened), ``fullname`` derived from the contact's names, the organisation's base currency
stamped on new opportunities, and a row version (the etag) bumped by every write.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from .lead_rules import check_lead_state
from .odata import parse_key
from .schema import (
    CODE_DUPLICATE,
    CODE_NOT_FOUND,
    CODE_QUERY,
    CURRENCIES,
    INTEGRATION_APP_ID,
    INTEGRATION_USER_ID,
    MONEY,
    OPPORTUNITY_STATUSES,
    READ_ONLY,
    STATE_NAMES,
    SYSTEM_USERS,
    TEAMS,
    Nav,
    ODataError,
    Table,
    bad_request,
    coerce,
    iso_datetime,
    normalize,
)


@dataclass
class Row:
    values: dict[str, Any]
    targets: dict[str, str] = field(default_factory=dict)  # lookup column -> entity set it points to


class Store:
    """The rows of every table, keyed by primary key, and the row version counter."""

    def __init__(self, tables: dict[str, Table], clock: Callable[[], datetime], base_currency: str | None) -> None:
        self.tables = tables
        self.clock = clock
        self.base_currency = base_currency
        self.rows: dict[str, dict[str, Row]] = {}
        self.version = 0
        # (entity set, id, row version of the delete) of every deleted row: what change tracking reports as deleted.
        self.deleted: list[tuple[str, str, int]] = []

    def clear(self) -> None:
        """Empty every table and re-seed the currencies, users and teams."""
        self.rows = {name: {} for name in self.tables}
        self.version = 1000
        self.deleted = []
        for code, currency_name, symbol, rate in CURRENCIES:
            self.insert(
                self.tables["transactioncurrencies"],
                {
                    "transactioncurrencyid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"transactioncurrency/{code}")),
                    "isocurrencycode": code,
                    "currencyname": currency_name,
                    "currencysymbol": symbol,
                    "exchangerate": float(rate),
                    "currencyprecision": 0 if code == "JPY" else 2,
                },
                {},
                seeding=True,
            )
        for user_id, name in SYSTEM_USERS.items():
            self.insert(
                self.tables["systemusers"],
                {
                    "systemuserid": user_id,
                    "fullname": name,
                    "domainname": f"{name.split()[0].lower()}@contoso.example",
                    # The application user is the app registration's (or managed identity's) user.
                    "applicationid": INTEGRATION_APP_ID if user_id == INTEGRATION_USER_ID else None,
                },
                {},
                seeding=True,
            )
        for team_id, name in TEAMS.items():
            self.insert(self.tables["teams"], {"teamid": team_id, "name": name}, {}, seeding=True)

    def delete(self, table: Table, row: Row) -> str:
        """Remove ``row``; lookups pointing at it are cleared rather than left dangling. Returns its id."""
        record_id = str(row.values[table.pk])
        del self.rows[table.entity_set][record_id]
        self.deleted.append((table.entity_set, record_id, self.next_version()))
        for other_table in self.rows.values():
            for other in other_table.values():
                for column, target in list(other.targets.items()):
                    if target == table.entity_set and other.values.get(column) == record_id:
                        other.values[column] = None
                        other.targets.pop(column)
        return record_id

    def table(self, entity_set: str) -> Table:
        table = self.tables.get(entity_set)
        if table is None:
            raise ODataError(404, f"Resource not found for the segment '{entity_set}'.", CODE_QUERY)
        return table

    def now(self) -> str:
        return iso_datetime(self.clock())

    def next_version(self) -> int:
        self.version += 1
        return self.version

    @staticmethod
    def etag(row: Row) -> str:
        return f'W/"{row.values["versionnumber"]}"'

    def render(
        self, table: Table, row: Row, select: list[str] | None = None, annotations: bool = False
    ) -> dict[str, Any]:
        names = list(table.columns) if select is None else list(select)
        if select is not None:
            names.append(table.pk)
            # Dataverse adds the currency whenever a money column is selected.
            if any(table.columns[n] == MONEY for n in select) and "_transactioncurrencyid_value" in table.columns:
                names.append("_transactioncurrencyid_value")
        out: dict[str, Any] = {"@odata.etag": self.etag(row)}
        for name in dict.fromkeys(names):
            out[name] = row.values.get(name)
            target = row.targets.get(name)
            if annotations and target and out[name] is not None:
                out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = self.tables[target].logical_name
        return out

    def find(self, table: Table, key: str | dict[str, Any]) -> Row | None:
        rows = self.rows[table.entity_set]
        if isinstance(key, str):
            return rows.get(key)
        if set(key) == {table.pk}:
            return rows.get(str(key[table.pk]))
        if not any(set(k) == set(key) for k in table.keys):
            raise bad_request(
                f"The key in the request URI is not valid for resource '{table.type_name}'. Ensure "
                "that the names and number of key properties are correct.",
                CODE_QUERY,
            )
        wanted = {name: normalize(table.columns[name], value) for name, value in key.items()}
        for row in rows.values():
            if all(normalize(table.columns[n], row.values.get(n)) == v for n, v in wanted.items()):
                return row
        return None

    def not_found(self, table: Table, key: str | dict[str, Any], status: int = 404) -> ODataError:
        if isinstance(key, str):
            return ODataError(status, f"{table.logical_name} With Id = {key} Does Not Exist", CODE_NOT_FOUND)
        return ODataError(
            status,
            f"A record with the specified key values does not exist in {table.logical_name} entity",
            CODE_NOT_FOUND,
        )

    def _resolve_bind(self, nav_name: str, nav: Nav, value: Any) -> tuple[str, str]:
        """(entity set, id) of the row a bind names."""
        match = re.fullmatch(r"(?:.*/)?(?P<set>[A-Za-z_]+)\((?P<key>.+)\)", value) if isinstance(value, str) else None
        if match is None:
            raise bad_request(f"The value of '{nav_name}@odata.bind' must be a reference like '/{nav.target}(<id>)'.")
        if match.group("set") not in nav.targets:
            raise bad_request(f"'{nav_name}' refers to {' or '.join(nav.targets)}, not to {match.group('set')}.")
        target = self.tables[match.group("set")]
        key = parse_key(unquote(match.group("key")))
        row = self.find(target, key)
        if row is None:
            raise self.not_found(target, key, status=400)
        return target.entity_set, str(row.values[target.pk])

    def parse_body(self, table: Table, body: Any, seeding: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        """Column changes and lookup targets from a request body, validated against the schema."""
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        values: dict[str, Any] = {}
        targets: dict[str, str] = {}
        for key, value in body.items():
            if key.endswith("@odata.bind"):
                nav_name = key[: -len("@odata.bind")]
                nav = table.navs.get(nav_name)
                if nav is None:
                    raise bad_request(f"'{nav_name}' is not a navigation property of {table.type_name}.", CODE_QUERY)
                if value is None:
                    if nav.also:  # an owner lookup: every row has an owner
                        raise bad_request(f"'{nav_name}' cannot be cleared: assign the record to another owner.")
                    values[nav.column], targets[nav.column] = None, nav.target
                else:
                    targets[nav.column], values[nav.column] = self._resolve_bind(nav_name, nav, value)
            elif "@" in key:
                continue  # instance annotations carry no data
            elif key in table.navs:
                if value is not None:
                    raise bad_request(f"Set '{key}' with '{key}@odata.bind'; only null clears it directly.")
                values[table.navs[key].column] = None
            elif key in table.lookups:
                if not seeding:
                    raise bad_request(
                        f"'{key}' is read-only; write the lookup through its navigation property with @odata.bind."
                    )
                values[key] = coerce(table, key, value)
                targets[key] = self._seed_target(table, key, values[key])
            elif key in READ_ONLY and not seeding:
                continue  # the service ignores system columns on write
            elif key in table.columns:
                values[key] = coerce(table, key, value)
            else:
                raise bad_request(
                    f"The property '{key}' does not exist on type '{table.type_name}'. Make sure to "
                    "only use property names that are defined by the type.",
                    CODE_QUERY,
                )
        return values, targets

    def _seed_target(self, table: Table, column: str, value: str | None) -> str:
        candidates = [target for nav in table.navs.values() if nav.column == column for target in nav.targets]
        for target in candidates:
            if value is not None and value in self.rows[target]:
                return target
        return candidates[0]

    def _check_keys(self, table: Table, values: dict[str, Any], pk: str) -> None:
        for key in table.keys:
            if any(values.get(name) is None for name in key):
                continue
            wanted = [normalize(table.columns[n], values[n]) for n in key]
            for other_id, other in self.rows[table.entity_set].items():
                if other_id != pk and [normalize(table.columns[n], other.values.get(n)) for n in key] == wanted:
                    raise ODataError(
                        412,
                        f"A record that has the attribute values {', '.join(key)} already "
                        "exists. The entity key requires that this set of attributes contains "
                        "unique values.",
                        CODE_DUPLICATE,
                    )

    def _check_opportunity_state(self, before: dict[str, Any] | None, changes: dict[str, Any]) -> None:
        """Open rows take statecode 0 only; closed rows accept nothing but a reopen (statecode 0)."""
        current_state = before["statecode"] if before else 0
        if current_state != 0:
            reopening = changes.get("statecode") == 0 and set(changes) <= {"statecode", "statuscode"}
            if not reopening:
                raise bad_request(
                    f"The opportunity is closed ({STATE_NAMES.get(current_state)}) and read-only. "
                    "Reopen it first with a PATCH of statecode 0 and statuscode 1."
                )
            changes.setdefault("statuscode", 1)
        state = changes.get("statecode", current_state)
        if state not in OPPORTUNITY_STATUSES:
            raise bad_request(f"{state} is not a valid state code for opportunity.")
        if state != 0:
            raise bad_request(
                "An opportunity cannot be closed by setting statecode; use the WinOpportunity or "
                "LoseOpportunity action."
            )
        if "statecode" in changes and "statuscode" not in changes:
            changes["statuscode"] = 1
        status = changes.get("statuscode", before["statuscode"] if before else 1)
        if status not in OPPORTUNITY_STATUSES[state]:
            raise bad_request(
                f"{status} is not a valid status code for state code OpportunityState."
                f"{STATE_NAMES[state]} on opportunity."
            )

    def _apply_rules(self, table: Table, before: dict[str, Any] | None, changes: dict[str, Any]) -> None:
        if table.entity_set == "opportunities":
            self._check_opportunity_state(before, changes)
        if table.entity_set == "leads":
            check_lead_state(before, changes)
        if table.entity_set in ("contacts", "leads") and ({"firstname", "lastname"} & set(changes) or before is None):
            merged = {**(before or {}), **changes}
            full = " ".join(p for p in (merged.get("firstname"), merged.get("lastname")) if p)
            changes["fullname"] = full or None

    def insert(self, table: Table, values: dict[str, Any], targets: dict[str, str], seeding: bool = False) -> Row:
        pk = str(values.get(table.pk) or uuid.uuid4()).lower()
        if pk in self.rows[table.entity_set]:
            raise ODataError(412, "Cannot insert duplicate key.", CODE_DUPLICATE)
        changes = {k: v for k, v in values.items() if k != table.pk}
        if not seeding:
            self._apply_rules(table, None, changes)
        elif table.entity_set in ("contacts", "leads") and "fullname" not in changes:
            self._apply_rules(table, None, changes)
        row_values: dict[str, Any] = dict.fromkeys(table.columns)
        row_values.update(table.defaults)
        row_values.update(changes)
        row_values[table.pk] = pk
        row = Row(row_values, {k: v for k, v in targets.items() if row_values.get(k) is not None})
        if "_ownerid_value" in table.columns and row_values.get("_ownerid_value") is None:
            # A new row belongs to the user who creates it unless the request names an owner; every caller of the
            # emulator is its one application user.
            row_values["_ownerid_value"] = INTEGRATION_USER_ID
            row.targets["_ownerid_value"] = "systemusers"
        if (
            self.base_currency
            and table.entity_set == "opportunities"
            and row_values.get("_transactioncurrencyid_value") is None
        ):
            # Dataverse stamps the organisation's base currency on new money-bearing records.
            currency = self._currency_row()
            if currency is not None:
                row_values["_transactioncurrencyid_value"] = currency.values["transactioncurrencyid"]
                row.targets["_transactioncurrencyid_value"] = "transactioncurrencies"
        self._check_keys(table, row_values, pk)
        now = self.now()
        row_values["createdon"] = row_values.get("createdon") if seeding and row_values.get("createdon") else now
        row_values["modifiedon"] = row_values.get("modifiedon") if seeding and row_values.get("modifiedon") else now
        row_values["versionnumber"] = self.next_version()
        self.rows[table.entity_set][pk] = row
        return row

    def _currency_row(self) -> Row | None:
        for row in self.rows["transactioncurrencies"].values():
            if str(row.values.get("isocurrencycode")).upper() == str(self.base_currency).upper():
                return row
        return None

    def update(self, table: Table, row: Row, values: dict[str, Any], targets: dict[str, str]) -> None:
        changes = {k: v for k, v in values.items() if k != table.pk}
        self._apply_rules(table, row.values, changes)
        merged = {**row.values, **changes}
        self._check_keys(table, merged, str(row.values[table.pk]))
        row.values.update(changes)
        for column, target in targets.items():
            if row.values.get(column) is None:
                row.targets.pop(column, None)
            else:
                row.targets[column] = target
        row.values["modifiedon"] = self.now()
        # Every update bumps the row version, even when the values are unchanged.
        row.values["versionnumber"] = self.next_version()
