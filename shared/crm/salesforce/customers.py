"""The Salesforce records around an opportunity: the customer's account, contacts, contact roles, currency.

Accounts and contacts are found before one is created, so a retried job finds what the first attempt
made instead of adding a duplicate; a create whose answer was lost is resolved by the same matching rule
before anything is sent again. The contacts of one opportunity are looked up together, with one query, and
then matched one by one against what it found and what the earlier ones created or changed, exactly as a
query per contact would have matched them. Contact roles are what ties contacts to an opportunity; they
are rewritten only from the first one that differs, from the roles read with the opportunity when the
caller has them. Whether the org is multi-currency, and its active currencies, are learned once per adapter
(:class:`Currencies`); :class:`Lookups` is how the mapping's ``lookup`` entries reach them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...domain.errors import OutcomeUnknown, TransientError, ValidationFailed
from ...domain.opportunity import Contact, Opportunity
from ...httpclient import create_once
from ..learned_once import LearnedOnce
from ..mapping import Entry
from .api import SalesforceApi, Subrequest, record_error
from .auth import SERVICE
from .mapping import (
    ACCOUNT_FIELDS,
    CONTACT_FIELDS,
    CURRENCY_FIELD,
    IN_LIST_SIZE,
    MISSING_LAST_NAME,
    ROLE_FIELDS,
    ROLE_ORDER,
    OrgCurrency,
    chunks,
    iso_code,
    soql,
    soql_string,
    street,
    unique_contacts,
)

log = logging.getLogger(__name__)

SYNC_ATTEMPTS = 3
# The lookup travels in the URL of a GET, which Salesforce refuses past 16 KB (see IN_LIST_SIZE): the contacts
# looked up together are split so that each query's WHERE clause stays well below that once URL-encoded.
CONTACT_LOOKUP_WHERE_CHARS = 4000
CONTACT_SELECT = ("Id", "AccountId", *(name for _, name in CONTACT_FIELDS))
# Queries in one composite call: Salesforce takes at most 5 query or sObject Collections subrequests in one.
MAX_COMPOSITE_QUERIES = 5


class Currencies:
    """The org's currencies. A multi-currency org has ``CurrencyIsoCode`` on its records and its active currencies
    in ``CurrencyType`` (cached, reloaded when a code is not known yet). A single-currency org has neither, and a
    query naming either fails: every amount is in the org's one currency, ``Organization.DefaultCurrencyIsoCode``.
    Which kind the org is comes from a describe of Opportunity, the first time it matters, once per adapter."""

    def __init__(self, api: SalesforceApi) -> None:
        self._api = api
        self._active: set[str] = set()
        # Workers share the adapter: the org is described once, not per thread.
        self._org: LearnedOnce[OrgCurrency] = LearnedOnce(self._learn)
        # Opportunity's field names (casefolded) from the same describe: the adapter leaves out the optional
        # mapped fields an org not yet upgraded by setup-crm lacks (shared.crm.org_columns).
        self.opportunity_fields: frozenset[str] = frozenset()

    def org(self) -> OrgCurrency:
        return self._org.get()

    def forget(self) -> None:
        """Describe the org again on next use (after it was found lacking a column the connector needs)."""
        self._org.forget()

    def _learn(self) -> OrgCurrency:
        describe = self._api.json(self._api.request("GET", "sobjects/Opportunity/describe"))
        names = {str(field.get("name") or "").casefold() for field in describe.get("fields") or []}
        self.opportunity_fields = frozenset(names)
        if CURRENCY_FIELD.casefold() in names:
            return OrgCurrency(multi=True)
        row = next(iter(self._api.query(soql("Organization", ["DefaultCurrencyIsoCode"]))), None) or {}
        currency = iso_code(row.get("DefaultCurrencyIsoCode"))
        if currency is None:
            log.warning("the single-currency Salesforce org names no currency; opportunities are read without one")
        return OrgCurrency(multi=False, currency=currency)

    def check(self, code: str) -> str:
        iso = code.strip().upper()
        org = self.org()
        if not org.multi:
            if org.currency is not None and iso != org.currency:
                raise ValidationFailed(
                    [
                        f"Currency '{iso}' cannot be stored: this Salesforce org has a single currency "
                        f"({org.currency}), which every amount is in; change the referral's currency or enable "
                        "multiple currencies under Setup > Company Settings > Company Information"
                    ]
                )
            return iso
        if iso not in self._active:
            self._load()  # a currency may have been activated since the cache was filled
        if iso not in self._active:
            raise ValidationFailed(
                [
                    f"Currency '{iso}' is not active in Salesforce; activate it under Setup > Company Settings > "
                    "Manage Currencies"
                ]
            )
        return iso

    def _load(self) -> None:
        rows = self._api.query(soql("CurrencyType", ["IsoCode"], "IsActive = true"))
        self._active = {str(row["IsoCode"]).upper() for row in rows}


class Lookups:
    """The mapping's ``lookup`` entries: the field holds the code itself (``CurrencyIsoCode``), which must be
    one of the org's active ``CurrencyType`` codes."""

    def __init__(self, currencies: Currencies) -> None:
        self._tables = {"CurrencyType": currencies}

    def select(self, entry: Entry) -> str:
        return entry.column

    def write(self, entry: Entry, code: str) -> dict[str, Any]:
        return {entry.column: self._tables[entry.target].check(code)}

    def read(self, entry: Entry, row: Mapping[str, Any]) -> str | None:
        code = row.get(entry.column)
        return str(code).upper() if code else None


