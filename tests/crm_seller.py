"""What a seller does in the CRM, over the CRM's own API (not through the connector's adapters).

Both sellers offer the same operations with CRM-neutral arguments, so an end-to-end test reads the
same for Dynamics 365 and Salesforce:

* ``create_flagged(...)`` -- an account, optionally a contact, and an opportunity (flagged for sync by
  default) with the help request given as Partner Center's ``assistanceRequestCode``;
* ``edit(crm_id, deal_value=..., notes=..., products=..., name=...)`` -- a change in the CRM's UI;
* ``win(crm_id)`` -- the seller closes the opportunity as won;
* ``accept(crm_id)`` -- the seller accepts a referral Microsoft shared (the deal moves out of its on-hold stage);
* ``close_lost(crm_id, reason)`` -- the seller closes the deal as lost, with a decline reason (Partner Center's
  ``statusReason`` text, picked from the CRM's own list) or none: before acceptance that declines the referral.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import requests

from shared.crm.dynamics.mapping import default_mapping as dataverse_mapping
from shared.crm.salesforce.mapping import default_mapping as salesforce_mapping

# The org is set up with the shipped mapping's choice / picklist values.
DEFAULT_DATAVERSE_HELP_OPTIONS = dataverse_mapping().fields["help_code"].values
DEFAULT_SALESFORCE_HELP_PICKLIST = salesforce_mapping().fields["help_code"].values
DEFAULT_DATAVERSE_REASONS = dataverse_mapping().fields["status_reason"].values
DEFAULT_SALESFORCE_REASONS = salesforce_mapping().fields["status_reason"].values

DV_PATH = "/api/data/v9.2"
SF_PATH = "/services/data/v62.0"
DEFAULT_NAME = "Northwind - data platform modernisation"
DEFAULT_HELP = "ProofOfConceptOrDemo"
CLOSE_DATE = "2027-03-31"
NOTES = "Seller notes: migrate the warehouse"


class Seller(Protocol):
    def create_flagged(
        self,
        *,
        name: str = DEFAULT_NAME,
        help_code: str | None = DEFAULT_HELP,
        country: str = "US",
        deal_value: float = 250000.0,
        currency: str = "USD",
        products: str | None = "SOL-34104-EBB",
        contact_email: str | None = "dana@northwind.example",
        flagged: bool = True,
    ) -> str: ...

    def edit(self, crm_id: str, **changes: Any) -> None: ...

    def request_help(self, crm_id: str, help_code: str | None) -> None:
        """Pick a "How can Microsoft help?" value (Partner Center's assistanceRequestCode; None clears it)."""
        ...

    def win(self, crm_id: str) -> None: ...

    def accept(self, crm_id: str) -> None: ...

    def close_lost(self, crm_id: str, reason: str | None = None) -> None: ...


def _columns(mapping: Mapping[str, str], changes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(mapping)
    if unknown:
        raise TypeError(f"a seller edit takes {', '.join(sorted(mapping))}; not {', '.join(sorted(unknown))}")
    return {mapping[key]: value for key, value in changes.items()}


class DataverseSeller:
    """Creates and edits opportunities in the Dataverse emulator like a user of Dynamics 365 would."""

    EDITABLE: ClassVar[dict[str, str]] = {
        "name": "name",
        "deal_value": "estimatedvalue",
        "notes": "description",
        "products": "new_products",
    }

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
        name: str = DEFAULT_NAME,
        help_code: str | None = DEFAULT_HELP,
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
            "estimatedclosedate": CLOSE_DATE,
            "description": NOTES,
            "transactioncurrencyid@odata.bind": f"/transactioncurrencies({self._currency(currency)})",
            "customerid_account@odata.bind": f"/accounts({account['accountid']})",
            "new_syncwithpartnercenter": flagged,
            "new_howcanmicrosofthelp": DEFAULT_DATAVERSE_HELP_OPTIONS[help_code] if help_code else None,
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

    def edit(self, crm_id: str, **changes: Any) -> None:
        response = requests.patch(
            f"{self.base}/opportunities({crm_id})",
            json=_columns(self.EDITABLE, changes),
            headers=self.headers,
            timeout=10,
        )
        assert response.status_code in (200, 204), response.text

    def request_help(self, crm_id: str, help_code: str | None) -> None:
        value = DEFAULT_DATAVERSE_HELP_OPTIONS[help_code] if help_code else None
        response = requests.patch(
            f"{self.base}/opportunities({crm_id})",
            json={"new_howcanmicrosofthelp": value},
            headers=self.headers,
            timeout=10,
        )
        assert response.status_code in (200, 204), response.text

    def win(self, crm_id: str) -> None:
        body = {
            "Status": 3,
            "OpportunityClose": {"subject": "Won", "opportunityid@odata.bind": f"/opportunities({crm_id})"},
        }
        response = requests.post(f"{self.base}/WinOpportunity", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 204, response.text

    def accept(self, crm_id: str) -> None:
        """On Hold -> In Progress."""
        response = requests.patch(
            f"{self.base}/opportunities({crm_id})", json={"statuscode": 1}, headers=self.headers, timeout=10
        )
        assert response.status_code in (200, 204), response.text

    def close_lost(self, crm_id: str, reason: str | None = None) -> None:
        """The Decline Reason first (a closed opportunity is read-only), then "Close as Lost" with the dialog's
        default status reason, Canceled."""
        if reason is not None:
            response = requests.patch(
                f"{self.base}/opportunities({crm_id})",
                json={"new_declinereason": DEFAULT_DATAVERSE_REASONS[reason]},
                headers=self.headers,
                timeout=10,
            )
            assert response.status_code in (200, 204), response.text
        body = {
            "Status": 4,
            "OpportunityClose": {"subject": "Lost", "opportunityid@odata.bind": f"/opportunities({crm_id})"},
        }
        response = requests.post(f"{self.base}/LoseOpportunity", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 204, response.text


class SalesforceSeller:
    """Creates and edits opportunities in the Salesforce emulator over the REST API, as the Lightning UI does
    for a signed-in user. ``new_token`` gives the user a session; it is asked again when the session expires."""

    EDITABLE: ClassVar[dict[str, str]] = {
        "name": "Name",
        "deal_value": "Amount",
        "notes": "Description",
        "products": "Products__c",
    }
    OPEN_STAGE = "Qualification"
    WON_STAGE = "Closed Won"
    ACCEPTED_STAGE = "Qualification"
    LOST_STAGE = "Closed Lost"

    def __init__(self, url: str, new_token: Callable[[], str]) -> None:
        self.base = url + SF_PATH
        self._new_token = new_token
        self._token: str | None = None

    def _request(self, method: str, path: str, body: dict[str, Any]) -> requests.Response:
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._new_token()
            response = requests.request(
                method,
                f"{self.base}/{path}",
                json=body,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                timeout=10,
            )
            if response.status_code != 401 or attempt == 2:
                return response
            self._token = None  # the session expired: sign in again
        raise AssertionError("unreachable")

    def _create(self, sobject: str, body: dict[str, Any]) -> str:
        response = self._request("POST", f"sobjects/{sobject}", body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def _update(self, crm_id: str, body: dict[str, Any]) -> None:
        response = self._request("PATCH", f"sobjects/Opportunity/{crm_id}", body)
        assert response.status_code == 204, response.text

    def create_flagged(
        self,
        *,
        name: str = DEFAULT_NAME,
        help_code: str | None = DEFAULT_HELP,
        country: str = "US",
        deal_value: float = 250000.0,
        currency: str = "USD",
        products: str | None = "SOL-34104-EBB",
        contact_email: str | None = "dana@northwind.example",
        flagged: bool = True,
    ) -> str:
        suffix = uuid.uuid4().hex[:6]
        account_id = self._create(
            "Account",
            {
                "Name": f"Northwind Traders {suffix}",
                "BillingStreet": "1 Harbor Way",
                "BillingCity": "Seattle",
                "BillingState": "WA",
                "BillingPostalCode": "98101",
                "BillingCountry": country,
            },
        )
        contact_id = None
        if contact_email:
            contact_id = self._create(
                "Contact", {"FirstName": "Dana", "LastName": "Birch", "Email": contact_email, "AccountId": account_id}
            )
        opportunity_id = self._create(
            "Opportunity",
            {
                "Name": name,
                "StageName": self.OPEN_STAGE,
                "CloseDate": CLOSE_DATE,
                "Amount": deal_value,
                "CurrencyIsoCode": currency,
                "Description": NOTES,
                "AccountId": account_id,
                "Sync_with_Partner_Center__c": flagged,
                "How_can_Microsoft_help__c": DEFAULT_SALESFORCE_HELP_PICKLIST[help_code] if help_code else None,
                "Products__c": products,
            },
        )
        if contact_id:
            self._create(
                "OpportunityContactRole",
                {"OpportunityId": opportunity_id, "ContactId": contact_id, "IsPrimary": True},
            )
        return opportunity_id

    def edit(self, crm_id: str, **changes: Any) -> None:
        self._update(crm_id, _columns(self.EDITABLE, changes))

    def request_help(self, crm_id: str, help_code: str | None) -> None:
        value = DEFAULT_SALESFORCE_HELP_PICKLIST[help_code] if help_code else None
        self._update(crm_id, {"How_can_Microsoft_help__c": value})

    def win(self, crm_id: str) -> None:
        self._update(crm_id, {"StageName": self.WON_STAGE})

    def accept(self, crm_id: str) -> None:
        self._update(crm_id, {"StageName": self.ACCEPTED_STAGE})

    def close_lost(self, crm_id: str, reason: str | None = None) -> None:
        body = {"StageName": self.LOST_STAGE}
        if reason is not None:
            body["Decline_Reason__c"] = DEFAULT_SALESFORCE_REASONS[reason]
        self._update(crm_id, body)
