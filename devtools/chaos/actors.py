"""The people in a chaos run, and what the run reads of the emulators' state.

* :class:`Portal` is Partner Center's side: Microsoft sharing a referral and people editing it in the portal.
  It works through the emulator's control API (what the portal does is not the connector's traffic, and
  the portal is not what the network faults are about).
* A seller (:class:`DataverseSeller`, :class:`SalesforceSeller`) works in the CRM through the CRM's public
  API, through the same faults as the app. A seller retries what failed as a careful person would: an
  edit is simply saved again, and a create whose answer was lost is first looked for (by its unique name,
  in the emulator's state) so the seller never makes a second record by retrying.
* ``snapshot()`` methods read the emulators' state through their control APIs (never faulted): every
  referral, every opportunity with the fields the run edits, every account and contact.

Values are compared in one canonical form (:func:`canonical`), the one ``shared.domain.mapping`` uses.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import requests

from devtools.demo.crm import crm_mapping, setting
from shared.domain.checkmark import strip_marks
from shared.httpclient import parse_retry_after

TIMEOUT = 15
MAX_TRIES = 40
EDITED_FIELDS = ("name", "deal_value", "notes", "close_date", "status")
DATAVERSE_API = "/api/data/v9.2"
SF_TOKEN_PATH = "/services/oauth2/token"
SF_SELLER_CLIENT = "chaos-seller-ui"
SF_SELLER_USER = "casey.seller@fabrikam.example"


class ActorError(RuntimeError):
    """A person's request was refused for a reason retrying cannot fix (a bug in the run or the emulator)."""


def canonical(field: str, value: Any) -> str | None:
    """A value of an edited field as ``shared.domain.mapping.mapped_values`` would hold it."""
    if value is None or value == "":
        return None
    if field == "name":
        return strip_marks(str(value)).strip() or None
    if field == "deal_value":
        return format(Decimal(str(value)).normalize(), "f")
    if field == "close_date":
        return str(value)[:10]
    return str(value).strip() or None


@dataclass(frozen=True)
class Opp:
    """An opportunity as the CRM holds it, reduced to what the run checks."""

    crm_id: str
    referral_id: str | None
    values: dict[str, str | None]  # EDITED_FIELDS, canonical; status as "Status/Substatus"


@dataclass(frozen=True)
class CrmSnapshot:
    opportunities: list[Opp]
    account_names: list[str]
    contact_emails: list[str]


@dataclass(frozen=True)
class NewOpportunity:
    name: str
    customer: str
    postal_code: str
    email: str
    first_name: str
    last_name: str
    deal_value: int
    notes: str
    close_date: str
    products: str | None  # None: deliberately invalid (no solution id)
    help_code: str | None


def _get_json(url: str) -> Any:
    response = requests.get(url, timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()


class Careful:
    """How a person's client copes with a bad network: wait when told to, look before creating again."""

    def __init__(self, rng: random.Random) -> None:
        self.session = requests.Session()
        self.rng = rng
        self.lock = threading.Lock()
        self.retries = 0

    def _pause(self, attempt: int, retry_after: float | None = None) -> None:
        with self.lock:
            self.retries += 1
            jitter = self.rng.uniform(0.5, 1.0)
        time.sleep(retry_after if retry_after is not None else min(1.0, 0.05 * 2**attempt) * jitter)

    def send(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...],
        headers: Callable[[], dict[str, str]],
        body: dict[str, Any] | None = None,
        find: Callable[[], Any] | None = None,
        on_unauthorised: Callable[[], None] | None = None,
    ) -> requests.Response | Any:
        """The response of the first attempt that succeeded, or what ``find`` found after a lost answer."""
        for attempt in range(MAX_TRIES):
            try:
                response = self.session.request(method, url, json=body, headers=headers(), timeout=TIMEOUT)
            except requests.RequestException:
                response = None  # dropped or reset: it may or may not have happened
            if response is not None:
                if response.status_code in ok:
                    return response
                if response.status_code in (429, 503):
                    self._pause(attempt, parse_retry_after(response.headers.get("Retry-After")))
                    continue  # refused before anything happened
                if response.status_code == 401 and on_unauthorised is not None:
                    on_unauthorised()
                    continue
                if response.status_code not in (500, 502, 504):
                    raise ActorError(f"{method} {url.split('?')[0]}: {response.status_code} {response.text[:300]}")
            if find is not None:
                found = find()
                if found is not None:
                    return found
            self._pause(attempt)
        raise ActorError(f"{method} {url.split('?')[0]} kept failing after {MAX_TRIES} attempts")


