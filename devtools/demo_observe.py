"""What the demo and tests see from outside the app: the emulators' control APIs (over HTTP) and the
audit trail in Table Storage. Nothing here calls the app; it only acts as Partner Center would and
looks at the results on each side."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from .stack import Stack

TIMEOUT = 10


@dataclass(frozen=True)
class AuditLine:
    at: datetime | None
    action: str
    message: str


class Observer:
    def __init__(self, stack: Stack) -> None:
        if stack.partner_center is None or stack.dataverse is None:
            raise ValueError("the demo needs the Partner Center and Dataverse emulators (leave their URLs unset)")
        self.settings = stack.settings
        self.pc = stack.partner_center.url + "/_emulator"
        self.dv = stack.dataverse.url + "/_emulator"
        self.referral_column = self._setting("DATAVERSE_FIELD_REFERRAL_ID", "dataverse_field_referral_id")

    def _setting(self, name: str, field: str) -> str:
        """The configured value, else the app's own default (no second copy of the defaults here)."""
        from shared.settings import Settings

        return self.settings.get(name) or str(Settings.model_fields[field].default)

    @staticmethod
    def _json(response: requests.Response) -> Any:
        response.raise_for_status()
        return response.json()

    # -- Partner Center side ---------------------------------------------------------------------------
    def create_cosell_referral(self, **overrides: Any) -> dict[str, Any]:
        """Microsoft shares a co-sell opportunity: the emulator stores it and sends a signed webhook."""
        body = {"kind": "cosell", "overrides": overrides}
        return dict(self._json(requests.post(f"{self.pc}/referrals", json=body, timeout=TIMEOUT)))

    def update_referral(self, referral_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Someone edits the referral in the portal: new eTag and a referral-updated webhook."""
        return dict(self._json(requests.patch(f"{self.pc}/referrals/{referral_id}", json=changes, timeout=TIMEOUT)))

    def referral(self, referral_id: str) -> dict[str, Any]:
        return dict(self._json(requests.get(f"{self.pc}/referrals/{referral_id}", timeout=TIMEOUT)))

    def redeliver(self, referral_id: str) -> dict[str, Any]:
        """Partner Center delivers the last event again (it retries and may duplicate callbacks)."""
        body = {"referralId": referral_id, "redeliver": True}
        return dict(self._json(requests.post(f"{self.pc}/deliveries", json=body, timeout=TIMEOUT)))

    def deliveries_for(self, referral_id: str) -> list[dict[str, Any]]:
        found = self._json(requests.get(f"{self.pc}/deliveries", timeout=TIMEOUT))["value"]
        result = []
        for delivery in found:
            if delivery.get("referralId") != referral_id:
                continue
            attempts = delivery.get("attempts") or []
            code = attempts[-1].get("responseCode") if attempts else None
            result.append(
                {
                    "id": delivery["id"],
                    "event": delivery["eventName"],
                    "status": delivery["status"],
                    "status_code": code,
                    "attempts": len(attempts),
                }
            )
        return result

    # -- Dataverse side ----------------------------------------------------------------------------------
    def opportunities(self) -> list[dict[str, Any]]:
        return list(self._json(requests.get(f"{self.dv}/tables/opportunities", timeout=TIMEOUT))["value"])

    def opportunity_for(self, referral_id: str) -> dict[str, Any] | None:
        return next((o for o in self.opportunities() if o.get(self.referral_column) == referral_id), None)

    def writes(self) -> list[dict[str, Any]]:
        return list(self._json(requests.get(f"{self.dv}/writes", timeout=TIMEOUT))["value"])

    # -- the app's audit trail ------------------------------------------------------------------------------
    def audit_trail(self, referral_id: str) -> list[AuditLine]:
        """Oldest first. Read with the app's own table adapter, so the demo shows exactly what it wrote."""
        from azure.data.tables import TableServiceClient

        from shared.store.tables import TableSyncStore

        service = TableServiceClient.from_connection_string(self.settings["AzureWebJobsStorage"])
        store = TableSyncStore(
            service,
            self._setting("SYNC_LINKS_TABLE", "links_table"),
            self._setting("SYNC_STATE_TABLE", "state_table"),
            self._setting("SYNC_AUDIT_TABLE", "audit_table"),
        )
        entries = store.audit_trail(referral_id)
        return [AuditLine(e.at, e.action, e.message) for e in reversed(entries)]
