"""What a seller does in the CRM, over the CRM's own API (not through the connector's adapters)."""

from __future__ import annotations

import uuid
from typing import Any

import requests

DV_PATH = "/api/data/v9.2"


class DataverseSeller:
    """Creates and edits opportunities in the Dataverse emulator like a user of Dynamics 365 would."""

    def __init__(self, url: str, token: str) -> None:
        self.base = url + DV_PATH
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Prefer": "return=representation",
        }

    def _post(self, entity_set: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.base}/{entity_set}", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()

    def _currency(self, code: str) -> str:
        response = requests.get(
            f"{self.base}/transactioncurrencies",
            headers=self.headers,
            timeout=10,
            params={"$filter": f"isocurrencycode eq '{code}'"},
        )
        return response.json()["value"][0]["transactioncurrencyid"]

    def create_flagged(
        self,
        *,
        name: str = "Northwind - data platform modernisation",
        help_code: int | None = 100000002,
        country: str = "US",
        deal_value: float = 250000.0,
        currency: str = "USD",
        products: str | None = "SOL-34104-EBB",
        contact_email: str | None = "dana@northwind.example",
        flagged: bool = True,
    ) -> str:
        suffix = uuid.uuid4().hex[:6]
        account = self._post(
            "accounts",
            {
                "name": f"Northwind Traders {suffix}",
                "address1_line1": "1 Harbor Way",
                "address1_city": "Seattle",
                "address1_stateorprovince": "WA",
                "address1_postalcode": "98101",
                "address1_country": country,
            },
        )
        body: dict[str, Any] = {
            "name": name,
            "estimatedvalue": deal_value,
            "estimatedclosedate": "2027-03-31",
            "description": "Seller notes: migrate the warehouse",
            "transactioncurrencyid@odata.bind": f"/transactioncurrencies({self._currency(currency)})",
            "customerid_account@odata.bind": f"/accounts({account['accountid']})",
            "new_syncwithpartnercenter": flagged,
            "new_howcanmicrosofthelp": help_code,
            "new_products": products,
        }
        if contact_email:
            contact = self._post(
                "contacts",
                {
                    "firstname": "Dana",
                    "lastname": "Birch",
                    "emailaddress1": contact_email,
                    "parentcustomerid_account@odata.bind": f"/accounts({account['accountid']})",
                },
            )
            body["parentcontactid@odata.bind"] = f"/contacts({contact['contactid']})"
        return self._post("opportunities", body)["opportunityid"]

    def edit(self, opportunity_id: str, **columns: Any) -> None:
        response = requests.patch(
            f"{self.base}/opportunities({opportunity_id})", json=columns, headers=self.headers, timeout=10
        )
        assert response.status_code in (200, 204), response.text

    def win(self, opportunity_id: str) -> None:
        body = {
            "Status": 3,
            "OpportunityClose": {"subject": "Won", "opportunityid@odata.bind": f"/opportunities({opportunity_id})"},
        }
        response = requests.post(f"{self.base}/WinOpportunity", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 204, response.text