# -- Partner Center ------------------------------------------------------------------------------------------
class Portal:
    """Partner Center as people use it: Microsoft shares referrals, people edit them in the portal."""

    def __init__(self, url: str) -> None:
        self.control = url + "/_emulator"

    def share_referral(self, overrides: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            f"{self.control}/referrals", json={"kind": "cosell", "overrides": overrides}, timeout=TIMEOUT
        )
        if response.status_code != 201:
            raise ActorError(f"the emulator refused the referral: {response.status_code} {response.text[:300]}")
        return dict(response.json())

    def update(self, referral_id: str, changes: dict[str, Any]) -> None:
        response = requests.patch(f"{self.control}/referrals/{referral_id}", json=changes, timeout=TIMEOUT)
        if response.status_code != 200:
            raise ActorError(f"the portal edit failed: {response.status_code} {response.text[:300]}")

    def edit(self, referral_id: str, field: str, value: str) -> None:
        if field == "name":
            self.update(referral_id, {"name": value})
        elif field == "deal_value":
            self.update(referral_id, {"details": {"dealValue": float(value)}})
        elif field == "notes":
            self.update(referral_id, {"details": {"notes": value}})
        else:
            self.update(referral_id, {"details": {"closingDateTime": f"{value}T00:00:00Z"}})

    def set_status(self, referral_id: str, status: str, substatus: str) -> None:
        self.update(referral_id, {"status": status, "substatus": substatus})

    def referrals(self) -> list[dict[str, Any]]:
        return list(_get_json(f"{self.control}/referrals")["value"])

    def pending_deliveries(self) -> int:
        deliveries = _get_json(f"{self.control}/deliveries")["value"]
        return sum(1 for d in deliveries if d.get("status") == "pending")


def referral_values(raw: dict[str, Any]) -> dict[str, str | None]:
    details = raw.get("details") or {}
    return {
        "name": canonical("name", raw.get("name")),
        "deal_value": canonical("deal_value", details.get("dealValue")),
        "notes": canonical("notes", details.get("notes")),
        "close_date": canonical("close_date", details.get("closingDateTime")),
        "status": f"{raw.get('status')}/{raw.get('substatus')}",
    }


# -- CRM sellers ---------------------------------------------------------------------------------------------
class Seller(Protocol):
    careful: Careful

    def create(self, new: NewOpportunity) -> str: ...

    def edit(self, crm_id: str, field: str, value: str) -> None: ...

    def accept(self, crm_id: str) -> None: ...

    def close(self, crm_id: str, won: bool) -> None: ...

    def snapshot(self, customers: bool = True) -> CrmSnapshot:
        """Every opportunity and, with ``customers``, every account name and contact e-mail."""
        ...