@dataclass(frozen=True)
class CustomerPlan:
    """What a new opportunity's customer needs, found by the matching rules: the account and the contacts (primary
    first, once each) as record ids, or as ``@{ref.id}`` references to the creates in ``writes``, the composite
    subrequests that create or fill in what is missing."""

    account: str | None
    contacts: list[str]
    writes: list[Subrequest] = field(default_factory=list)


def reference(reference_id: str) -> str:
    """The id a composite subrequest answers with, used in a later subrequest of the same call."""
    return f"@{{{reference_id}.id}}"


class Customers:
    """Find-or-create of the customer's account and contacts."""

    def __init__(self, api: SalesforceApi) -> None:
        self._api = api

    def plan(self, opportunity: Opportunity, before: Subrequest | None = None) -> tuple[CustomerPlan, list[Any]]:
        """The account and contacts found as :meth:`ensure_account` and :meth:`ensure_contacts` find them, and the
        writes those would send, as subrequests of one composite call, unsent. The queries that find them (and
        ``before``, a query the caller needs answered too) go as ONE composite call, which the org's allocation
        counts once; the second value is ``before``'s records."""
        reads = [before] if before is not None else []
        account_id: str | None = None
        wanted: dict[str, Any] = {}
        if opportunity.customer_name:
            statement, wanted = self._account_lookup(opportunity)
            reads.append(Subrequest("GET", "query", "account", params={"q": statement}))
        contacts = unique_contacts(opportunity.customer_contacts, bool(opportunity.customer_name))
        # The account is not known when the contacts are asked for: a contact found by its name at an account named
        # like the customer's is kept only if that account is the one found (see _matches).
        groups = self._contact_queries(contacts, _at_named_account(opportunity))
        room = MAX_COMPOSITE_QUERIES - len(reads)
        reads += [Subrequest("GET", "query", f"contacts{n}", params={"q": q}) for n, q in enumerate(groups[:room])]
        answers = self._api.composite(reads, idempotent=True) if reads else {}
        records = {ref: self._api.related(answer.body) for ref, answer in answers.items()}
        known = self._oldest_first(
            [row for n in range(min(room, len(groups))) for row in records[f"contacts{n}"]]
            + [row for statement in groups[room:] for row in self._api.query(statement)]
        )
        writes: list[Subrequest] = []
        if opportunity.customer_name:
            row = next(iter(records["account"]), None)
            if row is None:
                body = {"Name": opportunity.customer_name, **{k: v for k, v in wanted.items() if v is not None}}
                writes.append(Subrequest("POST", "sobjects/Account", "account", body=body))
                account_id = reference("account")
            else:
                account_id = str(row["Id"])
                changes = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
                if changes:
                    writes.append(Subrequest("PATCH", f"sobjects/Account/{account_id}", "accountFill", body=changes))
        ids: list[str] = []
        for index, contact in enumerate(contacts):
            row, changes = _contact_write(contact, account_id, known)
            if row is None:
                writes.append(Subrequest("POST", "sobjects/Contact", f"contact{index}", body=changes))
                contact_id = reference(f"contact{index}")
                known.append({"Id": contact_id, **changes})  # found by the contacts after it, as a query would
            else:
                contact_id = str(row["Id"])
                if changes:
                    fill = Subrequest("PATCH", f"sobjects/Contact/{contact_id}", f"contactFill{index}", body=changes)
                    writes.append(fill)
                    row.update(changes)
            if contact_id not in ids:
                ids.append(contact_id)
        return CustomerPlan(account_id, ids, writes), records.get(before.reference_id, []) if before else []

    def _contact_queries(self, contacts: list[Contact], at_account: str | None) -> list[str]:
        """The queries finding every contact that any of ``contacts`` matches: by e-mail, or by name at an account
        named like the customer's (``at_account``; none without a customer)."""
        conditions = [
            f"(Email = {soql_string(c.email)})"
            if c.email
            else f"(FirstName = {soql_string(c.first_name)} AND LastName = {soql_string(c.last_name)} AND {at_account})"
            for c in contacts
            if c.email or at_account
        ]
        return [
            soql("Contact", [*CONTACT_SELECT, "CreatedDate"], " OR ".join(group), "CreatedDate, Id")
            for group in _grouped(conditions)
        ]

    def _account_lookup(self, opportunity: Opportunity) -> tuple[str, dict[str, Any]]:
        """The query that finds the customer's account, and the address fields it should hold."""
        address = opportunity.customer_address
        wanted = {name: getattr(address, attr) for attr, name in ACCOUNT_FIELDS}
        wanted["BillingStreet"] = street(address)
        statement = soql(
            "Account",
            ["Id", "BillingStreet", *(name for _, name in ACCOUNT_FIELDS)],
            f"Name = {soql_string(opportunity.customer_name)} "
            f"AND BillingPostalCode = {soql_string(address.postal_code)}",
            "CreatedDate, Id",
            limit=1,
        )
        return statement, wanted

    def ensure_account(self, opportunity: Opportunity) -> str | None:
        """Find the customer's account by name and postal code, else create it; fill in missing address parts."""
        if not opportunity.customer_name:
            return None
        statement, wanted = self._account_lookup(opportunity)
        row = self._first(statement)
        if row is None:
            body = {"Name": opportunity.customer_name, **{k: v for k, v in wanted.items() if v is not None}}
            return self._create("Account", body, statement)
        account_id = str(row["Id"])
        # Only values we have overwrite: a blank from Partner Center must not erase what sellers entered.
        changes = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
        if changes:
            self._api.request("PATCH", f"sobjects/Account/{account_id}", json=changes)
        return account_id

    def ensure_contacts(self, contacts: Iterable[Contact], account_id: str | None) -> list[str]:
        wanted = unique_contacts(contacts, bool(account_id))
        known = self._known_contacts(wanted, account_id)
        ids: list[str] = []
        for contact in wanted:
            contact_id = self._ensure_contact(contact, account_id, known)
            if contact_id not in ids:
                ids.append(contact_id)
        return ids

    def _known_contacts(self, contacts: list[Contact], account_id: str | None) -> list[dict[str, Any]]:
        """Every contact that any of ``contacts`` matches, oldest first as each one's own query would order them:
        one query for all of them (a few when their conditions would make the WHERE clause too long)."""
        conditions = [f"({_matching(contact, account_id)})" for contact in contacts]
        statements = [
            soql("Contact", [*CONTACT_SELECT, "CreatedDate"], " OR ".join(group), "CreatedDate, Id")
            for group in _grouped(conditions)
        ]
        return self._oldest_first([row for statement in statements for row in self._api.query(statement)])

    @staticmethod
    def _oldest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = {str(row["Id"]): row for row in rows}
        # CreatedDate is UTC in one format, so it sorts as text; ties go by Id, as ORDER BY CreatedDate, Id does.
        return sorted(found.values(), key=lambda row: (str(row.get("CreatedDate") or ""), str(row["Id"])))

    def _ensure_contact(self, contact: Contact, account_id: str | None, known: list[dict[str, Any]]) -> str:
        """The contact's id: the oldest of ``known`` it matches (updated with what it lacks), else a new contact.
        ``known`` follows the writes, so the next contact sees them as a query sent now would."""
        row, changes = _contact_write(contact, account_id, known)
        if row is None:
            statement = soql("Contact", CONTACT_SELECT, _matching(contact, account_id), "CreatedDate, Id", limit=1)
            contact_id = self._create("Contact", changes, statement)
            known.append({"Id": contact_id, **changes})  # the newest: last in CreatedDate order
            return contact_id
        contact_id = str(row["Id"])
        if changes:
            self._api.request("PATCH", f"sobjects/Contact/{contact_id}", json=changes)
            row.update(changes)
        return contact_id

    def _first(self, statement: str) -> dict[str, Any] | None:
        return next(iter(self._api.query(statement)), None)

    def _create(self, sobject: str, body: dict[str, Any], matching: str) -> str:
        """Create a record; Salesforce takes no client-chosen id, so a create whose answer was lost is
        resolved by the matching rule (``matching``, the query that found nothing before the create)."""

        def send() -> str:
            return str(self._api.json(self._api.request("POST", f"sobjects/{sobject}", json=body))["id"])

        def find() -> str | None:
            row = self._first(matching)
            return str(row["Id"]) if row is not None else None

        return create_once(send, find, f"a {sobject}")


