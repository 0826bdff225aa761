"""One view of the CRM emulator behind an end-to-end stack, the same for Dynamics 365 and Salesforce.

Records are read from the emulator's own state (not through the connector's adapter under test) and
normalised to neutral dicts, so an assertion is written once and checked against both CRMs:

``id``, ``name``, ``referral_id``, ``referral_link``, ``help`` (the CRM's own choice / picklist value),
``products``, ``sync``, ``audit``, ``deal_value`` (float), ``notes``, ``currency`` (ISO code),
``close_date`` (ISO date), ``state`` (``open`` / ``won`` / ``lost``), ``stage`` (Dynamics "statecode/statuscode",
Salesforce StageName), ``reason`` (the Decline Reason, the CRM's own value), ``account_id``.

Counters: :meth:`writes` (creates, updates, deletes and actions on every table / object),
:meth:`opportunity_updates` and :meth:`opportunity_reads`. :meth:`seller` acts like a user in the CRM;
:meth:`reader` is the connector's adapter with its own credentials (for ``stored_form`` comparisons).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from emulators.dataverse import DataverseEmulator
from emulators.salesforce.emulator import DEFAULT_CLIENT_SECRET, SalesforceEmulator
from shared.crm.dynamics import DataverseConfig, DataverseCrm
from shared.crm.salesforce import SalesforceConfig, SalesforceCrm
from shared.crm.salesforce.auth import StaticToken
from shared.ports import Crm
from tests.crm_seller import DataverseSeller, SalesforceSeller, Seller

DV_TOKEN = "dv-emulator-token"
SELLER_USERNAME = "seller@northwind.example"


class CrmView(Protocol):
    name: str

    def opportunities(self) -> list[dict[str, Any]]: ...

    def opportunity(self, crm_id: str) -> dict[str, Any]: ...

    def accounts(self) -> list[dict[str, Any]]: ...

    def contact_emails(self) -> list[str | None]: ...

    def writes(self) -> int: ...

    def opportunity_updates(self) -> int: ...

    def opportunity_reads(self) -> int: ...

    def reset_counters(self) -> None: ...

    def inject_throttling(self, count: int, retry_after: float) -> None: ...

    def faults(self) -> int: ...

    def seller(self) -> Seller: ...

    def reader(self) -> Crm: ...

    def secrets(self) -> list[str]: ...


def stored_row(stack: Any, crm_id: str) -> dict[str, Any]:
    """The opportunity's row as the emulated CRM stores it (its own column names), for asserting raw columns."""
    table = "opportunities" if stack.crm_name == "dynamics" else "Opportunity"
    row = stack.view.emulator.record(table, crm_id)
    assert row is not None
    return row


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class DataverseView:
    name = "dynamics"

    def __init__(self, emulator: DataverseEmulator, token: str = DV_TOKEN) -> None:
        self.emulator, self.token = emulator, token

    def _neutral(self, row: dict[str, Any]) -> dict[str, Any]:
        currencies = {
            c["transactioncurrencyid"]: c["isocurrencycode"] for c in self.emulator.table("transactioncurrencies")
        }
        state_code, status_code = row.get("statecode"), row.get("statuscode")
        # Won is one (statecode, statuscode) pair; anything else closed-as-won shows up as itself.
        states = {0: "open", 2: "lost"}
        state = "won" if (state_code, status_code) == (1, 3) else states.get(state_code, f"{state_code}/{status_code}")
        return {
            "id": row["opportunityid"],
            "name": row.get("name"),
            "referral_id": row.get("new_referralidentifier"),
            "referral_link": row.get("new_referrallink"),
            "help": row.get("new_howcanmicrosofthelp"),
            "products": row.get("new_products"),
            "sync": row.get("new_syncwithpartnercenter"),
            "audit": row.get("new_audit"),
            "deal_value": _float(row.get("estimatedvalue")),
            "notes": row.get("description"),
            "currency": currencies.get(row.get("_transactioncurrencyid_value")),
            "close_date": row.get("estimatedclosedate"),
            "state": state,
            "stage": f"{state_code}/{status_code}",
            "reason": row.get("new_declinereason"),
            "account_id": row.get("_customerid_value"),
        }

    def opportunities(self) -> list[dict[str, Any]]:
        return [self._neutral(row) for row in self.emulator.table("opportunities")]

    def opportunity(self, crm_id: str) -> dict[str, Any]:
        row = self.emulator.record("opportunities", crm_id)
        assert row is not None, f"no opportunity {crm_id} in Dataverse"
        return self._neutral(row)

    def accounts(self) -> list[dict[str, Any]]:
        return [
            {"id": a["accountid"], "name": a["name"], "country": a.get("address1_country")}
            for a in self.emulator.table("accounts")
        ]

    def contact_emails(self) -> list[str | None]:
        return [c.get("emailaddress1") for c in self.emulator.table("contacts")]

    def writes(self) -> int:
        counters = self.emulator.counters()
        tables = sum(t["creates"] + t["updates"] + t["deletes"] for t in counters["tables"].values())
        return tables + sum(counters["actions"].values())

    def opportunity_updates(self) -> int:
        return int(self.emulator.counters()["tables"]["opportunities"]["updates"])

    def opportunity_reads(self) -> int:
        return int(self.emulator.counters()["tables"]["opportunities"]["reads"])

    def reset_counters(self) -> None:
        self.emulator.reset_counters()

    def inject_throttling(self, count: int, retry_after: float) -> None:
        """429 with Retry-After: Dataverse's service protection limits."""
        self.emulator.inject_fault(status=429, count=count, retry_after=retry_after)

    def faults(self) -> int:
        return int(self.emulator.counters()["faults"])

    def seller(self) -> DataverseSeller:
        return DataverseSeller(self.emulator.url, self.token)

    def reader(self) -> DataverseCrm:
        token = self.token
        return DataverseCrm(DataverseConfig(self.emulator.url), lambda: token)

    def secrets(self) -> list[str]:
        return [self.token]


