"""``make demo CRM=salesforce``: the Salesforce emulator seen from outside, and a seller using the REST API.

The seller signs in the way the connector does, at the org's ``/services/oauth2/token``, but through a
connected app of their own that runs as their user (registered on the emulator's control API, as an
admin would set one up), and then works with ``/services/data/vNN.N/sobjects/...``. Observations come
from the emulator's control API: its records, its write log and its counters.
"""

from __future__ import annotations

import secrets
from typing import Any

import requests

from .crm import (
    MICROSOFT_FIELDS,
    TIMEOUT,
    CrmRecord,
    StepFailed,
    audit_summary,
    control_json,
    crm_mapping,
    microsoft_side,
    microsoft_summary,
    number,
    setting,
)

TOKEN_PATH = "/services/oauth2/token"
SELLER_CLIENT_ID = "cosell-demo-seller-ui"
SELLER_USERNAME = "dana.seller@fabrikam.example"
CLOSE_DATE = "2027-06-30"


def stage(status: Any, referral_status: str, substatus: str | None) -> str:
    """The StageName the mapping writes for a Partner Center status."""
    name = status.stage_for(referral_status, substatus)
    if name is None:
        raise StepFailed(f"the mapping writes no Salesforce stage for {referral_status}/{substatus}")
    return str(name)


class SalesforceSide:
    provider = "salesforce"
    product = "Salesforce"
    store = "Salesforce"
    seller_api = "REST API"
    sign_in = f"the OAuth client credentials flow at {TOKEN_PATH} (SALESFORCE_CLIENT_ID / SECRET)"
    deal_value_label = "Amount"

    def __init__(self, emulator: Any, settings: dict[str, str]) -> None:
        self.url = emulator.url
        self.control = emulator.url + "/_emulator"
        self.settings = settings
        mapping = crm_mapping(settings)
        self.referral_field = mapping.column("referral_id")
        self.link_field = mapping.column("referral_link")
        self.audit_field = mapping.column("audit")
        self.sync_field = mapping.column("sync_enabled")
        self.currency_field = mapping.column("currency")
        self.status = mapping.status
        self.microsoft_fields = {f: mapping.column(f) for f in MICROSOFT_FIELDS if mapping.column(f)}

    def _record(self, row: dict[str, Any]) -> CrmRecord:
        return CrmRecord(
            id=str(row.get("Id")),
            name=str(row.get("Name") or ""),
            deal_value=number(row.get("Amount")),
            sync=bool(row.get(self.sync_field)),
            referral_id=row.get(self.referral_field) or None,
            referral_link=row.get(self.link_field) or None,
            audit=str(row.get(self.audit_field) or ""),
            state=f"Stage {row.get('StageName')}",
            microsoft=microsoft_side(row, self.microsoft_fields),
            raw=row,
        )

    def shows(self, status: str, substatus: str | None) -> str:
        return f"Stage {stage(self.status, status, substatus)}"

    def opportunities(self) -> list[CrmRecord]:
        rows = control_json(requests.get(f"{self.control}/records/Opportunity", timeout=TIMEOUT))["records"]
        return [self._record(row) for row in rows]

    def opportunity(self, crm_id: str) -> CrmRecord | None:
        # Record ids are case-sensitive in Salesforce; the REST API answers with the 18-character form.
        return next((r for r in self.opportunities() if r["id"] == crm_id), None)

    def writes(self) -> list[dict[str, Any]]:
        return list(control_json(requests.get(f"{self.control}/writes", timeout=TIMEOUT))["writes"])

    def write_kind(self, write: dict[str, Any]) -> str:
        return f"{write.get('operation', '?')} {write.get('object', '')}".strip()

    def render(self, record: CrmRecord) -> list[str]:
        raw = record["raw"]
        currency = raw.get(self.currency_field) or ""
        lines = [
            f'  {record["id"]}  "{record["name"]}"  StageName {raw.get("StageName")}'
            f"  Amount {record['deal_value'] or 0:,.0f} {currency}".rstrip()
            + f"  sync {'Yes' if record['sync'] else 'No'}",
            f"      {self.referral_field}={record['referral_id'] or '(none: no referral)'}",
        ]
        if record["referral_link"]:
            lines.append(f"      {self.link_field}={record['referral_link']}")
        if record["audit"]:
            lines.append(f"      {self.audit_field}: {audit_summary(record)}")
        if record["microsoft"]:
            lines.append(f"      Microsoft's side: {microsoft_summary(record)}")
        return lines

    def report_notes(self) -> list[str]:
        counters = control_json(requests.get(f"{self.control}/counters", timeout=TIMEOUT))
        quota = control_json(requests.get(f"{self.control}/quota", timeout=TIMEOUT))
        tokens = counters["tokenRequests"]
        return [
            f"  sessions: {tokens['client_credentials']} from {TOKEN_PATH} by client credentials (the connector's "
            f"and the seller's connected apps), {tokens['refused']} refused",
            f"  REST API requests: {counters['apiRequests']} of the org's daily {quota['max']:,}, "
            f"{counters['sessionRefusals']} refused for an invalid session",
        ]

    def seller(self) -> SalesforceSeller:
        return SalesforceSeller(self.url, self.settings)


