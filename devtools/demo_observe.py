"""What the demo and tests see from outside the app: the emulators' control APIs (over HTTP) and the
audit trail in Table Storage. Nothing here calls the app; it only acts as Partner Center would (the
:class:`Observer`) or as a seller in Dynamics 365 would (the :class:`Seller`, over the Dataverse Web
API) and looks at the results on each side."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from .stack import Stack

TIMEOUT = 10
DATAVERSE_API = "/api/data/v9.2"


class StepFailed(Exception):
    """A step's expected outcome was not observed in time."""


@dataclass(frozen=True)
class AuditLine:
    at: datetime | None
    action: str
    message: str
    direction: str = ""


class Observer:
    def __init__(self, stack: Stack) -> None:
        if stack.partner_center is None or stack.dataverse is None:
            raise ValueError("the demo needs the Partner Center and Dataverse emulators (leave their URLs unset)")
        self.settings = stack.settings
        self.pc = stack.partner_center.url + "/_emulator"
        self.dv = stack.dataverse.url + "/_emulator"
        self.referral_column = self._setting("DATAVERSE_FIELD_REFERRAL_ID", "dataverse_field_referral_id")
        self.link_column = self._setting("DATAVERSE_FIELD_REFERRAL_LINK", "dataverse_field_referral_link")
        self.audit_column = self._setting("DATAVERSE_FIELD_AUDIT", "dataverse_field_audit")
        self.sync_column = self._setting("DATAVERSE_FIELD_SYNC", "dataverse_field_sync")

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

    # -- Dataverse side ----------------------------------------------------------------------------------
    def opportunities(self) -> list[dict[str, Any]]:
        return list(self._json(requests.get(f"{self.dv}/tables/opportunities", timeout=TIMEOUT))["value"])

    def opportunity_for(self, referral_id: str) -> dict[str, Any] | None:
        return next((o for o in self.opportunities() if o.get(self.referral_column) == referral_id), None)

    def opportunity(self, crm_id: str) -> dict[str, Any] | None:
        return next((o for o in self.opportunities() if str(o.get("opportunityid")).lower() == crm_id.lower()), None)

    def writes(self) -> list[dict[str, Any]]:
        return list(self._json(requests.get(f"{self.dv}/writes", timeout=TIMEOUT))["value"])

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


class Seller:
    """A seller in Dynamics 365: creates and edits opportunities through the Dataverse Web API with a
    bearer token, as the model-driven app does, never through the connector's own adapter."""

    def __init__(self, stack: Stack) -> None:
        if stack.dataverse is None:
            raise ValueError("the demo needs the Dataverse emulator (leave DATAVERSE_URL unset)")
        from shared.settings import DEFAULT_DATAVERSE_HELP_OPTIONS, Settings

        self.api = stack.dataverse.url + DATAVERSE_API
        self.headers = {
            "Authorization": f"Bearer {stack.settings['DATAVERSE_ACCESS_TOKEN']}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Prefer": "return=representation",
        }

        def setting(name: str, field: str) -> str:
            return stack.settings.get(name) or str(Settings.model_fields[field].default)

        self.sync_column = setting("DATAVERSE_FIELD_SYNC", "dataverse_field_sync")
        self.help_column = setting("DATAVERSE_FIELD_HELP", "dataverse_field_help")
        self.products_column = setting("DATAVERSE_FIELD_PRODUCTS", "dataverse_field_products")
        self.country_column = setting("DATAVERSE_ACCOUNT_COUNTRY_FIELD", "dataverse_account_country_field")
        # The demo is hermetic, so the org has the default choice values for "How can Microsoft help?".
        self.help_options = dict(DEFAULT_DATAVERSE_HELP_OPTIONS)
        # Dataverse's write log does not say who wrote; counting ours tells the app's writes apart.
        self.writes = 0

    def _post(self, entity_set: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.api}/{entity_set}", json=body, headers=self.headers, timeout=TIMEOUT)
        if response.status_code != 201:
            raise StepFailed(
                f"Dataverse refused the seller's new {entity_set} row: {response.status_code} {response.text}"
            )
        self.writes += 1
        return dict(response.json())

    def _currency_id(self, code: str) -> str:
        params = {"$filter": f"isocurrencycode eq '{code}'", "$select": "transactioncurrencyid"}
        response = requests.get(
            f"{self.api}/transactioncurrencies", params=params, headers=self.headers, timeout=TIMEOUT
        )
        response.raise_for_status()
        rows = response.json()["value"]
        if not rows:
            raise StepFailed(f"the Dataverse org has no {code} currency")
        return str(rows[0]["transactioncurrencyid"])

    def create_opportunity(
        self,
        *,
        name: str,
        customer: str,
        country: str,
        deal_value: float,
        products: str | None,
        help_needed: str | None,
        contact: tuple[str, str, str],
        currency: str = "USD",
    ) -> str:
        """An account, its primary contact (first name, last name, e-mail) and an opportunity flagged
        "Sync with Partner Center" = Yes."""
        account = self._post("accounts", {"name": customer, "address1_city": "Seattle", self.country_column: country})
        account_ref = f"/accounts({account['accountid']})"
        first_name, last_name, email = contact
        person = self._post(
            "contacts",
            {
                "firstname": first_name,
                "lastname": last_name,
                "emailaddress1": email,
                "parentcustomerid_account@odata.bind": account_ref,
            },
        )
        body: dict[str, Any] = {
            "name": name,
            "estimatedvalue": deal_value,
            "estimatedclosedate": "2027-06-30",
            "description": "Seller notes: migrate the on-premises warehouse",
            "transactioncurrencyid@odata.bind": f"/transactioncurrencies({self._currency_id(currency)})",
            "customerid_account@odata.bind": account_ref,
            "parentcontactid@odata.bind": f"/contacts({person['contactid']})",
            self.sync_column: True,
            self.help_column: self.help_options[help_needed] if help_needed else None,
            self.products_column: products,
        }
        return str(self._post("opportunities", body)["opportunityid"])

    def edit(self, crm_id: str, columns: dict[str, Any]) -> None:
        url = f"{self.api}/opportunities({crm_id})"
        response = requests.patch(url, json=columns, headers=self.headers, timeout=TIMEOUT)
        if response.status_code not in (200, 204):
            raise StepFailed(f"Dataverse refused the seller's edit: {response.status_code} {response.text}")
        self.writes += 1
