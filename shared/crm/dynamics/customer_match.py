"""What the customer's account and contacts should hold, and how a retry finds them again: one set of rules for
finding them one by one (:class:`~.customers.Customers`) and for finding them before a create
(:class:`~.customer_rows.CustomerFinder`)."""

from __future__ import annotations

from typing import Any

from ...domain.opportunity import Contact, Opportunity
from .mapping import ACCOUNT_ADDRESS, CONTACT_COLUMNS, DataverseMapping, account_select, contact_select, odata_string
from .webapi import DataverseRows

ACCOUNT_BIND = "parentcustomerid_account@odata.bind"  # a contact's company


def account_bind(account_id: str) -> dict[str, str]:
    return {ACCOUNT_BIND: f"/accounts({account_id})"}


def account_filter(opportunity: Opportunity) -> str:
    """The account's matching rule: its name and postal code."""
    return (
        f"name eq {odata_string(opportunity.customer_name)} and "
        f"address1_postalcode eq {odata_string(opportunity.customer_address.postal_code)}"
    )


def account_address(opportunity: Opportunity, country_column: str) -> dict[str, Any]:
    """The account's address columns as Partner Center gives them (None where it gives nothing)."""
    address = opportunity.customer_address
    wanted = {col: getattr(address, attr) for attr, col in ACCOUNT_ADDRESS}
    wanted[country_column] = address.country
    return wanted


def contact_filter(contact: Contact, account_id: str | None) -> str | None:
    """A contact's matching rule: its e-mail, else its name at the account; None when it has neither (a retry could
    not find it again, so it is skipped rather than duplicated)."""
    if contact.email:
        return f"emailaddress1 eq {odata_string(contact.email)}"
    if contact.last_name and account_id:
        return (
            f"firstname eq {odata_string(contact.first_name)} and lastname eq "
            f"{odata_string(contact.last_name)} and _parentcustomerid_value eq {account_id}"
        )
    return None


def contact_values(contact: Contact) -> dict[str, Any]:
    """The contact's columns that have a value."""
    values = {col: getattr(contact, attr) for attr, col in CONTACT_COLUMNS}
    return {k: v for k, v in values.items() if v is not None}


def filled_in(wanted: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The columns of ``row`` to change. Only values we have overwrite: a blank from Partner Center must not erase
    what sellers entered."""
    return {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}


def contact_changes(contact: Contact, row: dict[str, Any], account_id: str | None) -> dict[str, Any]:
    """What a found contact lacks: the values it differs in, and the account when it has none."""
    changes = filled_in(contact_values(contact), row)
    if account_id and not row.get("_parentcustomerid_value"):
        changes |= account_bind(account_id)
    return changes


class CustomerReads:
    """The reads that finding the customer's rows needs, one by one or before a create: the columns selected, and
    the account found by its matching rule."""

    def __init__(self, web: DataverseRows, mapping: DataverseMapping) -> None:
        self._web = web
        self._country_column = mapping.customer.account_country
        self._account_select = account_select(mapping)
        self._contact_select = contact_select()

    def _find_account(self, opportunity: Opportunity) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The account as it reads and the address parts it lacks; (None, {}) when there is none."""
        if not opportunity.customer_name:
            return None, {}
        row = self._web.first("accounts", self._account_select, account_filter(opportunity))
        if row is None:
            return None, {}
        return row, filled_in(account_address(opportunity, self._country_column), row)

    def _new_account(self, opportunity: Opportunity) -> dict[str, Any]:
        """The columns a new account is created with."""
        address = account_address(opportunity, self._country_column)
        return {"name": opportunity.customer_name, **{k: v for k, v in address.items() if v is not None}}