class DataverseSeller:
    """A seller in Dynamics 365 using the Dataverse Web API, as the model-driven app does."""

    def __init__(self, url: str, settings: dict[str, str], rng: random.Random) -> None:
        self.api = url + DATAVERSE_API
        self.control = url + "/_emulator"
        self.careful = Careful(rng)
        self.token = settings["DATAVERSE_ACCESS_TOKEN"]
        # The app's own mapping: the seller works in the columns the app synchronises, and reads statuses as it does.
        self.mapping = crm_mapping(settings)
        self.sync_column = self.mapping.column("sync_enabled")
        self.help_column = self.mapping.column("help_code")
        self.products_column = self.mapping.column("solution_ids")
        self.referral_column = self.mapping.column("referral_id")
        self.country_column = self.mapping.customer.account_country
        self.help_options = dict(self.mapping.fields["help_code"].values)
        currencies = self._table("transactioncurrencies")
        self.usd = next(str(c["transactioncurrencyid"]) for c in currencies if c["isocurrencycode"] == "USD")

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "OData-Version": "4.0",
        }

    def _table(self, name: str) -> list[dict[str, Any]]:
        return list(_get_json(f"{self.control}/tables/{name}")["value"])

    def _find(self, table: str, column: str, value: str, key: str) -> Callable[[], str | None]:
        def find() -> str | None:
            return next((str(r[key]) for r in self._table(table) if r.get(column) == value), None)

        return find

    def _create(self, table: str, body: dict[str, Any], key: str, unique: tuple[str, str]) -> str:
        found = self.careful.send(
            "POST",
            f"{self.api}/{table}",
            ok=(201, 204),
            headers=lambda: {**self._headers(), "Prefer": "return=representation"},
            body=body,
            find=self._find(table, unique[0], unique[1], key),
        )
        if isinstance(found, requests.Response):
            if found.status_code == 201 and found.content:
                return str(found.json()[key])
            entity = found.headers.get("OData-EntityId", "")
            return entity.rsplit("(", 1)[-1].rstrip(")")
        return str(found)

    def create(self, new: NewOpportunity) -> str:
        account_id = self._create(
            "accounts",
            {
                "name": new.customer,
                "address1_city": "Seattle",
                "address1_postalcode": new.postal_code,
                self.country_column: "US",
            },
            "accountid",
            ("name", new.customer),
        )
        contact_id = self._create(
            "contacts",
            {
                "firstname": new.first_name,
                "lastname": new.last_name,
                "emailaddress1": new.email,
                "parentcustomerid_account@odata.bind": f"/accounts({account_id})",
            },
            "contactid",
            ("emailaddress1", new.email),
        )
        body: dict[str, Any] = {
            "name": new.name,
            "estimatedvalue": new.deal_value,
            "estimatedclosedate": new.close_date,
            "description": new.notes,
            "transactioncurrencyid@odata.bind": f"/transactioncurrencies({self.usd})",
            "customerid_account@odata.bind": f"/accounts({account_id})",
            "parentcontactid@odata.bind": f"/contacts({contact_id})",
            self.sync_column: True,
            self.help_column: self.help_options[new.help_code] if new.help_code else None,
            self.products_column: new.products,
        }
        return self._create("opportunities", body, "opportunityid", ("name", new.name))

    def _patch(self, crm_id: str, body: dict[str, Any]) -> None:
        self.careful.send(
            "PATCH", f"{self.api}/opportunities({crm_id})", ok=(200, 204), headers=self._headers, body=body
        )

    def edit(self, crm_id: str, field: str, value: str) -> None:
        column = {"name": "name", "deal_value": "estimatedvalue", "notes": "description"}.get(
            field, "estimatedclosedate"
        )
        self._patch(crm_id, {column: float(value) if field == "deal_value" else value})

    def accept(self, crm_id: str) -> None:
        self._patch(crm_id, {"statuscode": 1})  # On Hold -> In Progress

    def close(self, crm_id: str, won: bool) -> None:
        action = "WinOpportunity" if won else "LoseOpportunity"
        body = {
            "Status": 3 if won else 5,
            "OpportunityClose": {
                "subject": "Closed by the seller",
                "opportunityid@odata.bind": f"/opportunities({crm_id})",
            },
        }

        def closed() -> bool | None:
            row = next((r for r in self._table("opportunities") if r["opportunityid"] == crm_id), None)
            return True if row is not None and row.get("statecode") != 0 else None

        self.careful.send("POST", f"{self.api}/{action}", ok=(200, 204), headers=self._headers, body=body, find=closed)

    def snapshot(self, customers: bool = True) -> CrmSnapshot:
        opportunities = []
        for row in self._table("opportunities"):
            status, substatus = self.mapping.status.status_of(row.get("statecode"), row.get("statuscode"))
            values = {
                "name": canonical("name", row.get("name")),
                "deal_value": canonical("deal_value", row.get("estimatedvalue")),
                "notes": canonical("notes", row.get("description")),
                "close_date": canonical("close_date", row.get("estimatedclosedate")),
                "status": f"{status}/{substatus}",
            }
            opportunities.append(Opp(str(row["opportunityid"]), row.get(self.referral_column) or None, values))
        if not customers:
            return CrmSnapshot(opportunities, [], [])
        accounts = [str(r.get("name")) for r in self._table("accounts")]
        contacts = [str(r.get("emailaddress1")) for r in self._table("contacts") if r.get("emailaddress1")]
        return CrmSnapshot(opportunities, accounts, contacts)


