"""The customer's account and contacts for a new opportunity: found in one read when the customer is known,
created in the opportunity's own create when it is not.

The account is found by name and postal code, with its contacts that the referral names expanded in the same read
(``$expand`` of the account's contacts, filtered by their matching rules). A contact is matched by its e-mail,
else by its name at the account; an e-mail not found at the account (or every e-mail, when the account is new)
is looked up across all contacts in one more read, as before. What is missing is created in the opportunity's
create, a deep insert: a new account (with its new contacts nested in it) and a new primary contact are nested in
the opportunity itself, so a new customer costs no write of its own. Every created row gets an id chosen here,
and a deep insert is all or nothing: a request sent again after a lost answer either finds its rows (412) or
creates them once; a later job finds them by the same matching rules.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ...domain.opportunity import Contact, Opportunity
from .customer_match import (
    CustomerReads,
    account_address,
    account_bind,
    account_filter,
    contact_changes,
    contact_filter,
    contact_values,
    filled_in,
)
from .mapping import CONTACT_COLUMNS, odata_string

# The collection-valued navigation property from an account to the contacts whose company it is.
ACCOUNT_CONTACTS = "contact_customer_accounts"
# The single-valued navigation property from a contact to its company (an account).
CONTACT_ACCOUNT = "parentcustomerid_account"
# Contacts looked up per read: keeps the URL well under the service's limit however large the customer team.
CLAUSES_PER_READ = 20


@dataclass
class CustomerRows:
    """The rows an opportunity create binds to, each as a read would give it. ``new_account`` is the body of an
    account the create makes (its new contacts nested in it), ``nested_primary`` that of a primary contact it
    makes; ``after_create`` the found contacts to fill in once the new account exists."""

    account: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] = field(default_factory=list)
    nested_primary: dict[str, Any] | None = None
    new_account: dict[str, Any] | None = None
    after_create: list[_Wanted] = field(default_factory=list)

    def binds(self) -> dict[str, Any]:
        """The opportunity's customer and primary contact, bound or nested."""
        body: dict[str, Any] = {}
        if self.new_account is not None and self.nested_primary is not None:
            # The new primary contact carries the new account: nested rows are created before the row they are
            # nested in, so the account exists when the opportunity is made and bound to it.
            body["parentcontactid"] = {**self.nested_primary, CONTACT_ACCOUNT: self.new_account}
            body["customerid_account@odata.bind"] = f"/accounts({self.new_account['accountid']})"
            return body
        if self.new_account is not None:
            body["customerid_account"] = self.new_account
        elif self.account is not None:
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
        """The customer's rows found (one read for a known customer, two for a new one or a new e-mail), and what
        the opportunity's create must make. Writes only what a found row lacks, and a non-primary new contact of
        a known account."""
        wanted = _wanted(opportunity.customer_contacts, bool(opportunity.customer_name))
        account, covered = self._account_with_contacts(opportunity, wanted)
        new_account = account is None and bool(opportunity.customer_name)
        account_id = str(account["accountid"]) if account else None
        # An e-mail is matched across all contacts; a name only at the account, which the read above covered.
        covered_ids = {id(item) for item in covered}
        self._look_up(
            [item for item in wanted if item.row is None and (item.key[0] == "email" or id(item) not in covered_ids)],
            account_id,
        )
        rows = CustomerRows(account)
        if new_account:
            account_id = str(uuid.uuid4())
            rows.new_account = {"accountid": account_id, **self._new_account(opportunity)}
            rows.account = self._as_read_account(rows.new_account)
        elif account is not None:
            changes = filled_in(account_address(opportunity, self._country_column), account)
            if changes:
                rows.account = self._web.patch(
                    "accounts", account_id or "", changes, account.get("@odata.etag"), self._account_select
                )
        made: dict[tuple[str | None, ...], dict[str, Any]] = {}
        children: list[dict[str, Any]] = []
        for item in wanted:
            if item.key in made:
                continue
            if item.row is not None:
                if new_account and contact_changes(item.contact, item.row, account_id):
                    rows.after_create.append(item)  # the account it is bound to does not exist yet
                    made[item.key] = item.row
                else:
                    made[item.key] = self._update_contact(item, account_id)
            elif not made:
                # The primary contact is created with the opportunity, nested in its create.
                bind = account_bind(account_id) if account_id and not new_account else {}
                rows.nested_primary = item.row_body | bind
                made[item.key] = _as_read(item.row_body, account_id)
            elif new_account:
                children.append(item.row_body)  # created nested in the new account
                made[item.key] = _as_read(item.row_body, account_id)
            else:
                body = contact_values(item.contact) | (account_bind(account_id) if account_id else {})
                made[item.key] = self._web.create("contacts", body, self._contact_select)
        if rows.new_account is not None and children:
            rows.new_account[ACCOUNT_CONTACTS] = children
        rows.contacts = list({str(row["contactid"]): row for row in made.values()}.values())
        return rows

    def finish(self, rows: CustomerRows) -> CustomerRows:
        """Fill in the found contacts that waited for the new account (created with the opportunity)."""
        if not rows.after_create:
            return rows
        account_id = str(rows.account["accountid"]) if rows.account else None
        updated = {str(item.row["contactid"]): self._update_contact(item, account_id) for item in rows.after_create}
        rows.contacts = [updated.get(str(row["contactid"]), row) for row in rows.contacts]
        rows.after_create = []
        return rows

    # -- the account ----------------------------------------------------------------------------------------------
    def _account_with_contacts(
        self, opportunity: Opportunity, wanted: list[_Wanted]
    ) -> tuple[dict[str, Any] | None, list[_Wanted]]:
        """The account (oldest match) with the contacts its filter found at it matched to ``wanted``, in one read;
        and the items whose rule that read covered. (None, []) when there is no account to find."""
        if not opportunity.customer_name:
            return None, []
        clauses: dict[str, list[_Wanted]] = {}
        for item in wanted:
            clause = _at_account(item.contact)
            if clause in clauses or len(clauses) < CLAUSES_PER_READ:
                clauses.setdefault(clause, []).append(item)
        params = {"$select": self._account_select, "$filter": account_filter(opportunity), "$orderby": "createdon asc"}
        if clauses:
            nested = [
                f"$select={self._contact_select},createdon",
                f"$filter={' or '.join(clauses)}",
                "$orderby=createdon asc",
            ]
            params["$expand"] = f"{ACCOUNT_CONTACTS}({';'.join(nested)})"
        account = next(iter(self._web.rows("accounts", params, page_size=1)), None)
        if account is None:
            return None, []
        found = account.pop(ACCOUNT_CONTACTS, None) or []
        account_id = str(account["accountid"])
        covered = [item for items in clauses.values() for item in items]
        for item in covered:
            item.row = next((row for row in found if _matches(item, row, account_id)), None)
        return account, covered

    def _as_read_account(self, body: dict[str, Any]) -> dict[str, Any]:
        """An account created from ``body`` as a read of ``account_select`` gives it."""
        return {column: body.get(column) for column in self._account_select.split(",")}

    # -- contacts -------------------------------------------------------------------------------------------------
    def _look_up(self, items: list[_Wanted], account_id: str | None) -> None:
        """Each item's oldest row by its matching rule, for all of them in one read (a few for a large team)."""
        clauses = list(
            dict.fromkeys(f"({rule})" for item in items if (rule := contact_filter(item.contact, account_id)))
        )
        found: list[dict[str, Any]] = []
        for start in range(0, len(clauses), CLAUSES_PER_READ):
            params = {
                "$select": f"{self._contact_select},createdon",
                "$filter": " or ".join(clauses[start : start + CLAUSES_PER_READ]),
                "$orderby": "createdon asc",
            }
            found.extend(self._web.rows("contacts", params))
        if found:
            found.sort(key=lambda row: str(row.get("createdon") or ""))  # the oldest match wins, as one read each
            for item in items:
                item.row = next((row for row in found if _matches(item, row, account_id)), None)

    def _update_contact(self, item: _Wanted, account_id: str | None) -> dict[str, Any]:
        row = item.row
        assert row is not None
        changes = contact_changes(item.contact, row, account_id)
        if not changes:
            return row
        return self._web.patch("contacts", str(row["contactid"]), changes, row.get("@odata.etag"), self._contact_select)


def _wanted(contacts: tuple[Contact, ...], with_account: bool) -> list[_Wanted]:
    """Every contact a retry could find again: one with an e-mail, or with a name at the customer's account. A
    contact with neither is skipped, not duplicated."""
    wanted: list[_Wanted] = []
    for contact in contacts:
        if contact.email:
            wanted.append(_Wanted(contact, ("email", contact.email.casefold())))
        elif contact.last_name and with_account:
            wanted.append(_Wanted(contact, ("name", _fold(contact.first_name), _fold(contact.last_name))))
    return wanted


def _at_account(contact: Contact) -> str:
    """The contact's matching rule among an account's own contacts (the account is implied by the expand)."""
    if contact.email:
        return f"(emailaddress1 eq {odata_string(contact.email)})"
    return f"(firstname eq {odata_string(contact.first_name)} and lastname eq {odata_string(contact.last_name)})"


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


def _as_read(body: dict[str, Any], account_id: str | None) -> dict[str, Any]:
    """A contact created from ``body`` as a read of ``contact_select`` gives it."""
    return {
        "contactid": body["contactid"],
        "_parentcustomerid_value": account_id,
        **{col: body.get(col) for _, col in CONTACT_COLUMNS},
    }
