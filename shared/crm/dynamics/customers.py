"""The Dataverse rows an opportunity points at: the customer's account, its contacts, the currency.

Accounts and contacts are found before one is created, so a retried job finds what the first attempt
made instead of adding a duplicate; each create is keyed by an id chosen here
(:meth:`~shared.crm.dynamics.webapi.DataverseRows.create`), so a create whose answer was lost is not
made twice either. Currencies are looked up by ISO code and cached per adapter; :class:`Lookups` is how the
mapping's ``lookup`` entries reach them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ...domain.errors import ValidationFailed
from ...domain.opportunity import Contact, Opportunity
from ..mapping import Entry
from .customer_match import CustomerReads, account_bind, contact_changes, contact_filter, contact_values
from .webapi import DataverseRows


class Currencies:
    """Transaction currency ids by ISO code and back, reloaded when a code or id is not known yet."""

    def __init__(self, web: DataverseRows) -> None:
        self._web = web
        self._ids: dict[str, str] = {}
        self._codes: dict[str, str] = {}
        self._lock = threading.Lock()

    def id_of(self, code: str) -> str:
        iso = code.strip().upper()
        if iso not in self._ids:
            self._load()  # a currency may have been enabled since the cache was filled
        currency_id = self._ids.get(iso)
        if currency_id is None:
            raise ValidationFailed(
                [
                    f"Currency '{iso}' is not enabled in Dynamics 365; add it under Settings > "
                    "Business Management > Currencies"
                ]
            )
        return currency_id

    def code_of(self, currency_id: str | None) -> str | None:
        if not currency_id:
            return None
        if currency_id not in self._codes:
            self._load()
        return self._codes.get(currency_id)

    def _load(self) -> None:
        rows = list(self._web.rows("transactioncurrencies", {"$select": "transactioncurrencyid,isocurrencycode"}))
        with self._lock:
            for row in rows:
                iso, currency_id = str(row["isocurrencycode"]).upper(), str(row["transactioncurrencyid"])
                self._ids[iso] = currency_id
                self._codes[currency_id] = iso


class Lookups:
    """The mapping's ``lookup`` entries: a code (the ISO currency code) kept in another table, written through
    the column's navigation property and read from its ``_<column>_value``."""

    def __init__(self, currencies: Currencies) -> None:
        self._tables = {"transactioncurrencies": currencies}

    def select(self, entry: Entry) -> str:
        return f"_{entry.column}_value"

    def write(self, entry: Entry, code: str) -> dict[str, Any]:
        return {f"{entry.column}@odata.bind": f"/{entry.target}({self._tables[entry.target].id_of(code)})"}

    def read(self, entry: Entry, row: Mapping[str, Any]) -> str | None:
        return self._tables[entry.target].code_of(row.get(f"_{entry.column}_value"))


class Customers(CustomerReads):
    """Find-or-create of the customer's account and contacts."""

    def ensure_account(self, opportunity: Opportunity) -> str | None:
        row = self.ensure_account_row(opportunity)
        return str(row["accountid"]) if row else None

    def ensure_account_row(self, opportunity: Opportunity) -> dict[str, Any] | None:
        """Find the customer's account by name and postal code, else create it; fill in missing address parts.
        The row as it now reads (the columns of ``account_select``), so nothing needs reading again."""
        if not opportunity.customer_name:
            return None
        row, changes = self._find_account(opportunity)
        if row is None:
            return self._web.create("accounts", self._new_account(opportunity), self._account_select)
        if changes:
            return self._web.patch(
                "accounts", str(row["accountid"]), changes, row.get("@odata.etag"), self._account_select
            )
        return row

    def ensure_contacts(self, contacts: Iterable[Contact], account_id: str | None) -> list[str]:
        return [str(row["contactid"]) for row in self.ensure_contact_rows(contacts, account_id)]

    def ensure_contact_rows(self, contacts: Iterable[Contact], account_id: str | None) -> list[dict[str, Any]]:
        """Each contact found or created once, as its row now reads (the columns of ``contact_select``)."""
        rows: dict[str, dict[str, Any]] = {}
        for contact in contacts:
            row = self._ensure_contact(contact, account_id)
            if row is not None:
                rows.setdefault(str(row["contactid"]), row)
        return list(rows.values())

    def _ensure_contact(self, contact: Contact, account_id: str | None) -> dict[str, Any] | None:
        odata_filter = contact_filter(contact, account_id)
        if odata_filter is None:
            return None
        row = self._web.first("contacts", self._contact_select, odata_filter)
        if row is None:
            body = contact_values(contact) | (account_bind(account_id) if account_id else {})
            return self._web.create("contacts", body, self._contact_select)
        changes = contact_changes(contact, row, account_id)
        if changes:
            return self._web.patch(
                "contacts", str(row["contactid"]), changes, row.get("@odata.etag"), self._contact_select
            )
        return row
