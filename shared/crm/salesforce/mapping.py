"""How an :class:`~shared.domain.opportunity.Opportunity` maps onto Salesforce records, without any I/O.

The mapping itself is data (``mapping.toml`` next to this module, read through :mod:`shared.crm.mapping`);
this module adds what is particular to Salesforce: the stage table (referral status <-> StageName, with the
org's IsClosed / IsWon), SOQL and HTTP date literals, record id and referral-id checks, the one multi-line
street, which contacts can be found again, the assembly of an opportunity from a record, and what a
single-currency org (no ``CurrencyIsoCode``, every amount in the org's currency) makes of the currency.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from ...domain.errors import ValidationFailed
from ...domain.opportunity import WRITABLE_FIELDS, Contact, CustomerAddress, Opportunity
from ..mapping import (
    CUSTOMER_FIELDS,
    OPEN_SUBSTATUS,
    STATUS_FIELDS,
    CrmMapping,
    CrmTerms,
    Loaded,
    Override,
    Path_,
    Strict,
    column_settings,
    load,
    parse_status_key,
    split_list,
)

DEFAULT_FILE = Path(__file__).with_name("mapping.toml")

# Salesforce requires Contact.LastName; web-to-lead uses the same placeholder when a form has none.
MISSING_LAST_NAME = "[not provided]"
REFERRAL_ID_MAX_LENGTH = 100  # Text(100) External ID
# SOQL travels in the URL of a GET; Salesforce refuses URIs over 16 KB, so IN lists are split.
IN_LIST_SIZE = 100
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
OPPORTUNITY_PREFIX = "006"
# The currency of a record in a multi-currency org; single-currency orgs do not have the field.
CURRENCY_FIELD = "CurrencyIsoCode"

ACCOUNT_FIELDS = (
    ("city", "BillingCity"),
    ("state", "BillingState"),
    ("postal_code", "BillingPostalCode"),
    ("country", "BillingCountry"),
)
CONTACT_FIELDS = (
    ("first_name", "FirstName"),
    ("last_name", "LastName"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("title", "Title"),
)
PLAIN_FIELDS = WRITABLE_FIELDS - CUSTOMER_FIELDS - STATUS_FIELDS - {"customer_contacts"}


class SalesforceStatus(Strict):
    """Referral status <-> StageName: one table, read back the other way with the org's IsClosed / IsWon."""

    stages: dict[str, str]  # "Status" or "Status/Substatus" -> StageName

    def stage_for(self, status: str | None, substatus: str | None) -> str | None:
        """The stage a referral status maps to, or None when the status says nothing."""
        if status is None:
            return None
        return self.stages.get(f"{status}/{substatus}") or self.stages.get(status)

    def flags(self, stage: str) -> tuple[bool, bool]:
        """(closed, won) of a stage the table writes, as the org's stage settings make it read back."""
        closed = any(parse_status_key(key)[0] == "Closed" for key, name in self.stages.items() if name == stage)
        return closed, closed and self.stages.get("Closed/Won") == stage

    def status_of(self, stage: str | None, is_closed: bool, is_won: bool, reason: str | None = None) -> tuple[str, str]:
        """(status, substatus) read from an opportunity; IsClosed / IsWon come from the org's stage settings. A closed
        stage of its own for Declined or Expired reads as that; the lost stage reads as Declined when it is also the
        decline stage and a decline ``reason`` is set."""
        if is_closed:
            if is_won:
                return ("Closed", "Won")
            lost = self.stage_for("Closed", "Lost")
            for substatus in ("Declined", "Expired"):
                if stage == self.stage_for("Closed", substatus) and stage != lost:
                    return ("Closed", substatus)
            declines_here = stage == lost == self.stage_for("Closed", "Declined")
            return ("Closed", "Declined") if declines_here and reason else ("Closed", "Lost")
        for key, name in self.stages.items():
            status, substatus = parse_status_key(key)
            if name == stage and status in OPEN_SUBSTATUS:
                return status, substatus or OPEN_SUBSTATUS[status]
        return ("Active", "Accepted")

    def problems(self) -> list[tuple[Path_, str]]:
        found: list[tuple[Path_, str]] = []
        open_stages, closed_stages = set(), set()
        for key, stage in self.stages.items():
            try:
                status, _ = parse_status_key(key)
            except ValueError as exc:
                found.append((("status", "stages", key), str(exc)))
                continue
            if not stage:
                found.append((("status", "stages", key), "needs a stage name"))
            (closed_stages if status == "Closed" else open_stages).add(stage)
        for stage in sorted(open_stages & closed_stages):
            found.append((("status", "stages"), f"'{stage}' cannot be written both for an open and a closed status"))
        for status in ("New", "Active", "Closed"):
            if status not in self.stages:
                found.append((("status", "stages"), f"needs a stage for {status}"))
        return found


