"""``make demo`` on Dynamics 365: the Dataverse emulator seen from outside, and a seller using the Web API."""

from __future__ import annotations

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
)

DATAVERSE_API = "/api/data/v9.2"
# A stock org's Status and Status Reason labels, as the opportunity form shows them.
STATE_LABELS = {0: "Open", 1: "Won", 2: "Lost"}
STATUS_REASON_LABELS = {1: "In Progress", 2: "On Hold", 3: "Won", 4: "Canceled", 5: "Out-Sold"}


def shown_state(statecode: object, statuscode: object) -> str:
    state = STATE_LABELS.get(statecode, str(statecode)) if isinstance(statecode, int) else str(statecode)
    reason = STATUS_REASON_LABELS.get(statuscode, str(statuscode)) if isinstance(statuscode, int) else str(statuscode)
    return f"{state} / {reason}"


class DataverseSide:
    provider = "dynamics"
    product = "Dynamics 365"
    store = "Dataverse"
    seller_api = "Web API"
    sign_in = "a static bearer token (DATAVERSE_ACCESS_TOKEN, for emulators only)"
    deal_value_label = "estimated value"

    def __init__(self, emulator: Any, settings: dict[str, str]) -> None:
        self.url = emulator.url
        self.control = emulator.url + "/_emulator"
        self.settings = settings
        mapping = crm_mapping(settings)
        self.referral_column = mapping.column("referral_id")
        self.link_column = mapping.column("referral_link")
        self.audit_column = mapping.column("audit")
        self.sync_column = mapping.column("sync_enabled")
        self.status = mapping.status
        self.microsoft_columns = {f: mapping.column(f) for f in MICROSOFT_FIELDS if mapping.column(f)}

    def _record(self, row: dict[str, Any]) -> CrmRecord:
        return CrmRecord(
            id=str(row.get("opportunityid")),
            name=str(row.get("name") or ""),
            deal_value=number(row.get("estimatedvalue")),
            sync=bool(row.get(self.sync_column)),
            referral_id=row.get(self.referral_column) or None,
            referral_link=row.get(self.link_column) or None,
            audit=str(row.get(self.audit_column) or ""),
            state=shown_state(row.get("statecode"), row.get("statuscode")),
            microsoft=microsoft_side(row, self.microsoft_columns),
            raw=row,
        )

    def shows(self, status: str, substatus: str | None) -> str:
        target = self.status.target(status, substatus)
        if target is None:
            raise StepFailed(f"the mapping writes no Dynamics 365 status for {status}/{substatus}")
        return shown_state(*target)

    def opportunities(self) -> list[CrmRecord]:
        rows = control_json(requests.get(f"{self.control}/tables/opportunities", timeout=TIMEOUT))["value"]
        return [self._record(row) for row in rows]

    def opportunity(self, crm_id: str) -> CrmRecord | None:
        return next((r for r in self.opportunities() if r["id"].lower() == crm_id.lower()), None)

    def writes(self) -> list[dict[str, Any]]:
        return list(control_json(requests.get(f"{self.control}/writes", timeout=TIMEOUT))["value"])

    def write_kind(self, write: dict[str, Any]) -> str:
        return f"{write.get('operation', '?')} {write.get('table', '')}".strip()

    def render(self, record: CrmRecord) -> list[str]:
        lines = [
            f'  {record["id"]}  "{record["name"]}"  estimatedvalue {record["deal_value"] or 0:,.0f}'
            f"  sync {'Yes' if record['sync'] else 'No'}",
            f"      {self.referral_column}={record['referral_id'] or '(none: no referral)'}",
        ]
        if record["referral_link"]:
            lines.append(f"      {self.link_column}={record['referral_link']}")
        if record["audit"]:
            lines.append(f"      {self.audit_column}: {audit_summary(record)}")
        if record["microsoft"]:
            lines.append(f"      Microsoft's side: {microsoft_summary(record)}")
        return lines

    def report_notes(self) -> list[str]:
        return []

    def seller(self) -> DataverseSeller:
        return DataverseSeller(self.url, self.settings)


class DataverseSeller:
    """A seller in Dynamics 365: creates and edits opportunities through the Dataverse Web API with a
    bearer token, as the model-driven app does, never through the connector's own adapter."""

    def __init__(self, url: str, settings: dict[str, str]) -> None:
        self.api = url + DATAVERSE_API
        self.headers = {
            "Authorization": f"Bearer {settings['DATAVERSE_ACCESS_TOKEN']}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Prefer": "return=representation",
        }
        mapping = crm_mapping(settings)
        self.sync_column = mapping.column("sync_enabled")
        self.help_column = mapping.column("help_code")
        self.products_column = mapping.column("solution_ids")
        self.country_column = mapping.customer.account_country
        # The org has the choice values the mapping names for "How can Microsoft help?".
        self.help_options = dict(mapping.fields["help_code"].values)
        self.status = mapping.status
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

    def set_deal_value(self, crm_id: str, value: float) -> None:
        url = f"{self.api}/opportunities({crm_id})"
        response = requests.patch(url, json={"estimatedvalue": value}, headers=self.headers, timeout=TIMEOUT)
        if response.status_code not in (200, 204):
            raise StepFailed(f"Dataverse refused the seller's edit: {response.status_code} {response.text}")
        self.writes += 1

    def _target(self, status: str, substatus: str) -> tuple[int, int]:
        target = self.status.target(status, substatus)
        if target is None:
            raise StepFailed(f"the mapping writes no Dynamics 365 status for {status}/{substatus}")
        return target

    def accept(self, crm_id: str) -> str:
        """Status Reason from On Hold to In Progress (the open status the mapping writes for Active/Accepted)."""
        statecode, statuscode = self._target("Active", "Accepted")
        url = f"{self.api}/opportunities({crm_id})"
        response = requests.patch(url, json={"statuscode": statuscode}, headers=self.headers, timeout=TIMEOUT)
        if response.status_code not in (200, 204):
            raise StepFailed(f"Dataverse refused the seller's accept: {response.status_code} {response.text}")
        self.writes += 1
        return f"Status Reason {shown_state(statecode, statuscode).split(' / ')[1]}"

    def win(self, crm_id: str) -> str:
        """Close as Won: the WinOpportunity action the form's button calls, with its close activity."""
        statecode, statuscode = self._target("Closed", "Won")
        body = {
            "Status": statuscode,
            "OpportunityClose": {"subject": "Won", "opportunityid@odata.bind": f"/opportunities({crm_id})"},
        }
        response = requests.post(f"{self.api}/WinOpportunity", json=body, headers=self.headers, timeout=TIMEOUT)
        if response.status_code != 204:
            raise StepFailed(f"Dataverse refused the seller's Close as Won: {response.status_code} {response.text}")
        self.writes += 1
        return f"Close as Won ({shown_state(statecode, statuscode)})"
