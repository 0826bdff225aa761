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

Queries and external-id lookups read rows through per-field indexes (:class:`FieldIndex`, built on first use,
re-filed by every write) and then apply their full condition, so that they cost what matches rather than what the
org holds. All-or-none calls go back to a :meth:`Org.savepoint` through a journal of the rows each write changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
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
    TEXT_TYPES,
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
from .soql import AllOf, Column, Lookup, Narrowing, index_key

Record = dict[str, Any]


def _copy_row(row: Record) -> Record:
    if any(isinstance(value, list | dict | set) for value in row.values()):
        return copy.deepcopy(row)
    return dict(row)


class FieldIndex:
    """The ids of one object's rows (deleted ones too) by the :func:`~.soql.index_key` of one field's value, kept
    current by the org on every write, so that an equality lookup reads the few matching rows, not them all."""

    def __init__(self, field: str, rows: Iterable[Record]) -> None:
        self.field = field
        self.ids: dict[Any, set[str]] = {}
        self.key_of: dict[str, Any] = {}
        for row in rows:
            self.file(row)

    def file(self, row: Record) -> None:
        """File the row under its current value, moving it from where it was filed before."""
        record_id, key = row["Id"], index_key(row.get(self.field))
        if record_id in self.key_of:
            old = self.key_of[record_id]
            if old == key and type(old) is type(key):
                return
            bucket = self.ids[old]
            bucket.discard(record_id)
            if not bucket:
                del self.ids[old]
        self.key_of[record_id] = key
        self.ids.setdefault(key, set()).add(record_id)

    def remove(self, record_id: str) -> None:
        key = self.key_of.pop(record_id)
        bucket = self.ids[key]
        bucket.discard(record_id)
        if not bucket:
            del self.ids[key]

    def count(self, values: Iterable[Any]) -> int:
        return sum(len(self.ids.get(index_key(value), ())) for value in values)

    def lookup(self, values: Iterable[Any]) -> set[str]:
        found: set[str] = set()
        for value in values:
            found |= self.ids.get(index_key(value), set())
        return found