def _grouped(conditions: list[str]) -> list[list[str]]:
    """``conditions`` in groups whose OR keeps a WHERE clause short enough for the URL of a GET."""
    groups: list[list[str]] = []
    for condition in conditions:
        if not groups or len(" OR ".join([*groups[-1], condition])) > CONTACT_LOOKUP_WHERE_CHARS:
            groups.append([])
        groups[-1].append(condition)
    return groups


def _at_named_account(opportunity: Opportunity) -> str | None:
    """The SOQL condition on a contact's account that the customer's account lookup would find it by."""
    if not opportunity.customer_name:
        return None
    return (
        f"Account.Name = {soql_string(opportunity.customer_name)} "
        f"AND Account.BillingPostalCode = {soql_string(opportunity.customer_address.postal_code)}"
    )


def _matching(contact: Contact, account_id: str | None) -> str:
    """How a contact is found again (SOQL): by its email, else by its name at the account."""
    if contact.email:
        return f"Email = {soql_string(contact.email)}"
    return (
        f"FirstName = {soql_string(contact.first_name)} AND LastName = {soql_string(contact.last_name)} "
        f"AND AccountId = {soql_string(account_id)}"
    )


def _same(stored: Any, value: str | None) -> bool:
    # SOQL compares text ignoring case, and "= null" finds only empty fields.
    if stored is None or value is None:
        return stored is None and value is None
    return str(stored).casefold() == value.casefold()