class SalesforceMapping(CrmMapping):
    status: SalesforceStatus

    terms: ClassVar[CrmTerms] = CrmTerms(
        product="Salesforce", choice_word="picklist", choice_value_type=str, lookup_targets=("CurrencyType",)
    )
    settings: ClassVar[Mapping[str, Path_]] = {
        **column_settings("SALESFORCE"),
        "SALESFORCE_CURRENCY_FIELD": ("fields", "currency", "column"),
        "SALESFORCE_HELP_PICKLIST_VALUES": ("fields", "help_code", "values"),
        "SALESFORCE_ON_HOLD_STAGE": ("status", "stages", "New"),
        "SALESFORCE_ACTIVE_STAGE": ("status", "stages", "Active"),
        "SALESFORCE_WON_STAGE": ("status", "stages", "Closed/Won"),
        "SALESFORCE_LOST_STAGE": ("status", "stages", "Closed"),
    }

    def problems(self) -> list[tuple[Path_, str]]:
        return [*super().problems(), *self.status.problems()]


def load_mapping(file: Path | None = None, overrides: Sequence[Override] = ()) -> Loaded[SalesforceMapping]:
    return load(SalesforceMapping, DEFAULT_FILE, file, overrides)


@cache
def default_mapping() -> SalesforceMapping:
    """The shipped mapping, unchanged."""
    return load_mapping().mapping


@dataclass(frozen=True)
class OrgCurrency:
    """How the org keeps currencies: ``multi`` (each record has ``CurrencyIsoCode``, the active ones are
    ``CurrencyType`` rows) or a single currency, ``currency``, that every amount is in (None when the org does not
    say which)."""

    multi: bool
    currency: str | None = None


MULTI_CURRENCY = OrgCurrency(multi=True)


def for_org(mapping: SalesforceMapping, org: OrgCurrency) -> SalesforceMapping:
    """The mapping as the org can use it. In a single-currency org every amount is in the org's currency and
    ``CurrencyIsoCode`` does not exist, so no field holds the currency: the entry is left without a column and
    the adapter reads the org's currency instead (:func:`stored_form` predicts the same)."""
    entry = mapping.fields["currency"]
    if org.multi or not entry.column:
        return mapping
    fields = {**mapping.fields, "currency": entry.model_copy(update={"column": ""})}
    return mapping.model_copy(update={"fields": fields})


# The fields every opportunity read selects besides the mapped ones: status, the account's name and address.
OPPORTUNITY_FIELDS = (
    "Id",
    "StageName",
    "IsClosed",
    "IsWon",
    "AccountId",
    "Account.Name",
    "Account.BillingStreet",
    *(f"Account.{name}" for _, name in ACCOUNT_FIELDS),
    "SystemModstamp",
)
# An opportunity's contacts are its OpportunityContactRole records, read primary first, then in the order they
# were added: the order the roles are written in, so that a list read back compares equal to the list written.
ROLE_FIELDS = ("Id", "ContactId", "IsPrimary", *(f"Contact.{name}" for _, name in CONTACT_FIELDS))
ROLE_ORDER = "IsPrimary DESC, CreatedDate, Id"
# Opportunity's child relationship to its contact roles: a subquery on it reads them with the opportunity.
ROLES_RELATIONSHIP = "OpportunityContactRoles"


# -- SOQL and HTTP literals -----------------------------------------------------------------------------------------
def soql_string(value: str | None) -> str:
    if value is None:
        return "null"
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{escaped}'"


def soql(
    sobject: str, fields: Iterable[str], where: str | None = None, order_by: str | None = None, limit: int | None = None
) -> str:
    """A SOQL statement. Values inside ``where`` must come from :func:`soql_string` / :func:`soql_datetime`,
    which escape them; field and object names come from configuration, never from record data."""
    parts = ["SELECT", ", ".join(fields), "FROM", sobject]
    if where:
        parts += ["WHERE", where]
    if order_by:
        parts += ["ORDER BY", order_by]
    if limit is not None:
        parts += ["LIMIT", str(limit)]
    return " ".join(parts)


def subquery(relationship: str, fields: Iterable[str], order_by: str | None = None) -> str:
    """A parent-to-child subquery for a SELECT list: the child records of each row, through ``relationship``."""
    return f"({soql(relationship, fields, None, order_by)})"


def soql_datetime(moment: datetime) -> str:
    # Whole seconds, rounded down, unquoted: '>=' on the floor never skips a row of the same second.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def http_date(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return format_datetime(aware.astimezone(UTC).replace(microsecond=0), usegmt=True)