@dataclass(frozen=True)
class Savepoint:
    mark: int  # the journal's length when it was set
    next_number: int
    last_stamp: datetime


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
        # Per object: its field indexes, built on first lookup, and each row's place in insertion order (the order
        # a scan returns rows in, kept by lookups too).
        self._indexes: dict[str, dict[str, FieldIndex]] = {}
        self._places: dict[str, dict[str, int]] = {}
        # The rows as they were before each write since the oldest open savepoint (None: the write inserted it).
        self._journal: list[tuple[str, str, Record | None]] = []
        self._open_savepoints = 0
        # Rows that lookups (queries, external ids, contact roles of a write) have looked at: tests read it to tell
        # an index lookup from a scan.
        self.rows_examined = 0
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
        self._drop_indexes()
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
        self._drop_indexes()

    def _drop_indexes(self) -> None:
        """Forget every index (rebuilt on the next lookup): for changes that replace the records wholesale."""
        self._indexes.clear()
        self._places.clear()

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

    @contextmanager
    def savepoint(self) -> Iterator[Savepoint]:
        """Where an all-or-none call can go back to (:meth:`roll_back`) until the block ends. Writes inside it keep
        the rows as they were before, not a copy of the whole org: copying every row made each all-or-none call
        cost a fifth of a second once the org held ten thousand records of each kind. Savepoints nest (a
        collection call inside a composite call)."""
        point = Savepoint(len(self._journal), self._next_number, self._last_stamp)
        self._open_savepoints += 1
        try:
            yield point
        finally:
            self._open_savepoints -= 1
            if not self._open_savepoints:
                self._journal.clear()

    def roll_back(self, point: Savepoint) -> None:
        """Undo every write made since ``point``, newest first, so each row ends as it was when ``point`` was set."""
        while len(self._journal) > point.mark:
            name, record_id, before = self._journal.pop()
            if before is None:
                del self.records[name][record_id]
                self._unfile(name, record_id)
            else:
                self.records[name][record_id] = before
                self.changed(name, before)
        self._next_number, self._last_stamp = point.next_number, point.last_stamp

    def changing(self, object_name: str, row: Record) -> None:
        """Keep the row as it is for an open savepoint; every write path calls it before changing a row in place."""
        if self._open_savepoints:
            self._journal.append((self.sobject(object_name).name, row["Id"], _copy_row(row)))

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

    def candidates(self, object_name: str, narrowing: Narrowing | None, include_deleted: bool = False) -> list[Record]:
        """The rows that can meet ``narrowing``, in scan order: every row when nothing narrows them or an index
        would not leave fewer. Callers still apply their full condition to each row returned."""
        name = self.sobject(object_name).name
        if narrowing is None or self._estimate(name, narrowing) >= len(self.records[name]):
            found = self.rows(name, include_deleted)
            self.rows_examined += len(found)
            return found
        return self._rows_of(name, self._ids(name, narrowing), include_deleted)

    def _estimate(self, name: str, narrowing: Narrowing) -> int:
        """How many ids :meth:`_ids` would give at most, without collecting them."""
        if isinstance(narrowing, Lookup):
            if narrowing.field == "Id":
                return len(narrowing.values)
            return self._index(name, narrowing.field).count(narrowing.values)
        if isinstance(narrowing, AllOf):
            return min(self._estimate(name, part) for part in narrowing.parts)
        return sum(self._estimate(name, branch) for branch in narrowing.branches)

    def _ids(self, name: str, narrowing: Narrowing) -> set[str]:
        if isinstance(narrowing, Lookup):
            if narrowing.field == "Id":
                # SOQL gives ids in their 18-character form and compares them exactly: the records' own keys.
                rows = self.records[name]
                return {value for value in narrowing.values if isinstance(value, str) and value in rows}
            return self._index(name, narrowing.field).lookup(narrowing.values)
        if isinstance(narrowing, AllOf):
            # Any one part holds every match; the one with the fewest ids is read.
            return self._ids(name, min(narrowing.parts, key=lambda part: self._estimate(name, part)))
        return set().union(*(self._ids(name, branch) for branch in narrowing.branches))

    def _rows_of(self, name: str, ids: set[str], include_deleted: bool) -> list[Record]:
        """The rows of ``ids`` in scan order (the order rows were inserted in)."""
        rows, places = self.records[name], self._place(name)
        found = [rows[i] for i in sorted(ids, key=places.__getitem__)]
        found = [row for row in found if include_deleted or not row["IsDeleted"]]
        self.rows_examined += len(found)
        return found

    def match_external(self, object_name: str, definition: FieldDef, value: str) -> list[Record]:
        if definition.type not in TEXT_TYPES or not value:
            # The index files values as stored; these compare through str() or match empty values, so scan.
            candidates = self.rows(object_name)
            self.rows_examined += len(candidates)
        else:
            # The field's own index, Id included: unlike SOQL's, this comparison ignores the case of an Id too.
            name = self.sobject(object_name).name
            candidates = self._rows_of(name, self._index(name, definition.name).lookup((value,)), False)
        if self.external_id_case_sensitive:
            return [row for row in candidates if row.get(definition.name) == value]
        wanted = value.casefold()
        return [row for row in candidates if str(row.get(definition.name) or "").casefold() == wanted]

    def _index(self, name: str, field: str) -> FieldIndex:
        indexes = self._indexes.setdefault(name, {})
        index = indexes.get(field)
        if index is None:
            index = indexes[field] = FieldIndex(field, self.records[name].values())
        return index

    def _unfile(self, name: str, record_id: str) -> None:
        for index in self._indexes.get(name, {}).values():
            index.remove(record_id)
        self._places.get(name, {}).pop(record_id, None)

    def _place(self, name: str) -> dict[str, int]:
        places = self._places.get(name)
        if places is None:
            places = self._places[name] = {record_id: n for n, record_id in enumerate(self.records[name])}
        return places

    def changed(self, object_name: str, row: Record) -> None:
        """Re-file a row the org has inserted or changed in place in the object's indexes. Every write path calls
        it after changing a row (a row changed without it would be missed by lookups of its new value)."""
        name = self.sobject(object_name).name
        places = self._places.get(name)
        if places is not None and row["Id"] not in places:
            places[row["Id"]] = len(places)
        for index in self._indexes.get(name, {}).values():
            index.file(row)

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
        if self._open_savepoints:
            self._journal.append((sobject.name, record_id, None))
        self.records[sobject.name][record_id] = row
        self.changed(sobject.name, row)
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
        self.changing(sobject.name, row)
        row.update(merged)
        self.changed(sobject.name, row)
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
        self._tombstone(sobject.name, row)
        # Contact roles go with their opportunity or contact, as on the platform.
        for link in ("OpportunityId", "ContactId"):
            for role in self.candidates("OpportunityContactRole", Lookup(link, (row["Id"],))):
                if role.get(link) == row["Id"] and not role["IsDeleted"]:
                    self._tombstone("OpportunityContactRole", role)
        return row

    def _tombstone(self, object_name: str, row: Record) -> None:
        self.changing(object_name, row)
        row["IsDeleted"] = True
        row["SystemModstamp"] = self._stamp()
        self.changed(object_name, row)

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
            siblings = self.candidates(sobject.name, Lookup("OpportunityId", (row["OpportunityId"],)))
            for other in siblings:
                if other is not row and other["OpportunityId"] == row["OpportunityId"] and other["IsPrimary"]:
                    self.changing(sobject.name, other)
                    other["IsPrimary"] = False
                    other["SystemModstamp"] = self._stamp()
                    self.changed(sobject.name, other)