def _contact_write(
    contact: Contact, account_id: str | None, known: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The oldest of ``known`` that ``contact`` matches and what it lacks, or None and the new contact's fields.
    Only values we have are written: a blank from Partner Center must not erase what sellers entered."""
    wanted = {name: getattr(contact, attr) for attr, name in CONTACT_FIELDS}
    row = next((r for r in known if _matches(contact, account_id, r)), None)
    if row is None:
        body: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None}
        body.setdefault("LastName", MISSING_LAST_NAME)
        if account_id:
            body["AccountId"] = account_id
        return None, body
    changes: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
    if account_id and not row.get("AccountId"):
        changes["AccountId"] = account_id
    return row, changes


def _matches(contact: Contact, account_id: str | None, row: Mapping[str, Any]) -> bool:
    """Whether :func:`_matching`'s query would find ``row``."""
    if contact.email:
        return _same(row.get("Email"), contact.email)
    return (
        _same(row.get("FirstName"), contact.first_name)
        and _same(row.get("LastName"), contact.last_name)
        and row.get("AccountId") == account_id
    )


class ContactRoles:
    """The contacts of an opportunity, as ``OpportunityContactRole`` records (the first one primary)."""

    def __init__(self, api: SalesforceApi) -> None:
        self._api = api

    def read(self, opportunity_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Contact roles per opportunity: the primary first, then in the order they were added."""
        fields = ["OpportunityId", *ROLE_FIELDS]
        grouped: dict[str, list[dict[str, Any]]] = {}
        for chunk in chunks(opportunity_ids, IN_LIST_SIZE):
            ids = ", ".join(soql_string(i) for i in chunk)
            order = f"OpportunityId, {ROLE_ORDER}"
            for row in self._api.query(soql("OpportunityContactRole", fields, f"OpportunityId IN ({ids})", order)):
                grouped.setdefault(str(row["OpportunityId"]), []).append(row)
        return grouped

    def sync(self, crm_id: str, contact_ids: list[str], existing: list[dict[str, Any]] | None = None) -> bool:
        """Make the contact roles read back as ``contact_ids`` (the first one primary); True when anything may
        have been written.

        Roles read back primary first, then in the order they were added, so the roles from the first
        difference on are replaced. No contacts at all leaves the roles alone: a blank list from Partner
        Center must not erase the roles sellers added. ``existing`` are the roles as just read (with the
        opportunity, or none at all for an opportunity this job has just created), which saves reading them
        here. When the answer to creating roles is lost, the roles are read again and only what is still
        missing is created."""
        if not contact_ids:
            return False
        known, lost = existing, False
        for _ in range(SYNC_ATTEMPTS):
            try:
                return self._sync(crm_id, contact_ids, known) or lost
            except OutcomeUnknown as exc:
                log.info(
                    "the answer to creating contact roles was lost (%s); reading them again", exc.status or "network"
                )
                known, lost = None, True  # the lost request may have taken effect: only a fresh read tells
        raise TransientError(SERVICE, f"could not learn whether the contact roles of {crm_id} were created")

    def _sync(self, crm_id: str, contact_ids: list[str], existing: list[dict[str, Any]] | None) -> bool:
        if existing is None:
            existing = self.read([crm_id]).get(crm_id, [])
        keep = 0
        for index, role in enumerate(existing[: len(contact_ids)]):
            if str(role["ContactId"]) != contact_ids[index] or bool(role.get("IsPrimary")) != (index == 0):
                break
            keep = index + 1
        stale = [str(role["Id"]) for role in existing[keep:]]
        if stale:
            # A delete sent again after its answer was lost finds the role already gone: that is done too.
            _check([r for r in self._api.delete_many(stale) if not _already_deleted(r)])
        new = [
            {
                "attributes": {"type": "OpportunityContactRole"},
                "OpportunityId": crm_id,
                "ContactId": contact_id,
                "IsPrimary": index == 0,
            }
            for index, contact_id in enumerate(contact_ids)
            if index >= keep
        ]
        for start in range(0, len(new), 200):
            _check(self._api.collection("POST", "composite/sobjects", new[start : start + 200]))
        return bool(stale or new)


def _already_deleted(result: dict[str, Any]) -> bool:
    errors = result.get("errors") or []
    return (
        not result.get("success") and bool(errors) and all(e.get("statusCode") == "ENTITY_IS_DELETED" for e in errors)
    )


def _check(results: list[dict[str, Any]]) -> None:
    for result in results:
        if not result.get("success"):
            raise record_error((result.get("errors") or [{}])[0])
