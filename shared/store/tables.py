"""Sync links, state, leases and the audit trail on Azure Table Storage.

Row keys never hold raw external ids with characters Table Storage forbids (``/ \\ # ?``); ids are
escaped by :func:`safe_key`. Links are written with etag conditions so two workers can never
silently overwrite each other's bookkeeping.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from ..domain.errors import PreconditionFailed
from ..ports import AuditEntry, Link

_FORBIDDEN = {"/": "%2F", "\\": "%5C", "#": "%23", "?": "%3F", "%": "%25"}
LINK_PARTITION = "referral"
CRM_INDEX_PARTITION = "crm"
LEASE_PARTITION = "lease"
STATE_PARTITION = "state"


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

    def ensure(self) -> None:
        if self._ready:
            return
        for table in (self.links, self.state, self.audit):
            try:
                table.create_table()
            except ResourceExistsError:
                pass
        self._ready = True

    # -- links ---------------------------------------------------------------------------------
    def get_link(self, referral_id: str) -> Link | None:
        self.ensure()
        try:
            row = self.links.get_entity(LINK_PARTITION, safe_key(referral_id))
        except ResourceNotFoundError:
            return None
        return _link_from_row(row)

    def find_link_by_crm_id(self, crm_id: str) -> Link | None:
        self.ensure()
        try:
            row = self.links.get_entity(CRM_INDEX_PARTITION, safe_key(crm_id))
        except ResourceNotFoundError:
            return None
        return self.get_link(str(row["ReferralId"]))

    def save_link(self, link: Link) -> Link:
        self.ensure()
        row = _row_from_link(link)
        try:
            if link.etag is None:
                meta = self.links.create_entity(row)
            else:
                meta = self.links.update_entity(
                    row, mode=UpdateMode.REPLACE, etag=link.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise PreconditionFailed(
                "Table Storage", f"link for referral {link.referral_id} changed concurrently", 412
            ) from exc
        if link.crm_id:
            self.links.upsert_entity(
                {"PartitionKey": CRM_INDEX_PARTITION, "RowKey": safe_key(link.crm_id), "ReferralId": link.referral_id},
                mode=UpdateMode.REPLACE,
            )
        link.etag = meta.get("etag")
        return link

    def iter_links(self) -> list[Link]:
        self.ensure()
        return [_link_from_row(r) for r in self.links.query_entities(f"PartitionKey eq '{LINK_PARTITION}'")]

    # -- audit ---------------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        self.ensure()
        at = entry.at or _now()
        self.audit.create_entity(
            {
                "PartitionKey": safe_key(entry.record_key),
                "RowKey": f"{_inverted_ticks(at)}-{uuid.uuid4().hex[:8]}",
                "At": at,
                "Action": entry.action,
                "Direction": entry.direction,
                "Message": entry.message[:30000],
                "CrmId": entry.crm_id or "",
                "ReferralId": entry.referral_id or "",
                "Fields": ",".join(entry.fields),
                "Extra": json.dumps(entry.extra, default=str)[:30000] if entry.extra else "",
            }
        )

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
    def acquire_lease(self, key: str, owner: str, seconds: int) -> bool:
        self.ensure()
        now = _now()
        row = {
            "PartitionKey": LEASE_PARTITION,
            "RowKey": safe_key(key),
            "Owner": owner,
            "Until": now + timedelta(seconds=seconds),
        }
        try:
            self.state.create_entity(row)
            return True
        except ResourceExistsError:
            pass
        try:
            current = self.state.get_entity(LEASE_PARTITION, safe_key(key))
        except ResourceNotFoundError:
            return self.acquire_lease(key, owner, seconds)
        until = current.get("Until")
        if isinstance(until, datetime) and until > now and current.get("Owner") != owner:
            return False
        try:
            self.state.update_entity(
                row,
                mode=UpdateMode.REPLACE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    def release_lease(self, key: str, owner: str) -> None:
        try:
            current = self.state.get_entity(LEASE_PARTITION, safe_key(key))
        except ResourceNotFoundError:
            return
        if current.get("Owner") != owner:
            return
        try:
            self.state.delete_entity(
                LEASE_PARTITION,
                safe_key(key),
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    # -- state (watermarks, registration facts) ------------------------------------------------
    def get_state(self, key: str) -> dict[str, Any] | None:
        self.ensure()
        try:
            row = self.state.get_entity(STATE_PARTITION, safe_key(key))
        except ResourceNotFoundError:
            return None
        return {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey")}

    def set_state(self, key: str, values: dict[str, Any]) -> None:
        self.ensure()
        self.state.upsert_entity(
            {"PartitionKey": STATE_PARTITION, "RowKey": safe_key(key), **values}, mode=UpdateMode.MERGE
        )


def _odata_quote(value: str) -> str:
    return value.replace("'", "''")


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
    return row


def _link_from_row(row: Any) -> Link:
    link = Link(referral_id=str(row["ReferralId"]))
    for attr, column in _LINK_COLUMNS.items():
        if column in row:
            setattr(link, attr, row[column])
    link.etag = row.metadata.get("etag")
    return link


_LINK_COLUMNS = {
    "crm_id": "CrmId",
    "crm_provider": "CrmProvider",
    "pc_fingerprint": "PcFingerprint",
    "crm_fingerprint": "CrmFingerprint",
    "pc_etag": "PcEtag",
    "crm_etag": "CrmEtag",
    "last_status": "LastStatus",
    "last_error": "LastError",
    "last_synced_at": "LastSyncedAt",
    "last_values": "LastValues",
}
