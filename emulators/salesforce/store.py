"""Salesforce emulator: the in-memory org (records, write rules, system fields, rollback).

Every write goes through :meth:`Org.insert` / :meth:`Org.update` / :meth:`Org.delete`, which apply what
the platform applies: field existence and types, create/update permissions of system fields, required
fields, restricted picklists (the currency picklist follows the active ``CurrencyType`` rows), lookups
that must point at a live record of the right object, ``IsClosed`` / ``IsWon`` derived from the stage,
one primary contact role per opportunity, strictly increasing ``SystemModstamp`` values, and objects that the
API only reads (``Organization``).

The org is multi-currency or has a single currency (:meth:`Org.set_multi_currency`). A single-currency org has
no ``CurrencyType`` object and no ``CurrencyIsoCode`` field, so a query or a write naming either fails as on
the platform (``INVALID_TYPE``, ``INVALID_FIELD``); its one currency is ``Organization.DefaultCurrencyIsoCode``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .leads import check_lead_write
from .schema import (
    BOOLEAN,
    CURRENCY_FIELD,
    CURRENCY_RATES,
    ORG_CURRENCY_FIELD,
    ORG_ID,
    ORG_NAME,
    REFERENCE,
    USER_ID,
    USERS,
    FieldDef,
    SalesforceError,
    SObjectType,
    bad_request,
    coerce,
    make_id,
    normalize_id,
    org_currency_field,
    parse_datetime,
    render_value,
)
from .soql import Column

Record = dict[str, Any]


def _copy_row(row: Record) -> Record:
    if any(isinstance(value, list | dict | set) for value in row.values()):
        return copy.deepcopy(row)
    return dict(row)


SYSTEM_SEEDABLE = frozenset({"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"})
# Reference data of the org (currencies, the org itself) is dated in the past and uses up no change stamps.
REFERENCE_DATA_STAMP = "2000-01-01T00:00:00.000+0000"
CURRENCY_OBJECT = "CurrencyType"


class Org:
    def __init__(
        self,
        objects: dict[str, SObjectType],
        stages: Mapping[str, tuple[bool, bool]],
        currencies: Iterable[str],
        clock: Callable[[], datetime],
        external_id_case_sensitive: bool = False,
        multi_currency: bool = True,
    ) -> None:
        # The very dict the REST layer and SOQL read: switching multi-currency off takes CurrencyType out of it for
        # every one of them at once.
        self.objects = objects
        self._lower = {name.lower(): sobject for name, sobject in objects.items()}
        self.stages = dict(stages)
        self.currencies = tuple(currencies)
        self.clock = clock
        self.external_id_case_sensitive = external_id_case_sensitive
        self.records: dict[str, dict[str, Record]] = {}
        self._next_number = 1
        self._last_stamp = datetime.min.replace(tzinfo=UTC)
        # What a single-currency org lacks, kept to be put back when multi-currency is switched on again.
        self._currency_type = objects[CURRENCY_OBJECT]
        self._currency_fields = {
            name: definition
            for name, sobject in objects.items()
            if (definition := sobject.fields.get(CURRENCY_FIELD)) is not None
        }
        self._org_currency_field = org_currency_field(self.currencies)
        self.multi_currency = True  # as the objects were built
        self.set_multi_currency(multi_currency)
        self.clear()

    @property
    def corporate_currency(self) -> str:
        """The org's currency: the corporate one of a multi-currency org, the only one of a single-currency org."""
        return self.currencies[0]

    def set_multi_currency(self, enabled: bool) -> None:
        """Make the org multi-currency (``CurrencyType``, ``CurrencyIsoCode`` on Opportunity and Account) or one with
        a single currency (neither exists; ``Organization.DefaultCurrencyIsoCode`` names its currency). Records
        keep their other values; when multi-currency is switched on they all get the corporate currency, as
        Salesforce does when an admin enables it."""
        if enabled == self.multi_currency:
            return
        organization = self.objects["Organization"]
        if enabled:
            self._attach(self._currency_type)
            organization.remove(ORG_CURRENCY_FIELD)
            for name, definition in self._currency_fields.items():
                self.objects[name].add(definition)
        else:
            del self.objects[CURRENCY_OBJECT], self._lower[CURRENCY_OBJECT.lower()]
            organization.add(self._org_currency_field)
            for name in self._currency_fields:
                self.objects[name].remove(CURRENCY_FIELD)
        self.multi_currency = enabled
        if not self.records:
            return  # still being built: clear() lays the records out
        if enabled:
            self.records[CURRENCY_OBJECT] = {}
            self._seed_currencies()
        else:
            self.records.pop(CURRENCY_OBJECT, None)
        for name in self._currency_fields:
            for row in self.records[name].values():
                if enabled:
                    row[CURRENCY_FIELD] = self.corporate_currency
                else:
                    row.pop(CURRENCY_FIELD, None)
        for row in self.records["Organization"].values():
            if enabled:
                row.pop(ORG_CURRENCY_FIELD, None)
            else:
                row[ORG_CURRENCY_FIELD] = self.corporate_currency

    def _attach(self, sobject: SObjectType) -> None:
        self.objects[sobject.name] = sobject
        self._lower[sobject.name.lower()] = sobject

    # -- state ------------------------------------------------------------------------------------------------
    def clear(self) -> None:
        self.records = {name: {} for name in self.objects}
        self._next_number = 1
        self._last_stamp = datetime(1970, 1, 1, tzinfo=UTC)
        if self.multi_currency:
            self._seed_currencies()
        self._seed_organization()
        self._seed_users()

    def _seed_currencies(self) -> None:
        since = {name: REFERENCE_DATA_STAMP for name in ("CreatedDate", "LastModifiedDate", "SystemModstamp")}
        for code in self.currencies:
            self.insert(
                CURRENCY_OBJECT,
                {
                    "IsoCode": code,
                    "ConversionRate": CURRENCY_RATES.get(code, 1.0),
                    "DecimalPlaces": 0 if code == "JPY" else 2,
                    "IsActive": True,
                    "IsCorporate": code == self.corporate_currency,
                    **since,
                },
                seeding=True,
            )

    def _seed_organization(self) -> None:
        # Set up with the org, not through the API: its fields are not writable, not even when seeding.
        sobject = self.objects["Organization"]
        row: Record = {name: definition.default for name, definition in sobject.fields.items()}
        stamp = parse_datetime(REFERENCE_DATA_STAMP)
        row.update(Id=ORG_ID, Name=ORG_NAME, CreatedById=USER_ID, LastModifiedById=USER_ID)
        row.update(CreatedDate=stamp, LastModifiedDate=stamp, SystemModstamp=stamp)
        if not self.multi_currency:
            row[ORG_CURRENCY_FIELD] = self.corporate_currency
        self.records["Organization"] = {ORG_ID: row}

    def _seed_users(self) -> None:
        # Set up with the org like the Organization record, so they take no record numbers from what tests create.
        fields = self.objects["User"].fields
        stamp = parse_datetime(REFERENCE_DATA_STAMP)
        for user_id, (name, username) in USERS.items():
            row: Record = {field: definition.default for field, definition in fields.items()}
            row.update(Id=user_id, Name=name, Username=username, CreatedById=USER_ID, LastModifiedById=USER_ID)
            row.update(CreatedDate=stamp, LastModifiedDate=stamp, SystemModstamp=stamp)
            self.records["User"][user_id] = row

    def snapshot(self) -> tuple[dict[str, dict[str, Record]], int, datetime]:
        """The org as it is, for an all-or-none call to go back to. Each row is copied on its own (writes change rows
        in place); only a value that could itself change in place is copied deeply: a deep copy of every row made
        each all-or-none call cost seconds once the org held ten thousand records."""
        records = {name: {key: _copy_row(row) for key, row in rows.items()} for name, rows in self.records.items()}
        return records, self._next_number, self._last_stamp

    def restore(self, state: tuple[dict[str, dict[str, Record]], int, datetime]) -> None:
        self.records, self._next_number, self._last_stamp = state

    def sobject(self, name: str) -> SObjectType:
        sobject = self._lower.get(name.lower())
        if sobject is None:
            raise bad_request("NOT_FOUND", "The requested resource does not exist")
        return sobject

    def _stamp(self) -> datetime:
        # Strictly increasing, at millisecond precision, so that "changed since" watermarks can be tested.
        now = self.clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
        self._last_stamp = stamp
        return stamp

    # -- reads ------------------------------------------------------------------------------------------------
    def get(self, object_name: str, record_id: str, include_deleted: bool = False) -> Record | None:
        normalized = normalize_id(record_id)
        row = self.records[self.sobject(object_name).name].get(normalized or "")
        if row is None or (row["IsDeleted"] and not include_deleted):
            return None
        return row

    def find_any(self, record_id: str) -> tuple[str, Record] | None:
        normalized = normalize_id(record_id) or ""
        for name, sobject in self.objects.items():
            if normalized.startswith(sobject.key_prefix) and normalized in self.records[name]:
                return name, self.records[name][normalized]
        return None

    def rows(self, object_name: str, include_deleted: bool = False) -> list[Record]:
        rows = self.records[self.sobject(object_name).name].values()
        return [row for row in rows if include_deleted or not row["IsDeleted"]]

    def match_external(self, object_name: str, definition: FieldDef, value: str) -> list[Record]:
        if self.external_id_case_sensitive:
            return [row for row in self.rows(object_name) if row.get(definition.name) == value]
        wanted = value.casefold()
        return [row for row in self.rows(object_name) if str(row.get(definition.name) or "").casefold() == wanted]

    def resolve(self, row: Mapping[str, Any], column: Column) -> Any:
        current: Mapping[str, Any] | None = row
        for hop in column.hops:
            parent_id = current.get(hop.name) if current is not None else None
            current = self.get(hop.reference_to or "", parent_id) if parent_id else None
        return current.get(column.field.name) if current is not None else None

    # -- rendering --------------------------------------------------------------------------------------------
    def attributes(self, object_name: str, record_id: str, version: str) -> dict[str, str]:
        return {"type": object_name, "url": f"/services/data/{version}/sobjects/{object_name}/{record_id}"}

    def render(self, object_name: str, row: Record, version: str, fields: Iterable[str] | None = None) -> Record:
        sobject = self.sobject(object_name)
        names = list(sobject.fields) if fields is None else [self._field(sobject, f).name for f in fields]
        out: Record = {"attributes": self.attributes(sobject.name, row["Id"], version)}
        for name in names:
            out[name] = render_value(row.get(name))
        return out

    def render_columns(self, object_name: str, row: Record, columns: Iterable[Column], version: str) -> Record:
        out: Record = {"attributes": self.attributes(object_name, row["Id"], version)}
        for column in columns:
            target, source, sobject_name = out, row, object_name
            for hop in column.hops:
                relationship = hop.relationship or ""
                parent_id = source.get(hop.name) if source is not None else None
                parent = self.get(hop.reference_to or "", parent_id) if parent_id else None
                sobject_name = hop.reference_to or ""
                if parent is None:
                    target[relationship] = None
                    source = None
                    break
                nested = target.get(relationship)
                if not isinstance(nested, dict):
                    nested = {"attributes": self.attributes(sobject_name, parent["Id"], version)}
                    target[relationship] = nested
                target, source = nested, parent
            else:
                target[column.field.name] = render_value(source.get(column.field.name))
        return out

    # -- writes -----------------------------------------------------------------------------------------------
    def insert(self, object_name: str, body: Mapping[str, Any], seeding: bool = False) -> Record:
        sobject = self.sobject(object_name)
        self._check_writable(sobject, "inserted", seeding)
        changes = self._changes(sobject, body, creating=True, seeding=seeding)
        row: Record = {name: definition.default for name, definition in sobject.fields.items()}
        row.update(changes)
        record_id = changes.get("Id") or make_id(sobject.key_prefix, self._next_number)
        self._next_number += 1
        if record_id in self.records[sobject.name]:
            raise bad_request(
                "DUPLICATE_VALUE", f"duplicate value found: Id duplicates value on record with id: {record_id}"
            )
        row["Id"] = record_id
        stamps = ("CreatedDate", "LastModifiedDate", "SystemModstamp")
        stamp = None if all(changes.get(name) for name in stamps) else self._stamp()
        for name in stamps:
            row[name] = changes.get(name) or stamp
        row["CreatedById"] = row["LastModifiedById"] = USER_ID
        self._derive(sobject, row, changes)
        self._check_required(sobject, row, sobject.fields)
        self.records[sobject.name][record_id] = row
        self._after_write(sobject, row, changes)
        return row

    def update(self, object_name: str, record_id: str, body: Mapping[str, Any], seeding: bool = False) -> Record:
        sobject = self.sobject(object_name)
        self._check_writable(sobject, "updated", seeding)
        row = self.get(sobject.name, record_id)
        if row is None:
            raise self.not_found(sobject.name, record_id)
        if sobject.name == "Lead" and row.get("IsConverted") and not seeding:
            raise bad_request("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        changes = self._changes(sobject, body, creating=False, seeding=seeding)
        merged = {**row, **changes}
        self._derive(sobject, merged, changes)
        self._check_required(sobject, merged, changes)
        stamp = self._stamp()
        merged["LastModifiedDate"] = changes.get("LastModifiedDate") or stamp
        merged["SystemModstamp"] = changes.get("SystemModstamp") or stamp
        row.update(merged)
        self._after_write(sobject, row, changes)
        return row

    def delete(self, object_name: str, record_id: str) -> Record:
        sobject = self.sobject(object_name)
        self._check_writable(sobject, "deleted", seeding=False)
        row = self.get(sobject.name, record_id, include_deleted=True)
        if row is None:
            raise self.not_found(sobject.name, record_id)
        if row["IsDeleted"]:
            raise bad_request("ENTITY_IS_DELETED", "entity is deleted")
        self._tombstone(row)
        # Contact roles go with their opportunity or contact, as on the platform.
        for role in self.rows("OpportunityContactRole"):
            if row["Id"] in (role.get("OpportunityId"), role.get("ContactId")):
                self._tombstone(role)
        return row

    def _tombstone(self, row: Record) -> None:
        row["IsDeleted"] = True
        row["SystemModstamp"] = self._stamp()

    @staticmethod
    def not_found(object_name: str, record_id: str) -> SalesforceError:
        return SalesforceError(404, "NOT_FOUND", f"The requested resource does not exist ({object_name} {record_id})")

    # -- rules ------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_writable(sobject: SObjectType, action: str, seeding: bool) -> None:
        if sobject.read_only and not seeding:
            raise bad_request("INVALID_TYPE_FOR_OPERATION", f"entity type cannot be {action}: {sobject.name}")

    def _field(self, sobject: SObjectType, name: str) -> FieldDef:
        definition = sobject.field(name)
        if definition is None:
            raise bad_request("INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject.name}", [name])
        return definition

    def _changes(self, sobject: SObjectType, body: Mapping[str, Any], creating: bool, seeding: bool) -> Record:
        if not isinstance(body, Mapping):
            raise bad_request("JSON_PARSER_ERROR", "The request body must be a JSON object")
        changes: Record = {}
        refused: list[str] = []
        for key, value in body.items():
            if key == "attributes":
                declared = value.get("type") if isinstance(value, Mapping) else None
                if declared is not None and str(declared).lower() != sobject.name.lower():
                    raise bad_request("INVALID_TYPE", f"attributes.type '{declared}' does not match {sobject.name}")
                continue
            definition = self._field(sobject, key)
            allowed = definition.createable if creating else definition.updateable
            if not allowed and not (seeding and definition.name in SYSTEM_SEEDABLE):
                refused.append(definition.name)
                continue
            picklist = self.active_currencies() if definition.name == CURRENCY_FIELD else None
            stored = coerce(definition, value, picklist)
            if definition.type == REFERENCE and stored is not None:
                self._check_reference(definition, stored)
            changes[definition.name] = stored
        if refused:
            raise bad_request(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(refused)}. Please check the security settings of this "
                "field and verify that it is read/write for your profile or permission set.",
                refused,
            )
        if "Id" in changes and changes["Id"] is not None and not changes["Id"].startswith(sobject.key_prefix):
            raise bad_request("MALFORMED_ID", f"Id: id value of incorrect type: {changes['Id']}", ["Id"])
        return changes

    def active_currencies(self) -> tuple[str, ...]:
        """The codes ``CurrencyIsoCode`` takes: the active ``CurrencyType`` rows (a single-currency org has none)."""
        if not self.multi_currency:
            return ()
        return tuple(str(r["IsoCode"]) for r in self.rows(CURRENCY_OBJECT) if r.get("IsActive"))

    def _check_reference(self, definition: FieldDef, target_id: str) -> None:
        target = self.objects[definition.reference_to or ""]
        if not target_id.startswith(target.key_prefix):
            raise bad_request(
                "FIELD_INTEGRITY_EXCEPTION",
                f"{definition.name}: id value of incorrect type: {target_id}",
                [definition.name],
            )
        if self.get(target.name, target_id) is None:
            raise bad_request(
                "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {target_id}", [definition.name]
            )

    def _check_required(self, sobject: SObjectType, row: Record, checked: Iterable[str]) -> None:
        missing = [
            name for name in checked if sobject.fields[name].required and (row.get(name) is None or row.get(name) == "")
        ]
        if missing:
            raise bad_request("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)

    def _derive(self, sobject: SObjectType, row: Record, changes: Record) -> None:
        if sobject.name == "Opportunity":
            closed, won = self.stages.get(str(row.get("StageName")), (False, False))
            row["IsClosed"], row["IsWon"] = closed, won
        elif sobject.name in ("Contact", "Lead"):
            row["Name"] = " ".join(p for p in (row.get("FirstName"), row.get("LastName")) if p) or None
            if sobject.name == "Lead":
                check_lead_write(row, changes)
        elif sobject.name == "OpportunityContactRole":
            for name in ("OpportunityId", "ContactId"):
                if name in changes and changes[name] is None:
                    raise bad_request("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name])
        for name, definition in sobject.fields.items():
            if definition.type == BOOLEAN and row.get(name) is None:
                row[name] = False

    def _after_write(self, sobject: SObjectType, row: Record, changes: Record) -> None:
        if sobject.name == "OpportunityContactRole" and changes.get("IsPrimary"):
            # An opportunity has at most one primary contact role: the newest primary wins.
            for other in self.rows("OpportunityContactRole"):
                if other is not row and other["OpportunityId"] == row["OpportunityId"] and other["IsPrimary"]:
                    other["IsPrimary"] = False
                    other["SystemModstamp"] = self._stamp()