def parse_modstamp(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value)
    for pattern in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(text, pattern).astimezone(UTC)
        except ValueError:
            continue
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# -- addresses and contacts -----------------------------------------------------------------------------------------
def street(address: CustomerAddress) -> str | None:
    """Salesforce has one multi-line street field for both address lines."""
    return "\n".join(part for part in (address.line1, address.line2) if part) or None


def split_street(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    first, _, rest = value.partition("\n")
    return first or None, rest or None


def contact_key(contact: Contact, has_account: bool) -> str | None:
    """How a contact is found again: its email, else its name at the account; None when neither works."""
    if contact.email:
        return "email:" + contact.email.casefold()
    if contact.last_name and has_account:
        return f"name:{(contact.first_name or '').casefold()}|{contact.last_name.casefold()}"
    return None


def unique_contacts(contacts: Iterable[Contact], has_account: bool) -> list[Contact]:
    """Contacts that can be stored, first occurrence of each; without email or name-at-account a retry
    could not find them again, so they are skipped rather than duplicated."""
    kept: dict[str, Contact] = {}
    for contact in contacts:
        key = contact_key(contact, has_account)
        if key is not None and key not in kept:
            kept[key] = contact
    return list(kept.values())


# -- ids and validation ---------------------------------------------------------------------------------------------
def is_record_id(value: str | None, prefix: str = "") -> bool:
    return bool(value) and _ID_RE.fullmatch(str(value)) is not None and str(value).startswith(prefix)


def check_referral_id(referral_id: str | None) -> str:
    if not referral_id:
        raise ValidationFailed(["A referral id is required to key the Salesforce opportunity"])
    if len(referral_id) > REFERRAL_ID_MAX_LENGTH:
        raise ValidationFailed([f"Referral id '{referral_id}' is longer than {REFERRAL_ID_MAX_LENGTH} characters"])
    return referral_id


def iso_code(code: str | None) -> str | None:
    return code.strip().upper() if code else None


# -- records <-> opportunities --------------------------------------------------------------------------------------
def record_to_opportunity(
    row: dict[str, Any], values: dict[str, Any], roles: list[dict[str, Any]], mapping: SalesforceMapping
) -> Opportunity:
    """The opportunity a record reads as: ``values`` are its mapped fields (from the mapping's converters), with
    its account and the contacts of its contact roles in the order given."""
    account = row.get("Account") or None
    status, substatus = mapping.status.status_of(
        row.get("StageName"), bool(row.get("IsClosed")), bool(row.get("IsWon")), values.get("status_reason")
    )
    contacts = []
    for role in roles:
        person = role.get("Contact") or {}
        contact = {attr: person.get(name) for attr, name in CONTACT_FIELDS}
        if contact["last_name"] == MISSING_LAST_NAME:
            contact["last_name"] = None
        contacts.append(Contact(**contact))
    address = CustomerAddress()
    if account:
        line1, line2 = split_street(account.get("BillingStreet"))
        address = CustomerAddress(
            line1=line1, line2=line2, **{attr: account.get(name) for attr, name in ACCOUNT_FIELDS}
        )
    modstamp = row.get("SystemModstamp")
    return Opportunity(
        **values,
        crm_id=row.get("Id"),
        customer_name=account.get("Name") if account else None,
        customer_address=address,
        customer_contacts=tuple(contacts),
        status=status,
        substatus=substatus,
        etag=str(modstamp) if modstamp else None,
        modified_at=parse_modstamp(modstamp),
    )


def stored_form(mapping: SalesforceMapping, opportunity: Opportunity, org: OrgCurrency = MULTI_CURRENCY) -> Opportunity:
    """What reading the opportunity back returns: the status as its stage reads back, one multi-line
    street, products re-split, only contacts that can be stored (once each), no address without an
    account, and in a single-currency org the org's currency where the opportunity has none."""
    o = for_org(mapping, org).stored(opportunity)
    update: dict[str, Any] = {
        "solution_ids": split_list(", ".join(o.solution_ids)),
        "currency": iso_code(o.currency),
    }
    if not org.multi:
        # Every opportunity reads back in the org's currency. Another currency is refused when written (an amount
        # in it would read back as a different deal), so it stays what it is here: the difference shows.
        update["currency"] = (iso_code(opportunity.currency) or org.currency) if org.currency else None
    stage = mapping.status.stage_for(o.status, o.substatus)
    if stage is not None:
        closed, won = mapping.status.flags(stage)
        update["status"], update["substatus"] = mapping.status.status_of(stage, closed, won, o.status_reason)
    has_account = bool(o.customer_name)
    if has_account:
        line1, line2 = split_street(street(o.customer_address))
        update["customer_address"] = o.customer_address.model_copy(update={"line1": line1, "line2": line2})
    else:
        update["customer_address"] = CustomerAddress()
    update["customer_contacts"] = tuple(unique_contacts(o.customer_contacts, has_account))
    return o.model_copy(update=update)
