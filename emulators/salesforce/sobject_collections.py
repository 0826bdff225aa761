"""Salesforce emulator: sObject Collections (create, update, upsert by external id, delete).

At most 200 records per call, processed in order. Each record gets its own result
``{"id", "success", "errors": [{"statusCode", "message", "fields"}]}`` (note ``statusCode``, not
``errorCode``); upserts add ``created``. With ``allOrNone`` any failure rolls the whole call back and the
records that had succeeded report ``ALL_OR_NONE_OPERATION_ROLLED_BACK``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .schema import FieldDef, SalesforceError, bad_request
from .store import Org

MAX_RECORDS = 200
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
    "fields": [],
}

Committed = tuple[str, str, str, dict[str, Any], str]  # operation, object, id, body sent, route
Step = Callable[[Any], tuple[dict[str, Any], Committed]]


@dataclass
class CollectionResult:
    results: list[dict[str, Any]]
    committed: list[Committed] = field(default_factory=list)


def _failure(error: SalesforceError, record_id: str | None, upsert: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": record_id,
        "success": False,
        "errors": [{"statusCode": error.code, "message": error.message, "fields": error.fields}],
    }
    if upsert:
        result["created"] = False
    return result


def _declared_type(record: Any) -> str:
    if not isinstance(record, Mapping):
        raise bad_request("JSON_PARSER_ERROR", "each record must be a JSON object")
    attributes = record.get("attributes")
    declared = attributes.get("type") if isinstance(attributes, Mapping) else None
    if not declared:
        raise bad_request("INVALID_TYPE", "Each record needs attributes with a type")
    return str(declared)


def _id_key(record: Mapping[str, Any]) -> str | None:
    return next((key for key in record if key.lower() == "id"), None)


class Collections:
    def __init__(self, org: Org) -> None:
        self.org = org

    def create(self, records: list[Any], all_or_none: bool) -> CollectionResult:
        def step(record: Any) -> tuple[dict[str, Any], Committed]:
            name = self.org.sobject(_declared_type(record)).name
            if _id_key(record):
                raise bad_request("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            row = self.org.insert(name, record)
            done: Committed = ("create", name, row["Id"], dict(record), "collection")
            return {"id": row["Id"], "success": True, "errors": []}, done

        return self._run(records, step, all_or_none, lambda record: None)

    def update(self, records: list[Any], all_or_none: bool) -> CollectionResult:
        def record_id(record: Any) -> str | None:
            key = _id_key(record) if isinstance(record, Mapping) else None
            return str(record[key]) if key else None

        def step(record: Any) -> tuple[dict[str, Any], Committed]:
            name = self.org.sobject(_declared_type(record)).name
            key = _id_key(record)
            if key is None:
                raise bad_request("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            body = {k: v for k, v in record.items() if k != key}
            row = self.org.update(name, str(record[key]), body)
            return {"id": row["Id"], "success": True, "errors": []}, ("update", name, row["Id"], body, "collection")

        return self._run(records, step, all_or_none, record_id)

    def upsert(self, object_name: str, definition: FieldDef, records: list[Any], all_or_none: bool) -> CollectionResult:
        seen: set[str] = set()

        def step(record: Any) -> tuple[dict[str, Any], Committed]:
            declared = self.org.sobject(_declared_type(record)).name
            if declared != object_name:
                raise bad_request("INVALID_TYPE", f"All records must be of type {object_name}, not {declared}")
            if _id_key(record):
                raise bad_request("INVALID_FIELD", "Id is not allowed when upserting by an external id", ["Id"])
            key = next((k for k in record if k.lower() == definition.name.lower()), None)
            value = record.get(key) if key else None
            if not isinstance(value, str) or not value:
                raise bad_request(
                    "MISSING_ARGUMENT", f"{definition.name} not specified for an upsert", [definition.name]
                )
            folded = value if self.org.external_id_case_sensitive else value.casefold()
            if folded in seen:
                raise bad_request(
                    "DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [definition.name]
                )
            seen.add(folded)
            matches = self.org.match_external(object_name, definition, value)
            if len(matches) > 1:
                raise bad_request(
                    "DUPLICATE_EXTERNAL_ID",
                    f"{object_name}: more than one record found for external id field: "
                    f"[{', '.join(row['Id'] for row in matches)}]",
                    [definition.name],
                )
            if not matches:
                row = self.org.insert(object_name, record)
                result = {"id": row["Id"], "success": True, "errors": [], "created": True}
                return result, ("create", object_name, row["Id"], dict(record), "collection-upsert")
            body = {k: v for k, v in record.items() if k != key}
            row = self.org.update(object_name, matches[0]["Id"], body)
            result = {"id": row["Id"], "success": True, "errors": [], "created": False}
            return result, ("update", object_name, row["Id"], body, "collection-upsert")

        return self._run(records, step, all_or_none, lambda record: None, upsert=True)

    def delete(self, ids: list[str], all_or_none: bool) -> CollectionResult:
        def step(record_id: Any) -> tuple[dict[str, Any], Committed]:
            found = self.org.find_any(str(record_id))
            if found is None:
                raise SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted or does not exist")
            name, row = found
            self.org.delete(name, row["Id"])
            return {"id": row["Id"], "success": True, "errors": []}, ("delete", name, row["Id"], {}, "collection")

        return self._run(ids, step, all_or_none, lambda record_id: str(record_id))

    def _run(
        self,
        items: list[Any],
        step: Step,
        all_or_none: bool,
        known_id: Callable[[Any], str | None],
        upsert: bool = False,
    ) -> CollectionResult:
        if len(items) > MAX_RECORDS:
            raise bad_request(
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {MAX_RECORDS} records into this call",
            )
        outcomes: list[tuple[dict[str, Any], Committed | None]] = []
        with self.org.savepoint() as savepoint:
            for item in items:
                try:
                    outcomes.append(step(item))
                except SalesforceError as error:
                    outcomes.append((_failure(error, known_id(item), upsert), None))
            if all_or_none and any(done is None for _, done in outcomes):
                self.org.roll_back(savepoint)
                return CollectionResult([_rolled_back(result, done, upsert) for result, done in outcomes])
        return CollectionResult([result for result, _ in outcomes], [done for _, done in outcomes if done])


def _rolled_back(result: dict[str, Any], done: Committed | None, upsert: bool) -> dict[str, Any]:
    if done is None:
        return result
    # A rolled-back create leaves no record behind, so it has no id to report.
    rolled = {"id": None if done[0] == "create" else result["id"], "success": False, "errors": [dict(ROLLED_BACK)]}
    if upsert:
        rolled["created"] = False
    return rolled
