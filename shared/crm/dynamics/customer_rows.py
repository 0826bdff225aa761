"""The customer's account and contacts for a new opportunity: found in two reads, created with as few writes.

The account is found by name and postal code and every contact by its matching rule (e-mail, or the name at a
known account), all contacts in one read. What is missing is created together: a new account carries its new
contacts nested in one deep insert; a new primary contact of an existing account is nested in the opportunity's
own create (:meth:`CustomerRows.nested_primary`). Every created row gets an id chosen here, and a deep insert is
all or nothing, so a request sent again after a lost answer either finds its rows (412 on the chosen id) or
creates them once; a later job finds them by the same matching rules.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ...domain.errors import PreconditionFailed
from ...domain.opportunity import Contact, Opportunity
from .customer_match import CustomerReads, account_bind, contact_changes, contact_filter, contact_values
from .mapping import CONTACT_COLUMNS

# The collection-valued navigation property from an account to the contacts whose company it is.
ACCOUNT_CONTACTS = "contact_customer_accounts"
# Contacts looked up per read: keeps the URL well under the service's limit however large the customer team.
CLAUSES_PER_READ = 20


@dataclass
class CustomerRows:
    """The rows an opportunity create binds to, each as a read would give it; ``nested_primary`` is the body of a
    primary contact that the opportunity's create makes (None when the primary contact exists already)."""

    account: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] = field(default_factory=list)
    nested_primary: dict[str, Any] | None = None

    def binds(self) -> dict[str, Any]:
        """The opportunity's customer and primary contact, bound or nested."""
        body: dict[str, Any] = {}
        if self.account is not None:
            body["customerid_account@odata.bind"] = f"/accounts({self.account['accountid']})"
        if self.nested_primary is not None:
            body["parentcontactid"] = self.nested_primary
        elif self.contacts:
            body["parentcontactid@odata.bind"] = f"/contacts({self.contacts[0]['contactid']})"
        return body


@dataclass
class _Wanted:
    """A contact of the referral that a retry can find again, and the row found for it (None: to be created)."""

    contact: Contact
    key: tuple[str | None, ...]
    row: dict[str, Any] | None = None
    new_id: str = field(default_factory=lambda: str(uuid.uuid4()))  # the id it is created under, if it must be

    @property
    def row_body(self) -> dict[str, Any]:
        """The body that creates it."""
        return {"contactid": self.new_id, **contact_values(self.contact)}


