"""Sync links, state, leases and the audit trail on Azure Table Storage.

Row keys never hold raw external ids with characters Table Storage forbids (``/ \\ # ?``); ids are
escaped by :func:`safe_key`. Links are written with etag conditions so two workers can never
silently overwrite each other's bookkeeping.

Every link, audit and state row is checked against the size limits before it is sent (Azurite, the local
emulator, refuses an oversized property but accepts any entity size), and a row Table Storage refuses for
what it holds raises :class:`StorageRejected`, a permanent failure of that record. Long texts are capped in
UTF-16 units, the way Table Storage counts them, so these rows fit by construction.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EntityProperty, TableClient, TableServiceClient, TableTransactionError, UpdateMode

from ..domain.bounded import AGREED_MAX_UNITS, ERROR_MAX_UNITS, MAX_TEXT_UNITS, cap_utf16, encode_agreed, utf16_units
from ..domain.errors import PairBusy, PairChanged, PreconditionFailed, StorageRejected
from ..ports import (
    LINK_MICROSOFT_COPY,
    AuditEntry,
    CreateFailure,
    CreateIntent,
    CredentialFailure,
    CrmEntry,
    FeedWatermark,
    Health,
    Link,
    PairLease,
    Pause,
    WebhookRegistration,
)
from ..write_fence import check_write_allowed, current_lease
from . import state_rows
from .state_rows import LeaseRow

_FORBIDDEN = {"/": "%2F", "\\": "%5C", "#": "%23", "?": "%3F", "%": "%25"}
LINK_PARTITION = "referral"
# The CRM index rows (CRM id -> referral id, with what an echo check needs) share the links' partition, so a
# link and its index row are written together in one entity group transaction: one request, all or nothing.
CRM_INDEX_PREFIX = "~crm~"  # "~" sorts after every character of a referral id (a GUID)
LEGACY_CRM_INDEX_PARTITION = "crm"  # where versions before 0.15 kept the index rows; moved on first start
# Pair leases live beside the links too, so a job takes its lease with its first link save and releases it with its
# last, in the same request (see save_link).
LEASE_PREFIX = "~lease~"
STATE_PARTITION = "state"

# Our contract, stricter than Table Storage's 1 MiB entity: every row we write stays under 64 KiB.
MAX_ENTITY_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024  # PartitionKey and RowKey, in UTF-16
MAX_PROPERTIES = 252  # besides PartitionKey, RowKey and Timestamp
AUDIT_MESSAGE_MAX_UNITS = 16_000
AUDIT_EXTRA_MAX_UNITS = 12_000
AUDIT_FIELDS_MAX_UNITS = 2_000


def safe_key(value: str) -> str:
    escaped = "".join(_FORBIDDEN.get(ch, ch) for ch in value)
    return "".join(ch for ch in escaped if ch >= " " and ch != "\x7f")


def _now() -> datetime:
    return datetime.now(UTC)


def _inverted_ticks(at: datetime) -> str:
    # Newest-first ordering within a partition: RowKeys sort ascending.
    return f"{(10**19 - int(at.timestamp() * 1_000_000)):019d}"


class TableSyncStore:
    def __init__(self, service: TableServiceClient, links: str, state: str, audit: str) -> None:
        self.links: TableClient = service.get_table_client(links)
        self.state: TableClient = service.get_table_client(state)
        self.audit: TableClient = service.get_table_client(audit)
        self._ready = False
        self._lease_etags: dict[tuple[str, str], str] = {}  # (key, owner) -> etag of the lease row we wrote
        # Told of every link saved (status before, status now, created?): status counts links as they change.
        self.link_observer: Callable[[str | None, str | None, bool], None] | None = None

    def ensure(self) -> None:
        """Create the tables before the first write. Reads of one row do without: a missing table reads as a
        missing row, so looking (a dry run) never creates anything."""
        if self._ready:
            return
        for table in (self.links, self.state, self.audit):
            try:
                table.create_table()
            except ResourceExistsError:
                pass
        self._move_legacy_index_rows()
        self._move_legacy_create_state()
        self._ready = True

    def _move_legacy_index_rows(self) -> None:
        """Index rows written by a version before 0.15 move beside the links: one query per process start, which
        finds nothing once they have moved. A row a job has rewritten in the new place meanwhile is kept."""
        for row in self.links.query_entities(f"PartitionKey eq '{LEGACY_CRM_INDEX_PARTITION}'"):
            moved = {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey")}
            try:
                self.links.create_entity({"PartitionKey": LINK_PARTITION, "RowKey": _index_key(row["RowKey"]), **moved})
            except ResourceExistsError:
                pass
            try:
                self.links.delete_entity(LEGACY_CRM_INDEX_PARTITION, row["RowKey"])
            except ResourceNotFoundError:
                pass

    def _move_legacy_create_state(self) -> None:
        """Create failures and intents written by a version before 0.16 (rows of their own in the state table) move
        into the records' CRM index entries: one query per process start, which finds nothing once they have moved.
        A record paired since has no use for them."""
        first = state_rows.create_failure_key("")
        bound = first[:-1] + chr(ord(first[-1]) + 1)
        query = f"PartitionKey eq '{STATE_PARTITION}' and RowKey ge '{first}' and RowKey lt '{bound}'"
        for row in self.state.query_entities(query):
            crm_key = str(row["RowKey"])[len(first) :]
            failure, intent = state_rows.create_failure_from_row(row), state_rows.create_intent_from_row(row)
            columns = state_rows.create_failure_columns(failure) | state_rows.create_intent_columns(intent)
            if failure is not None or intent is not None:
                try:
                    self.links.create_entity({"PartitionKey": LINK_PARTITION, "RowKey": _index_key(crm_key), **columns})
                except ResourceExistsError:
                    pass
            try:
                self.state.delete_entity(STATE_PARTITION, row["RowKey"])
            except ResourceNotFoundError:
                pass

    # -- links ---------------------------------------------------------------------------------
    def get_link(self, referral_id: str) -> Link | None:
        try:
            row = self.links.get_entity(LINK_PARTITION, safe_key(referral_id))
        except ResourceNotFoundError:
            return None
        link = _link_from_row(row)
        lease = current_lease()
        if lease is not None and lease.untaken():
            lease.saw(link)  # the job decides from it before its lease: the take proves it unchanged
        return link

    def find_link_by_crm_id(self, crm_id: str) -> Link | None:
        indexed = self.crm_link_state(crm_id)
        return self.get_link(indexed.referral_id) if indexed is not None else None

    def crm_entry(self, crm_id: str) -> CrmEntry | None:
        try:
            row = self.links.get_entity(LINK_PARTITION, _index_key(safe_key(crm_id)))
        except ResourceNotFoundError:
            return None
        referral_id = row.get("ReferralId")
        link = None
        if referral_id:
            link = Link(str(referral_id), crm_id, crm_etag=row.get("CrmEtag"), last_status=row.get("LastStatus"))
        failure, intent = state_rows.create_failure_from_row(row), state_rows.create_intent_from_row(row)
        return CrmEntry(link, failure, intent, row.metadata.get("etag"))

    def crm_link_state(self, crm_id: str) -> Link | None:
        entry = self.crm_entry(crm_id)
        return entry.link if entry is not None else None

    def save_link(self, link: Link, last: bool = False) -> Link:
        """Write the link, conditional on the etag it was read with (or as new), and its CRM index row when what
        the index holds changed: both in one transaction, so they never disagree after a crash; with the job's
        lease taken, or with ``last`` released, in the same request (:meth:`_submit_in_job`)."""
        self.ensure()
        what = f"the link row for referral {link.referral_id}"
        row = check_limits(what, _row_from_link(link))
        indexed = (link.crm_id, link.crm_etag, link.last_status)
        index = _index_row(link) if link.crm_id and indexed != link.indexed else None
        if link.etag is None:
            operations: list[_Operation] = [("create", row, {})]
        else:
            operations = [("update", row, _if_unchanged(link.etag, UpdateMode.REPLACE))]
        if index is not None:
            check_limits(f"the CRM index row for referral {link.referral_id}", index)
            operations.append(("upsert", index, {"mode": UpdateMode.REPLACE}))
        copy = _microsoft_copy_row(link) if link.microsoft_copy_id != link.copy_recorded else None
        if copy is not None:
            operations.append(("upsert", copy, {"mode": UpdateMode.REPLACE}))
        try:
            meta = self._submit_in_job(operations, last)[0]
        except TableTransactionError as exc:
            code = getattr(exc.error_code, "value", exc.error_code)
            if code in _CONFLICT_CODES or exc.status_code in (404, 409, 412):
                raise PreconditionFailed(
                    "Table Storage", f"link for referral {link.referral_id} changed concurrently", 412
                ) from exc
            _raise_if_rejected(exc, what, operations[exc.index][1] if exc.index < len(operations) else row)
            raise
        except HttpResponseError as exc:
            _raise_if_rejected(exc, what, row)
            raise
        if self.link_observer is not None:
            before = link.indexed[2] if link.etag is not None and link.indexed is not None else None
            self.link_observer(before, link.last_status, link.etag is None)
        link.indexed = indexed  # what the index row holds now (or would, once the link names a CRM record)
        link.copy_recorded = link.microsoft_copy_id
        link.etag = meta.get("etag")
        return link

    def _submit_in_job(self, operations: list[_Operation], last: bool = False) -> list[Mapping[str, Any]]:
        """``operations`` in one transaction of the links' partition. Inside a job (:func:`current_lease`) the same
        request takes the job's lease when this is its first write, or with ``last`` releases it. A last write that
        is also the job's first takes no lease: its own conditions keep it from overwriting anyone."""
        lease = current_lease()
        if lease is None:
            check_write_allowed()
            return self.links.submit_transaction(operations)
        last = last and lease.ends_with_last_save()
        if lease.untaken():
            if last:
                return self.links.submit_transaction(operations)
            return self._with_lease(lease.key, lease.owner, lease.seconds, lease.seen(), operations, lease)
        check_write_allowed()
        return self._releasing(lease, operations) if last else self.links.submit_transaction(operations)

    def _releasing(self, lease: PairLease, operations: list[_Operation]) -> list[Mapping[str, Any]]:
        """``operations`` and the deletion of the lease row we wrote last, in one transaction."""
        with lease.row_lock():
            etag = self._lease_etags.get((lease.key, lease.owner))
            if etag is None:
                return self.links.submit_transaction(operations)
            delete = ("delete", {"PartitionKey": LINK_PARTITION, "RowKey": lease_key(lease.key)}, _if_unchanged(etag))
            results = self.links.submit_transaction([*operations, delete])
            self._lease_etags.pop((lease.key, lease.owner), None)
            lease.released()
            return results

    def _with_lease(
        self,
        key: str,
        owner: str,
        seconds: int,
        seen: Sequence[Link],
        operations: list[_Operation],
        lease: PairLease | None = None,
    ) -> list[Mapping[str, Any]]:
        """``operations`` with the lease taken and the links ``seen`` proven unchanged (each touched on condition of
        the etag it was read with), in one transaction; the results of ``operations``. PairBusy when another worker
        holds the lease; a TableTransactionError of the operations (or of a touch) as Table Storage raised it."""
        written = {op[1]["RowKey"] for op in operations}
        touched = [link for link in seen if link.etag and safe_key(link.referral_id) not in written]
        touches: list[_Operation] = [
            (
                "update",
                {"PartitionKey": LINK_PARTITION, "RowKey": safe_key(t.referral_id)},
                _if_unchanged(t.etag, UpdateMode.MERGE),
            )
            for t in touched
        ]
        row = _lease_row(key, LeaseRow(owner, _now() + timedelta(seconds=seconds)))
        take: _Operation = ("create", row, {})
        for _ in range(2):
            started = time.monotonic()
            try:
                results = self.links.submit_transaction([take, *touches, *operations])
            except TableTransactionError as exc:
                if 0 < exc.index <= len(touched):
                    raise PairChanged("sync", "a link this job read changed before it took the lease") from exc
                if exc.index != 0:
                    exc.index -= 1 + len(touched)  # as an error of ``operations``, which the caller reports
                    raise
                try:
                    current = self.links.get_entity(LINK_PARTITION, lease_key(key))
                except ResourceNotFoundError:
                    take = ("create", row, {})
                    continue
                if LeaseRow.from_row(current).held_by_another_at(_now(), owner):
                    raise PairBusy("sync", f"{key} is being synchronised by another worker") from exc
                take = ("update", row, _if_unchanged(current.metadata["etag"], UpdateMode.REPLACE))
                continue
            self._held(key, owner, results[0])
            for link, meta in zip(touched, results[1 : 1 + len(touched)], strict=True):
                link.etag = meta.get("etag")
            if lease is not None:
                lease.took(started)
            return results[1 + len(touched) :]
        raise PairBusy("sync", f"{key} changed hands while this worker took it")

    def iter_links(self) -> list[Link]:
        self.ensure()
        rows = self.links.query_entities(f"PartitionKey eq '{LINK_PARTITION}'")
        return [
            _link_from_row(r)
            for r in rows
            if not str(r["RowKey"]).startswith(_BESIDE_LINKS) and r.get("LastStatus") != LINK_MICROSOFT_COPY
        ]

    # -- audit ---------------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        self.ensure()
        at = entry.at or _now()
        row = {
            "PartitionKey": safe_key(entry.record_key),
            "RowKey": f"{_inverted_ticks(at)}-{uuid.uuid4().hex[:8]}",
            "At": at,
            "Action": entry.action,
            "Direction": entry.direction,
            "Message": cap_utf16(entry.message, AUDIT_MESSAGE_MAX_UNITS),
            "CrmId": entry.crm_id or "",
            "ReferralId": entry.referral_id or "",
            "Fields": cap_utf16(",".join(entry.fields), AUDIT_FIELDS_MAX_UNITS),
            "Extra": _extra_json(entry.extra) if entry.extra else "",
        }
        _guarded(f"the audit row for {entry.record_key}", row, self.audit.create_entity)

    def audit_trail(self, record_key: str, limit: int = 50) -> list[AuditEntry]:
        self.ensure()
        rows = self.audit.query_entities(
            f"PartitionKey eq '{_odata_quote(safe_key(record_key))}'", results_per_page=limit
        )
        entries: list[AuditEntry] = []
        for row in rows:
            entries.append(
                AuditEntry(
                    record_key=record_key,
                    action=row["Action"],
                    direction=row["Direction"],
                    message=row["Message"],
                    crm_id=row.get("CrmId") or None,
                    referral_id=row.get("ReferralId") or None,
                    fields=[f for f in str(row.get("Fields", "")).split(",") if f],
                    at=row.get("At"),
                    extra=json.loads(row["Extra"]) if row.get("Extra") else {},
                )
            )
            if len(entries) >= limit:
                break
        return entries

    # -- leases (one worker per record at a time) ---------------------------------------------
    def acquire_lease(self, key: str, owner: str, seconds: int, seen: Sequence[Link] = ()) -> bool:
        self.ensure()
        try:
            self._with_lease(key, owner, seconds, seen, [])
        except PairChanged:
            raise
        except PairBusy:
            return False
        return True

    def _held(self, key: str, owner: str, written: Mapping[str, Any]) -> None:
        etag = written.get("etag")
        if etag:
            self._lease_etags[(key, owner)] = str(etag)

    def renew_lease(self, key: str, owner: str, seconds: int) -> bool:
        """Extend a lease this owner still holds. False when another worker holds it, or it expired (someone
        may have taken it since), or it is gone: an expired lease is never taken back. The write is conditional
        on the etag read, so a takeover between the read and the write wins over the renewal."""
        self.ensure()
        try:
            current = self.links.get_entity(LINK_PARTITION, lease_key(key))
        except ResourceNotFoundError:
            return False
        now = _now()
        if not LeaseRow.from_row(current).held_by_at(now, owner):
            return False
        row = _lease_row(key, LeaseRow(owner, now + timedelta(seconds=seconds)))
        try:
            written = self.links.update_entity(row, **_if_unchanged(current.metadata["etag"], UpdateMode.REPLACE))
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        self._held(key, owner, written)
        return True

    def release_lease(self, key: str, owner: str) -> None:
        """Delete the lease row if it is still the one this owner wrote: one conditional delete with the etag
        of our last write (a row taken over since has another etag and stays)."""
        etag = self._lease_etags.pop((key, owner), None)
        if etag is None:
            try:
                current = self.links.get_entity(LINK_PARTITION, lease_key(key))
            except ResourceNotFoundError:
                return
            if LeaseRow.from_row(current).owner != owner:
                return
            etag = current.metadata["etag"]
        try:
            self.links.delete_entity(LINK_PARTITION, lease_key(key), **_if_unchanged(etag))
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    # -- state records ---------------------------------------------------------------------------
    def get_watermark(self, feed: str) -> FeedWatermark | None:
        row = self.get_state(feed)
        return state_rows.watermark_from_row(row) if row is not None else None

    def save_watermark(self, feed: str, mark: FeedWatermark) -> None:
        self.set_state(feed, state_rows.watermark_columns(mark))

    def get_health(self) -> Health:
        return state_rows.health_from_row(self.get_state(state_rows.HEALTH_KEY) or {})

    def save_pause(self, pause: Pause) -> None:
        self.set_state(state_rows.HEALTH_KEY, state_rows.pause_columns(pause))

    def save_credential_failure(self, failure: CredentialFailure) -> None:
        self.set_state(state_rows.HEALTH_KEY, state_rows.credential_failure_columns(failure))

    def clear_credential_failure(self, recovered_at: datetime) -> None:
        self.set_state(state_rows.HEALTH_KEY, state_rows.credential_recovery_columns(recovered_at))

    def save_token_redeemed(self, at: datetime) -> None:
        """The Partner Center refresh token was redeemed at ``at`` (its 90-day inactivity clock restarts)."""
        self.set_state(state_rows.HEALTH_KEY, state_rows.token_redeemed_columns(at))

    # -- the webhook registration (written by `register-webhook`) and the last verified test event -------------
    def save_webhook_registration(self, url: str, events: tuple[str, ...], registered_at: datetime) -> None:
        self.set_state(
            state_rows.WEBHOOK_REGISTRATION_KEY, state_rows.webhook_registration_columns(url, events, registered_at)
        )

    def record_test_event(self, at: datetime, resource_uri: str) -> None:
        """A verified ``test-created`` event reached the webhook at ``at``."""
        self.set_state(state_rows.WEBHOOK_REGISTRATION_KEY, state_rows.received_test_event_columns(at, resource_uri))

    def webhook_registration(self) -> WebhookRegistration | None:
        row = self.get_state(state_rows.WEBHOOK_REGISTRATION_KEY)
        return state_rows.webhook_registration_from_row(row) if row is not None else None

    # -- what creating a record's referral leaves: in the record's CRM index entry, read with it ----------------
    # (Saving the pair's link replaces the entry, and both with it.)
    def get_create_failure(self, crm_id: str) -> CreateFailure | None:
        entry = self.crm_entry(crm_id)
        return entry.failure if entry is not None else None

    def save_create_failure(self, crm_id: str, failure: CreateFailure) -> None:
        self._merge_entry(crm_id, state_rows.create_failure_columns(failure))

    def save_create_intent(self, crm_id: str, intent: CreateIntent, entry: CrmEntry | None) -> None:
        row = {"PartitionKey": LINK_PARTITION, "RowKey": _index_key(safe_key(crm_id))}
        row |= state_rows.create_intent_columns(intent)
        check_limits(f"the create intent of opportunity {crm_id}", row)
        operation: _Operation = ("create", row, {})
        if entry is not None and entry.etag:
            operation = ("update", row, _if_unchanged(entry.etag, UpdateMode.MERGE))
        self.ensure()
        try:
            self._submit_in_job([operation])
        except TableTransactionError as exc:
            if exc.status_code not in (404, 409, 412):
                _raise_if_rejected(exc, f"the create intent of opportunity {crm_id}", row)
                raise
            raise PairChanged("sync", f"opportunity {crm_id} was paired or tried by another job meanwhile") from exc

    def _merge_entry(self, crm_id: str, columns: dict[str, Any]) -> None:
        check_write_allowed()
        self.ensure()
        row = {"PartitionKey": LINK_PARTITION, "RowKey": _index_key(safe_key(crm_id)), **columns}
        what = f"the CRM index entry of opportunity {crm_id}"
        _guarded(what, row, lambda row: self.links.upsert_entity(row, mode=UpdateMode.MERGE))

    # -- state rows as stored (each merged into the row, so records sharing a row keep each other's columns) ------
    def get_state(self, key: str) -> dict[str, Any] | None:
        try:
            row = self.state.get_entity(STATE_PARTITION, safe_key(key))
        except ResourceNotFoundError:
            return None
        return {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey")}

    def set_state(self, key: str, values: dict[str, Any]) -> None:
        check_write_allowed()
        self.ensure()
        row = {"PartitionKey": STATE_PARTITION, "RowKey": safe_key(key), **values}
        # A merge can only be checked for what it sends; Table Storage refuses a merged row that outgrows it.
        _guarded(f"the state row {key}", row, lambda row: self.state.upsert_entity(row, mode=UpdateMode.MERGE))


def _index_key(crm_key: str) -> str:
    return CRM_INDEX_PREFIX + crm_key


def _index_row(link: Link) -> dict[str, Any]:
    assert link.crm_id
    return {
        "PartitionKey": LINK_PARTITION,
        "RowKey": _index_key(safe_key(link.crm_id)),
        "ReferralId": link.referral_id,
        **({"CrmEtag": link.crm_etag} if link.crm_etag else {}),
        **({"LastStatus": link.last_status} if link.last_status else {}),
    }


def _microsoft_copy_row(link: Link) -> dict[str, Any] | None:
    if not link.microsoft_copy_id:
        return None
    return {
        "PartitionKey": LINK_PARTITION,
        "RowKey": safe_key(link.microsoft_copy_id),
        "ReferralId": link.microsoft_copy_id,
        "LastStatus": LINK_MICROSOFT_COPY,
        "PartnerReferralId": link.referral_id,
        **({"PcUpdatedAt": link.microsoft_copy_updated_at} if link.microsoft_copy_updated_at else {}),
    }


# A transaction refused because a row changed, exists already or is gone: another writer got there first.
_CONFLICT_CODES = {"UpdateConditionNotSatisfied", "EntityAlreadyExists", "ResourceNotFound"}


_Operation = tuple[str, dict[str, Any], dict[str, Any]]
_BESIDE_LINKS = (CRM_INDEX_PREFIX, LEASE_PREFIX)  # rows of the links' partition that are not links


def lease_key(key: str) -> str:
    return LEASE_PREFIX + safe_key(key)


def _lease_row(key: str, lease: LeaseRow) -> dict[str, Any]:
    return {"PartitionKey": LINK_PARTITION, "RowKey": lease_key(key), **lease.columns()}


def _if_unchanged(etag: str, mode: UpdateMode | None = None) -> dict[str, Any]:
    """Keyword arguments of a write on condition of ``etag``; a delete takes no ``mode``, a touch merges nothing."""
    condition: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
    return condition | ({"mode": mode} if mode is not None else {})


def _odata_quote(value: str) -> str:
    return value.replace("'", "''")


def _value_bytes(value: Any) -> int:
    """A property value's size as Table Storage counts it (strings in UTF-16, plus 4 bytes of length)."""
    if isinstance(value, EntityProperty):
        value = value.value
    if value is None:
        return 0
    if isinstance(value, str):
        return 2 * utf16_units(value) + 4
    if isinstance(value, bytes | bytearray):
        return len(value) + 4
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float | datetime):
        return 8
    if isinstance(value, uuid.UUID):
        return 16
    return 2 * utf16_units(str(value)) + 4