class SalesforceSeller:
    """A seller in Salesforce using the REST API with a session of their own, as the Lightning UI does."""

    def __init__(self, url: str, settings: dict[str, str], rng: random.Random) -> None:
        self.url = url
        self.control = url + "/_emulator"
        self.careful = Careful(rng)
        self.version = setting(settings, "SALESFORCE_API_VERSION", "salesforce_api_version")
        # The app's own mapping: the seller works in the fields and stages the app synchronises.
        self.mapping = crm_mapping(settings)
        self.help_values = dict(self.mapping.fields["help_code"].values)
        stages = self.mapping.status
        self.active_stage = stages.stage_for("Active", None)
        self.won_stage, self.lost_stage = stages.stage_for("Closed", "Won"), stages.stage_for("Closed", "Lost")
        self._secret = "chaos-seller-" + secrets.token_hex(16)
        body = {"clientId": SF_SELLER_CLIENT, "clientSecret": self._secret, "username": SF_SELLER_USER}
        requests.post(f"{self.control}/clients", json=body, timeout=TIMEOUT).raise_for_status()
        self._token: str | None = None
        self._instance = url
        self._lock = threading.Lock()

    def _sign_in(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": SF_SELLER_CLIENT, "client_secret": self._secret}
        for attempt in range(MAX_TRIES):
            try:
                response = requests.post(f"{self.url}{SF_TOKEN_PATH}", data=form, timeout=TIMEOUT)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code == 200:
                answer = response.json()
                self._instance = str(answer["instance_url"]).rstrip("/")
                self._token = str(answer["access_token"])
                return
            if response is not None and response.status_code not in (429, 500, 502, 503, 504):
                raise ActorError(f"the seller could not sign in: {response.status_code} {response.text[:300]}")
            self.careful._pause(attempt)
        raise ActorError("the seller could not sign in to Salesforce")

    def _headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None:
                self._sign_in()
            return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    def _expired(self) -> None:
        with self._lock:
            self._token = None

    def _data(self, path: str) -> str:
        return f"{self._instance}/services/data/{self.version}/{path}"

    def _records(self, sobject: str) -> list[dict[str, Any]]:
        return list(_get_json(f"{self.control}/records/{sobject}")["records"])

    def _create(self, sobject: str, body: dict[str, Any], match: Callable[[dict[str, Any]], bool]) -> str:
        def find() -> str | None:
            return next((str(r["Id"]) for r in self._records(sobject) if match(r)), None)

        self._headers()  # signs in first, so the URL below names the instance
        found = self.careful.send(
            "POST",
            self._data(f"sobjects/{sobject}"),
            ok=(201,),
            headers=self._headers,
            body=body,
            find=find,
            on_unauthorised=self._expired,
        )
        return str(found.json()["id"]) if isinstance(found, requests.Response) else str(found)

    def create(self, new: NewOpportunity) -> str:
        m = self.mapping
        account_id = self._create(
            "Account",
            {
                "Name": new.customer,
                "BillingCity": "Seattle",
                "BillingPostalCode": new.postal_code,
                "BillingCountry": "US",
            },
            lambda r: r.get("Name") == new.customer,
        )
        contact_id = self._create(
            "Contact",
            {"FirstName": new.first_name, "LastName": new.last_name, "Email": new.email, "AccountId": account_id},
            lambda r: r.get("Email") == new.email,
        )
        body: dict[str, Any] = {
            "Name": new.name,
            "StageName": self.active_stage,
            "CloseDate": new.close_date,
            "Amount": new.deal_value,
            "Description": new.notes,
            "AccountId": account_id,
            m.column("sync_enabled"): True,
            m.column("help_code"): self.help_values[new.help_code] if new.help_code else None,
            m.column("solution_ids"): new.products,
        }
        if m.column("currency"):
            body[m.column("currency")] = "USD"
        opportunity_id = self._create("Opportunity", body, lambda r: r.get("Name") == new.name)
        self._create(
            "OpportunityContactRole",
            {"OpportunityId": opportunity_id, "ContactId": contact_id, "IsPrimary": True},
            lambda r: r.get("OpportunityId") == opportunity_id and r.get("ContactId") == contact_id,
        )
        return opportunity_id

    def _patch(self, crm_id: str, body: dict[str, Any]) -> None:
        self._headers()
        self.careful.send(
            "PATCH",
            self._data(f"sobjects/Opportunity/{crm_id}"),
            ok=(200, 204),
            headers=self._headers,
            body=body,
            on_unauthorised=self._expired,
        )

    def edit(self, crm_id: str, field: str, value: str) -> None:
        name = {"name": "Name", "deal_value": "Amount", "notes": "Description", "close_date": "CloseDate"}[field]
        self._patch(crm_id, {name: float(value) if field == "deal_value" else value})

    def accept(self, crm_id: str) -> None:
        self._patch(crm_id, {"StageName": self.active_stage})

    def close(self, crm_id: str, won: bool) -> None:
        self._patch(crm_id, {"StageName": self.won_stage if won else self.lost_stage})

    def snapshot(self, customers: bool = True) -> CrmSnapshot:
        m = self.mapping
        opportunities = []
        for row in self._records("Opportunity"):
            stage = row.get("StageName")
            closed, won = m.status.flags(stage)
            status, substatus = m.status.status_of(stage, closed, won)
            values = {
                "name": canonical("name", row.get("Name")),
                "deal_value": canonical("deal_value", row.get("Amount")),
                "notes": canonical("notes", row.get("Description")),
                "close_date": canonical("close_date", row.get("CloseDate")),
                "status": f"{status}/{substatus}",
            }
            opportunities.append(Opp(str(row["Id"]), row.get(m.column("referral_id")) or None, values))
        if not customers:
            return CrmSnapshot(opportunities, [], [])
        accounts = [str(r.get("Name")) for r in self._records("Account")]
        contacts = [str(r.get("Email")) for r in self._records("Contact") if r.get("Email")]
        return CrmSnapshot(opportunities, accounts, contacts)


def make_seller(crm: str, url: str, settings: dict[str, str], rng: random.Random) -> Seller:
    return SalesforceSeller(url, settings, rng) if crm == "salesforce" else DataverseSeller(url, settings, rng)