class CustomerFinder(CustomerReads):
    """Find-or-create of the customer's rows for a new opportunity."""

    def prepare(self, opportunity: Opportunity) -> CustomerRows:
        account, address_changes = self._find_account(opportunity)
        new_account = account is None and bool(opportunity.customer_name)
        account_id = str(account["accountid"]) if account else None
        wanted = self._find_contacts(opportunity.customer_contacts, account_id, new_account)
        missing = _distinct([item for item in wanted if item.row is None])
        if new_account:
            account = self._create_account(opportunity, missing)
            account_id = str(account["accountid"])
        elif account is not None and address_changes:
            account = self._web.patch(
                "accounts", str(account["accountid"]), address_changes, account.get("@odata.etag"), self._account_select
            )
        rows: dict[tuple[str | None, ...], dict[str, Any]] = {}
        nested: dict[str, Any] | None = None
        for item in wanted:
            if item.key in rows:
                continue
            if item.row is not None:
                rows[item.key] = self._update_contact(item, account_id)
            elif new_account:
                rows[item.key] = _as_read(item.row_body, account_id)  # created nested in the account
            elif not rows:
                # The primary contact is created with the opportunity, nested in its create.
                nested = item.row_body | (account_bind(account_id) if account_id else {})
                rows[item.key] = _as_read(item.row_body, account_id)
            else:
                body = contact_values(item.contact) | (account_bind(account_id) if account_id else {})
                rows[item.key] = self._web.create("contacts", body, self._contact_select)
        contacts = list({str(row["contactid"]): row for row in rows.values()}.values())
        return CustomerRows(account, contacts, nested)

    # -- the account ----------------------------------------------------------------------------------------------
    def _create_account(self, opportunity: Opportunity, contacts: list[_Wanted]) -> dict[str, Any]:
        """One deep insert: the account with its new contacts. Sent again after a lost answer it fails on the
        chosen id (412) when the first one took effect; the account read under that id is then the answer."""
        account_id = str(uuid.uuid4())
        body: dict[str, Any] = {"accountid": account_id, **self._new_account(opportunity)}
        if contacts:
            body[ACCOUNT_CONTACTS] = [item.row_body for item in contacts]
        try:
            response = self._web.api.request(
                "POST",
                "accounts",
                params={"$select": self._account_select},
                json=body,
                headers={"Prefer": "return=representation"},
                idempotent=True,
            )
        except PreconditionFailed:
            existing = self._web.get(f"accounts({account_id})", {"$select": self._account_select}, missing_ok=True)
            if existing is None:
                raise
            return existing
        created: dict[str, Any] = response.json(parse_float=Decimal)
        return created

    # -- contacts -------------------------------------------------------------------------------------------------
    def _find_contacts(self, contacts: tuple[Contact, ...], account_id: str | None, new_account: bool) -> list[_Wanted]:
        """Every contact a retry could find again, each with the oldest row its matching rule finds, in one read.
        A contact with neither an e-mail nor a name at a known (or new) account is skipped, not duplicated."""
        wanted: list[_Wanted] = []
        clauses: list[str] = []
        for contact in contacts:
            if contact.email:
                wanted.append(_Wanted(contact, ("email", contact.email.casefold())))
                clauses.append(str(contact_filter(contact, account_id)))
            elif contact.last_name and (account_id or new_account):
                key = ("name", _fold(contact.first_name), _fold(contact.last_name))
                wanted.append(_Wanted(contact, key))
                if account_id:
                    clauses.append(f"({contact_filter(contact, account_id)})")
        distinct = list(dict.fromkeys(clauses))
        found: list[dict[str, Any]] = []
        for start in range(0, len(distinct), CLAUSES_PER_READ):
            params = {
                "$select": f"{self._contact_select},createdon",
                "$filter": " or ".join(distinct[start : start + CLAUSES_PER_READ]),
                "$orderby": "createdon asc",
            }
            found.extend(self._web.rows("contacts", params))
        if found:
            found.sort(key=lambda row: str(row.get("createdon") or ""))  # the oldest match wins, as one read each
            for item in wanted:
                item.row = next((row for row in found if _matches(item, row, account_id)), None)
        return wanted

    def _update_contact(self, item: _Wanted, account_id: str | None) -> dict[str, Any]:
        row = item.row
        assert row is not None
        changes = contact_changes(item.contact, row, account_id)
        if not changes:
            return row
        return self._web.patch("contacts", str(row["contactid"]), changes, row.get("@odata.etag"), self._contact_select)


def _fold(value: str | None) -> str | None:
    return value.casefold() if value is not None else None


def _matches(item: _Wanted, row: dict[str, Any], account_id: str | None) -> bool:
    """Whether ``row`` is one the item's filter clause selected (Dataverse compares strings case-insensitively)."""
    if item.key[0] == "email":
        return _fold(row.get("emailaddress1")) == item.key[1]
    return (
        (_fold(row.get("firstname")), _fold(row.get("lastname"))) == item.key[1:]
        and account_id is not None
        and row.get("_parentcustomerid_value") == account_id
    )


def _distinct(items: list[_Wanted]) -> list[_Wanted]:
    """The first item of each matching key (two entries for one e-mail are one contact)."""
    first: dict[tuple[str | None, ...], _Wanted] = {}
    for item in items:
        first.setdefault(item.key, item)
    return list(first.values())


def _as_read(body: dict[str, Any], account_id: str | None) -> dict[str, Any]:
    """A contact created from ``body`` as a read of ``contact_select`` gives it."""
    return {
        "contactid": body["contactid"],
        "_parentcustomerid_value": account_id,
        **{col: body.get(col) for _, col in CONTACT_COLUMNS},
    }