class SalesforceView:
    name = "salesforce"

    def __init__(self, emulator: SalesforceEmulator) -> None:
        self.emulator = emulator

    @staticmethod
    def _neutral(row: dict[str, Any]) -> dict[str, Any]:
        state = ("won" if row.get("IsWon") else "lost") if row.get("IsClosed") else "open"
        return {
            "id": row["Id"],
            "name": row.get("Name"),
            "referral_id": row.get("Referral_Identfier__c"),
            "referral_link": row.get("Referral_Link__c"),
            "help": row.get("How_can_Microsoft_help__c"),
            "products": row.get("Products__c"),
            "sync": row.get("Sync_with_Partner_Center__c"),
            "audit": row.get("Audit__c"),
            "deal_value": _float(row.get("Amount")),
            "notes": row.get("Description"),
            "currency": row.get("CurrencyIsoCode"),
            "close_date": row.get("CloseDate"),
            "state": state,
            "stage": row.get("StageName"),
            "reason": row.get("Decline_Reason__c"),
            "account_id": row.get("AccountId"),
        }

    def opportunities(self) -> list[dict[str, Any]]:
        return [self._neutral(row) for row in self.emulator.records("Opportunity")]

    def opportunity(self, crm_id: str) -> dict[str, Any]:
        row = self.emulator.record("Opportunity", crm_id)
        assert row is not None, f"no opportunity {crm_id} in Salesforce"
        return self._neutral(row)

    def accounts(self) -> list[dict[str, Any]]:
        return [
            {"id": a["Id"], "name": a["Name"], "country": a.get("BillingCountry")}
            for a in self.emulator.records("Account")
        ]

    def contact_emails(self) -> list[str | None]:
        return [c.get("Email") for c in self.emulator.records("Contact")]

    def writes(self) -> int:
        objects = self.emulator.counters()["objects"].values()
        return sum(o["creates"] + o["updates"] + o["deletes"] for o in objects)

    def opportunity_updates(self) -> int:
        return int(self.emulator.counters()["objects"]["Opportunity"]["updates"])

    def opportunity_reads(self) -> int:
        return int(self.emulator.counters()["objects"]["Opportunity"]["reads"])

    def reset_counters(self) -> None:
        self.emulator.reset_counters()

    def inject_throttling(self, count: int, retry_after: float) -> None:
        """503 SERVER_UNAVAILABLE with Retry-After (whole seconds, as the header carries them): how Salesforce
        answers when it sheds load (its request limit proper is the daily quota, a 403)."""
        self.emulator.inject_fault(status=503, count=count, retry_after=math.ceil(retry_after))

    def faults(self) -> int:
        return int(self.emulator.counters()["faults"])

    def seller(self) -> SalesforceSeller:
        return SalesforceSeller(self.emulator.url, lambda: self.emulator.issue_token(SELLER_USERNAME))

    def reader(self) -> SalesforceCrm:
        auth = StaticToken(self.emulator.issue_token(), self.emulator.url)
        return SalesforceCrm(SalesforceConfig(), auth)

    def secrets(self) -> list[str]:
        with self.emulator.lock:
            tokens = list(self.emulator.oauth.sessions)  # every access token issued in this test
        return [DEFAULT_CLIENT_SECRET, *tokens]