def entity_bytes(row: dict[str, Any]) -> int:
    """An entity's size by Microsoft's formula: 4 bytes, both keys in UTF-16, and for each property 8 bytes,
    its name in UTF-16 and its value."""
    size = 4
    for name, value in row.items():
        if name in ("PartitionKey", "RowKey"):
            size += 2 * utf16_units(str(value))
        else:
            size += 8 + 2 * utf16_units(name) + _value_bytes(value)
    return size


def _largest(row: dict[str, Any], count: int = 3) -> str:
    sizes = sorted(((_value_bytes(v), k) for k, v in row.items() if k not in ("PartitionKey", "RowKey")), reverse=True)
    return ", ".join(f"{name} {size:,} bytes" for size, name in sizes[:count])


def limit_problems(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(Table Storage's error code, what breaks the limit) for ``row``, naming properties and sizes, never
    values."""
    problems = []
    for key in ("PartitionKey", "RowKey"):
        size = 2 * utf16_units(str(row.get(key, "")))
        if size > MAX_KEY_BYTES:
            problems.append(("KeyValueTooLarge", f"{key} is {size:,} bytes (limit {MAX_KEY_BYTES:,})"))
    for name, value in row.items():
        text = value.value if isinstance(value, EntityProperty) else value
        if name not in ("PartitionKey", "RowKey") and isinstance(text, str):
            units = utf16_units(text)
            if units > MAX_TEXT_UNITS:
                problems.append(
                    ("PropertyValueTooLarge", f"{name} holds {units:,} UTF-16 units (limit {MAX_TEXT_UNITS:,})")
                )
    if len(row) - 2 > MAX_PROPERTIES:
        problems.append(("TooManyProperties", f"{len(row) - 2} properties (limit {MAX_PROPERTIES})"))
    size = entity_bytes(row)
    if size > MAX_ENTITY_BYTES:
        problems.append(
            ("EntityTooLarge", f"the row is {size:,} bytes (limit {MAX_ENTITY_BYTES:,}; largest: {_largest(row)})")
        )
    return problems


def _guarded(what: str, row: dict[str, Any], write: Callable[[dict[str, Any]], Any]) -> Any:
    """``write(row)`` after checking the row against Table Storage's limits; a refusal becomes StorageRejected."""
    try:
        return write(check_limits(what, row))
    except HttpResponseError as exc:
        _raise_if_rejected(exc, what, row)
        raise


def check_limits(what: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` when it is within the limits, else StorageRejected: the failure Table Storage would give,
    raised before sending, so the emulator and Azure fail alike."""
    problems = limit_problems(row)
    if problems:
        raise StorageRejected(what, [text for _, text in problems], 400, problems[0][0])
    return row


def _raise_if_rejected(exc: HttpResponseError, what: str, row: dict[str, Any]) -> None:
    """A refusal of what the row holds becomes StorageRejected; anything else (an outage, throttling, a
    timeout) is left for the caller to re-raise. Table Storage's own text is left out: ours is known never
    to quote the data."""
    status = exc.status_code or 0
    if not 400 <= status < 500 or status in (404, 408, 409, 412, 429):
        return
    code = getattr(exc.error_code, "value", exc.error_code)
    problems = [text for _, text in limit_problems(row)] or [f"largest properties: {_largest(row)}"]
    raise StorageRejected(what, problems, status, str(code) if code else None) from exc


def _extra_json(extra: dict[str, Any]) -> str:
    """The audit row's extra details as JSON that always parses: when too long, their start as one text."""
    text = json.dumps(extra, default=str, ensure_ascii=False)
    capped, limit = text, AUDIT_EXTRA_MAX_UNITS
    while utf16_units(capped) > AUDIT_EXTRA_MAX_UNITS:
        capped = json.dumps({"truncated": cap_utf16(text, limit)}, ensure_ascii=False)
        limit //= 2  # escaping lengthened it
    return capped


def _row_from_link(link: Link) -> dict[str, Any]:
    row: dict[str, Any] = {
        "PartitionKey": LINK_PARTITION,
        "RowKey": safe_key(link.referral_id),
        "ReferralId": link.referral_id,
    }
    for attr, column in _LINK_COLUMNS.items():
        value = getattr(link, attr)
        if value is not None:
            row[column] = value
    if link.last_error is not None:
        row["LastError"] = cap_utf16(link.last_error, ERROR_MAX_UNITS)
    if link.last_values is not None and utf16_units(link.last_values) > AGREED_MAX_UNITS:
        # A row written before the values were kept within budget (escaped JSON) shrinks on its next write.
        row["LastValues"] = encode_agreed(json.loads(link.last_values))
    return row


def _link_from_row(row: Any) -> Link:
    link = Link(referral_id=str(row["ReferralId"]))
    for attr, column in _LINK_COLUMNS.items():
        if column in row:
            setattr(link, attr, row[column])
    link.etag = row.metadata.get("etag")
    # Every save that changed these wrote the index too; a save that died in between leaves an index that
    # names an older version, which only makes an echo cost a full job.
    link.indexed = (link.crm_id, link.crm_etag, link.last_status)
    link.copy_recorded = link.microsoft_copy_id
    return link


_LINK_COLUMNS = {
    "crm_id": "CrmId",
    "crm_provider": "CrmProvider",
    "pc_fingerprint": "PcFingerprint",
    "crm_fingerprint": "CrmFingerprint",
    "pc_etag": "PcEtag",
    "crm_etag": "CrmEtag",
    "pc_updated_at": "PcUpdatedAt",
    "last_status": "LastStatus",
    "last_error": "LastError",
    "last_synced_at": "LastSyncedAt",
    "last_values": "LastValues",
    "crm_kind": "CrmKind",
    "microsoft_copy_id": "MicrosoftCopyId",
    "microsoft_copy_updated_at": "MicrosoftCopyUpdatedAt",
}
