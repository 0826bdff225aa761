"""The state records of :mod:`shared.ports` as rows of the state table, in the columns earlier versions wrote.

Feed watermarks remember the versions they enqueued inside their overlap window. Those must fit the row whatever
the burst (a bulk edit of thousands of rows): they are packed as binary, 5 bytes each, within a byte budget
spread over two properties, and past it the oldest are forgotten first (a change read again is enqueued again:
a no-op for the engine). The row's limits (our contract with Table Storage): a property at most 32,000 units
(UTF-16 code units for a string, bytes for binary), the whole entity under 64 KiB counted as the service counts
it. Versions take at most two 28,000-byte binary properties; the other columns take under 2 KiB, so the row
stays under 58 KiB.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..domain.bounded import ERROR_MAX_UNITS, cap_utf16
from ..ports import (
    VERSION_DIGEST_BYTES,
    CreateFailure,
    CreateIntent,
    CredentialFailure,
    FeedWatermark,
    Health,
    Pause,
    WebhookRegistration,
)

HEALTH_KEY = "health"
WEBHOOK_REGISTRATION_KEY = "webhook-registration"

VERSION_PROPERTIES = ("Versions", "Versions2")
VERSION_PROPERTY_BYTES = 28_000
VERSIONS_BUDGET_BYTES = VERSION_PROPERTY_BYTES * len(VERSION_PROPERTIES)
_FORMAT = 1  # first byte of the packed versions; the older text form ("digest:age,...") is still read
_GROUP = struct.Struct(">IH")  # age in seconds before the watermark, number of digests that follow
_MAX_GROUP = 0xFFFF


def create_failure_key(crm_id: str) -> str:
    return f"crm-invalid:{crm_id}"


# -- feed watermarks ----------------------------------------------------------------------------------------------
def _load_text_versions(text: str, newest: datetime) -> dict[str, datetime]:
    """The older form, ``"digest:age,..."`` where age is whole seconds before the watermark."""
    versions = {}
    for item in text.split(","):
        digest, _, age = item.partition(":")
        if digest:
            versions[digest] = newest - timedelta(seconds=int(age or 0))
    return versions


def _unpack_versions(blob: bytes, newest: datetime) -> dict[str, datetime]:
    if not blob or blob[0] != _FORMAT:
        return {}
    versions: dict[str, datetime] = {}
    at = 1
    while at + _GROUP.size <= len(blob):
        age, count = _GROUP.unpack_from(blob, at)
        at += _GROUP.size
        changed = newest - timedelta(seconds=age)
        for _ in range(count):
            digest = blob[at : at + VERSION_DIGEST_BYTES]
            if len(digest) < VERSION_DIGEST_BYTES:
                return versions
            versions[digest.hex()] = changed
            at += VERSION_DIGEST_BYTES
    return versions


def pack_versions(versions: Mapping[str, datetime], newest: datetime, budget: int = VERSIONS_BUDGET_BYTES) -> bytes:
    """The newest versions that fit in ``budget`` bytes, grouped by their age before ``newest``."""
    by_age: dict[int, list[bytes]] = {}
    for digest, changed in sorted(versions.items(), key=lambda item: item[1], reverse=True):
        age = min(0xFFFFFFFF, max(0, int((newest - changed).total_seconds())))
        by_age.setdefault(age, []).append(bytes.fromhex(digest))
    packed = bytearray([_FORMAT])
    for age, digests in by_age.items():  # youngest first: what does not fit is the oldest
        while digests:
            room = min(_MAX_GROUP, (budget - len(packed) - _GROUP.size) // VERSION_DIGEST_BYTES)
            if room <= 0:
                return bytes(packed)
            group, digests = digests[:room], digests[room:]
            packed += _GROUP.pack(age, len(group)) + b"".join(group)
    return bytes(packed)


def load_versions(row: Mapping[str, Any], newest: datetime | None) -> dict[str, datetime]:
    """The remembered versions of a saved state row (either form)."""
    if newest is None:
        return {}
    first = row.get(VERSION_PROPERTIES[0])
    if isinstance(first, str):
        return _load_text_versions(first, newest) if first else {}
    parts = [row.get(name) for name in VERSION_PROPERTIES]
    return _unpack_versions(b"".join(p for p in parts if isinstance(p, bytes)), newest)


def version_columns(versions: Mapping[str, datetime], newest: datetime | None) -> dict[str, bytes]:
    """The state row's version properties; every one is written, so a shorter list leaves no stale part."""
    packed = pack_versions(versions, newest) if newest is not None else b""
    size = VERSION_PROPERTY_BYTES
    return {name: packed[i * size : (i + 1) * size] for i, name in enumerate(VERSION_PROPERTIES)}


def watermark_columns(mark: FeedWatermark) -> dict[str, Any]:
    return {
        "Watermark": mark.watermark,
        **version_columns(mark.versions, mark.watermark),
        "LastRunAt": mark.last_run_at,
        "LastSeen": mark.last_seen,
        "LastEnqueued": mark.last_enqueued,
        "LastInterruption": mark.last_interruption,
    }