class SalesforceSeller:
    """A seller in Salesforce: creates and edits records over the REST API with their own session, as the
    Lightning UI does for a signed-in user, never through the connector's adapter."""

    def __init__(self, url: str, settings: dict[str, str]) -> None:
        mapping = crm_mapping(settings)
        self.url = url
        self.version = setting(settings, "SALESFORCE_API_VERSION", "salesforce_api_version")
        self.sync_field = mapping.column("sync_enabled")
        self.help_field = mapping.column("help_code")
        self.products_field = mapping.column("solution_ids")
        self.currency_field = mapping.column("currency")
        self.open_stage = mapping.status.stage_for("Active", None)
        self.accepted_stage = stage(mapping.status, "Active", "Accepted")
        self.won_stage = stage(mapping.status, "Closed", "Won")
        # The org has the picklist values the mapping names for "How can Microsoft help?".
        self.help_values = dict(mapping.fields["help_code"].values)
        self.writes = 0
        self._secret = "seller-" + secrets.token_hex(16)
        body = {"clientId": SELLER_CLIENT_ID, "clientSecret": self._secret, "username": SELLER_USERNAME}
        requests.post(f"{url}/_emulator/clients", json=body, timeout=TIMEOUT).raise_for_status()
        self._token: str | None = None
        self._instance = url

    def _sign_in(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": SELLER_CLIENT_ID, "client_secret": self._secret}
        response = requests.post(f"{self.url}{TOKEN_PATH}", data=form, timeout=TIMEOUT)
        if response.status_code != 200:
            raise StepFailed(f"the seller could not sign in to Salesforce: {response.status_code} {response.text}")
        answer = response.json()
        self._instance = str(answer["instance_url"]).rstrip("/")
        return str(answer["access_token"])

    def _request(self, method: str, path: str, body: dict[str, Any]) -> requests.Response:
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._sign_in()
            response = requests.request(
                method,
                f"{self._instance}/services/data/{self.version}/{path}",
                json=body,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                timeout=TIMEOUT,
            )
            if response.status_code != 401 or attempt == 2:
                return response
            self._token = None  # the session expired: sign in again, as the UI sends the user to log in
        raise AssertionError("unreachable")

    def _create(self, sobject: str, body: dict[str, Any]) -> str:
        response = self._request("POST", f"sobjects/{sobject}", body)
        if response.status_code != 201:
            raise StepFailed(f"Salesforce refused the seller's new {sobject}: {response.status_code} {response.text}")
        self.writes += 1
        return str(response.json()["id"])

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
        account_id = self._create("Account", {"Name": customer, "BillingCity": "Seattle", "BillingCountry": country})
        first_name, last_name, email = contact
        contact_id = self._create(
            "Contact", {"FirstName": first_name, "LastName": last_name, "Email": email, "AccountId": account_id}
        )
        body: dict[str, Any] = {
            "Name": name,
            "StageName": self.open_stage,
            "CloseDate": CLOSE_DATE,
            "Amount": deal_value,
            "Description": "Seller notes: migrate the on-premises warehouse",
            "AccountId": account_id,
            self.sync_field: True,
            self.help_field: self.help_values[help_needed] if help_needed else None,
            self.products_field: products,
        }
        if self.currency_field:
            body[self.currency_field] = currency
        opportunity_id = self._create("Opportunity", body)
        # The customer's contact on the deal: a contact role, as the Contact Roles related list adds it.
        self._create(
            "OpportunityContactRole", {"OpportunityId": opportunity_id, "ContactId": contact_id, "IsPrimary": True}
        )
        return opportunity_id

    def set_deal_value(self, crm_id: str, value: float) -> None:
        response = self._request("PATCH", f"sobjects/Opportunity/{crm_id}", {"Amount": value})
        if response.status_code != 204:
            raise StepFailed(f"Salesforce refused the seller's edit: {response.status_code} {response.text}")
        self.writes += 1

    def _set_stage(self, crm_id: str, name: str) -> None:
        response = self._request("PATCH", f"sobjects/Opportunity/{crm_id}", {"StageName": name})
        if response.status_code != 204:
            raise StepFailed(f"Salesforce refused the seller's Stage {name}: {response.status_code} {response.text}")
        self.writes += 1

    def accept(self, crm_id: str) -> str:
        """Stage from the on-hold stage to the one the mapping writes for Active/Accepted."""
        self._set_stage(crm_id, self.accepted_stage)
        return f"Stage {self.accepted_stage}"

    def win(self, crm_id: str) -> str:
        self._set_stage(crm_id, self.won_stage)
        return f"Stage {self.won_stage}"
