"""What the demo and tests see from outside the app: the emulators' control APIs (over HTTP) and the
audit trail in Table Storage. Nothing here calls the app; the :class:`Observer` acts only as Partner Center
would and looks at the results on each side. The CRM side is whichever CRM emulator the stack started
(:func:`crm_side`): Dynamics 365 (:mod:`devtools.demo.dataverse`) or Salesforce
(:mod:`devtools.demo.salesforce`), behind :class:`~devtools.demo.crm.CrmSide`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from ..localhost.stack import Stack
from .crm import TIMEOUT, CrmRecord, CrmSide, StepFailed, control_json, setting
from .dataverse import DataverseSide
from .salesforce import SalesforceSide

__all__ = ["CRM_SIDES", "AuditLine", "Observer", "StepFailed", "crm_side"]

# By CRM_PROVIDER.
CRM_SIDES: dict[str, type[DataverseSide] | type[SalesforceSide]] = {
    DataverseSide.provider: DataverseSide,
    SalesforceSide.provider: SalesforceSide,
}


@dataclass(frozen=True)
class AuditLine:
    at: datetime | None
    action: str
    message: str
    direction: str = ""


def crm_side(stack: Stack) -> CrmSide:
    """The CRM emulator the stack started, as the demo sees it."""
    if stack.salesforce is not None:
        return SalesforceSide(stack.salesforce, stack.settings)
    if stack.dataverse is not None:
        return DataverseSide(stack.dataverse, stack.settings)
    raise ValueError("the demo needs a CRM emulator: leave the CRM's URL settings unset")


class Observer:
    def __init__(self, stack: Stack) -> None:
        if stack.partner_center is None:
            raise ValueError("the demo needs the Partner Center emulator (leave PARTNER_CENTER_API_URL unset)")
        self.settings = stack.settings
        self.pc = stack.partner_center.url + "/_emulator"
        self.crm = crm_side(stack)

    def _setting(self, name: str, field: str) -> str:
        return setting(self.settings, name, field)

    @staticmethod
    def _json(response: requests.Response) -> Any:
        return control_json(response)

    # -- Partner Center side ---------------------------------------------------------------------------
    def create_cosell_referral(self, **overrides: Any) -> dict[str, Any]:
        """Microsoft shares a co-sell opportunity: the emulator stores it and sends a signed webhook."""
        body = {"kind": "cosell", "overrides": overrides}
        return dict(self._json(requests.post(f"{self.pc}/referrals", json=body, timeout=TIMEOUT)))

    def update_referral(self, referral_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Someone edits the referral in the portal: new eTag and a referral-updated webhook."""
        return dict(self._json(requests.patch(f"{self.pc}/referrals/{referral_id}", json=changes, timeout=TIMEOUT)))

    def microsoft_acts(self, referral_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Microsoft's seller works the engagement of ``referral_id`` (accepts, takes it, notes its MSX id): its
        own referral there changes, and Partner Center raises ``related-referral-*`` for the partner's."""
        url = f"{self.pc}/referrals/{referral_id}/microsoft"
        return dict(self._json(requests.post(url, json=changes, timeout=TIMEOUT)))

    def referral(self, referral_id: str) -> dict[str, Any]:
        return dict(self._json(requests.get(f"{self.pc}/referrals/{referral_id}", timeout=TIMEOUT)))

    def referrals(self) -> list[dict[str, Any]]:
        """Every referral in the emulator, the partner's and Microsoft's, in creation order."""
        return list(self._json(requests.get(f"{self.pc}/referrals", timeout=TIMEOUT))["value"])

    def pc_counters(self) -> dict[str, int]:
        """Referrals API calls the app made, by operation ("create", "patch", ...) and kind ("writes")."""
        return dict(self._json(requests.get(f"{self.pc}/counters", timeout=TIMEOUT)))

    def redeliver(self, referral_id: str) -> dict[str, Any]:
        """Partner Center delivers the last event again (it retries and may duplicate callbacks)."""
        body = {"referralId": referral_id, "redeliver": True}
        return dict(self._json(requests.post(f"{self.pc}/deliveries", json=body, timeout=TIMEOUT)))

    def deliveries_for(self, *referral_ids: str) -> list[dict[str, Any]]:
        found = self._json(requests.get(f"{self.pc}/deliveries", timeout=TIMEOUT))["value"]
        result = []
        for delivery in found:
            if delivery.get("referralId") not in referral_ids:
                continue
            attempts = delivery.get("attempts") or []
            code = attempts[-1].get("responseCode") if attempts else None
            result.append(
                {
                    "id": delivery["id"],
                    "referral_id": delivery["referralId"],
                    "event": delivery["eventName"],
                    "status": delivery["status"],
                    "status_code": code,
                    "attempts": len(attempts),
                }
            )
        return result

    # -- CRM side ------------------------------------------------------------------------------------------
    def opportunities(self) -> list[CrmRecord]:
        return self.crm.opportunities()

    def opportunity_for(self, referral_id: str) -> CrmRecord | None:
        return next((o for o in self.opportunities() if o["referral_id"] == referral_id), None)

    def opportunity(self, crm_id: str) -> CrmRecord | None:
        return self.crm.opportunity(crm_id)

    def writes(self) -> list[dict[str, Any]]:
        """Successful writes to the CRM, by the seller and the app."""
        return self.crm.writes()

    # -- the app's audit trail ------------------------------------------------------------------------------
    def audit_trail(self, record_key: str) -> list[AuditLine]:
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
        entries = store.audit_trail(record_key)
        return [AuditLine(e.at, e.action, e.message, e.direction) for e in reversed(entries)]