def watermark_from_row(row: Mapping[str, Any]) -> FeedWatermark:
    watermark = moment_from(row.get("Watermark"))
    return FeedWatermark(
        watermark=watermark,
        versions=load_versions(row, watermark),
        last_run_at=moment_from(row.get("LastRunAt")),
        last_seen=count_from(row.get("LastSeen")),
        last_enqueued=count_from(row.get("LastEnqueued")),
        last_interruption=str(row.get("LastInterruption") or ""),
    )


# -- health: the quota pause and the last refused credential share one row, each written on its own ----------------
def pause_columns(pause: Pause) -> dict[str, Any]:
    return {"Until": pause.until, "Reason": pause.reason, "Since": pause.since}


def credential_failure_columns(failure: CredentialFailure) -> dict[str, Any]:
    # AuthCause is always written: the row is merged, and a cause must not outlive the failure it explained.
    return {
        "AuthService": failure.service,
        "AuthMessage": failure.message,
        "AuthFailedAt": failure.at,
        "AuthCause": failure.cause,
    }


def credential_recovery_columns(recovered_at: datetime) -> dict[str, Any]:
    return {"AuthService": "", "AuthMessage": "", "AuthCause": "", "AuthRecoveredAt": recovered_at}


def token_redeemed_columns(at: datetime) -> dict[str, Any]:
    return {"TokenRedeemedAt": at}


def health_from_row(row: Mapping[str, Any]) -> Health:
    until = moment_from(row.get("Until"))
    pause = Pause(until, str(row.get("Reason", "")), moment_from(row.get("Since"))) if until is not None else None
    service = row.get("AuthService")
    failure = (
        CredentialFailure(
            str(service),
            str(row.get("AuthMessage", "")),
            moment_from(row.get("AuthFailedAt")),
            str(row.get("AuthCause") or ""),
        )
        if service
        else None
    )
    return Health(pause, failure, moment_from(row.get("TokenRedeemedAt")))


# -- the webhook registration and the last verified test event: each written on its own into one row ------------
def webhook_registration_columns(url: str, events: tuple[str, ...], registered_at: datetime) -> dict[str, Any]:
    return {"WebhookUrl": url, "WebhookEvents": ",".join(events), "RegisteredAt": registered_at}


def received_test_event_columns(at: datetime, resource_uri: str) -> dict[str, Any]:
    return {"LastTestEventAt": at, "LastTestEventUri": cap_utf16(resource_uri, ERROR_MAX_UNITS)}


def webhook_registration_from_row(row: Mapping[str, Any]) -> WebhookRegistration:
    events = str(row.get("WebhookEvents") or "")
    return WebhookRegistration(
        url=str(row.get("WebhookUrl") or ""),
        events=tuple(e for e in events.split(",") if e),
        registered_at=moment_from(row.get("RegisteredAt")),
        last_test_event_at=moment_from(row.get("LastTestEventAt")),
        last_test_event_uri=str(row.get("LastTestEventUri") or ""),
    )


# -- create failures ----------------------------------------------------------------------------------------------
def create_failure_columns(failure: CreateFailure | None) -> dict[str, Any]:
    """A cleared failure keeps its row, emptied, as earlier versions left it."""
    if failure is None:
        return {"CrmFingerprint": "", "Reason": ""}
    return {"CrmFingerprint": failure.crm_fingerprint, "Reason": cap_utf16(failure.reason, ERROR_MAX_UNITS)}


def create_failure_from_row(row: Mapping[str, Any]) -> CreateFailure | None:
    fingerprint = row.get("CrmFingerprint")
    return CreateFailure(str(fingerprint), str(row.get("Reason", ""))) if fingerprint else None


# -- create intents: in the create-failure row, so the read that looks for a failure finds the intent too ---------
# The agreed values come encoded within 4,000 UTF-16 units (a digest stands for a long text; see
# referral_creation.py), the reason within ERROR_MAX_UNITS: the merged row stays near 16 KiB.
def create_intent_columns(intent: CreateIntent | None) -> dict[str, Any]:
    """A cleared intent leaves its column empty (the row is merged, not replaced)."""
    return {"IntentValues": intent.agreed if intent is not None else ""}


def create_intent_from_row(row: Mapping[str, Any]) -> CreateIntent | None:
    values = row.get("IntentValues")
    return CreateIntent(values) if isinstance(values, str) and values else None


# -- leases ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaseRow:
    owner: str
    until: datetime | None

    def columns(self) -> dict[str, Any]:
        return {"Owner": self.owner, "Until": self.until}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LeaseRow:
        return cls(str(row.get("Owner", "")), moment_from(row.get("Until")))

    def held_by_another_at(self, moment: datetime, owner: str) -> bool:
        return self.until is not None and self.until > moment and self.owner != owner

    def held_by_at(self, moment: datetime, owner: str) -> bool:
        return self.owner == owner and self.until is not None and self.until > moment


def moment_from(value: object) -> datetime | None:
    """A stored time, or None for anything else (a row written before the column existed)."""
    return value if isinstance(value, datetime) else None


def count_from(value: object) -> int:
    """A stored count, or 0 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
