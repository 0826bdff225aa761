"""How an :class:`~shared.domain.opportunity.Opportunity` maps onto Salesforce records, without any I/O.

The configured field API names, stages and picklist values (:class:`SalesforceMapping`), SOQL and HTTP
date literals, record id and referral-id checks, the one multi-line street, which contacts can be found
again, and the conversions between records and opportunities. Kept apart from the adapter so the mapping
can be read (and changed) without the HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from ...domain.errors import ValidationFailed
from ...domain.opportunity import WRITABLE_FIELDS, Contact, CustomerAddress, Opportunity
from ...settings import DEFAULT_SALESFORCE_HELP_PICKLIST, Settings
from ..common import CUSTOMER_FIELDS, STATUS_FIELDS, custom_field_values, split_products, to_date, to_decimal

# Salesforce requires Contact.LastName; web-to-lead uses the same placeholder when a form has none.
MISSING_LAST_NAME = "[not provided]"
REFERRAL_ID_MAX_LENGTH = 100  # Text(100) External ID
# SOQL travels in the URL of a GET; Salesforce refuses URIs over 16 KB, so IN lists are split.
IN_LIST_SIZE = 100
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
OPPORTUNITY_PREFIX = "006"

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


@dataclass(frozen=True)
class SalesforceMapping:
    """Field API names, stage names and picklist values (settings ``SALESFORCE_*``)."""

    sync: str = "Sync_with_Partner_Center__c"
    referral_id: str = "Referral_Identfier__c"
    referral_link: str = "Referral_Link__c"
    help: str = "How_can_Microsoft_help__c"
    products: str = "Products__c"
    audit: str = "Audit__c"
    currency: str = "CurrencyIsoCode"  # empty in a single-currency org: currency is then not synchronised
    on_hold_stage: str = "Prospecting"
    active_stage: str = "Qualification"
    won_stage: str = "Closed Won"
    lost_stage: str = "Closed Lost"
    help_values: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SALESFORCE_HELP_PICKLIST))

    @classmethod
    def from_settings(cls, settings: Settings) -> SalesforceMapping:
        return cls(
            settings.salesforce_field_sync,
            settings.salesforce_field_referral_id,
            settings.salesforce_field_referral_link,
            settings.salesforce_field_help,
            settings.salesforce_field_products,
            settings.salesforce_field_audit,
            settings.salesforce_currency_field.strip(),
            settings.salesforce_on_hold_stage,
            settings.salesforce_active_stage,
            settings.salesforce_won_stage,
            settings.salesforce_lost_stage,
            dict(settings.salesforce_help_picklist_values),
        )

    def stage_for(self, status: str | None, substatus: str | None) -> str | None:
        """The stage a referral status maps to, or None when the status says nothing."""
        if status == "New":
            return self.on_hold_stage  # not accepted yet
        if status == "Active":
            return self.active_stage
        if status == "Closed":
            return self.won_stage if substatus == "Won" else self.lost_stage  # lost, declined, expired
        return None

    def status_of(self, stage: str | None, is_closed: bool, is_won: bool) -> tuple[str, str]:
        """(status, substatus) read from an opportunity; IsClosed / IsWon come from the org's stage settings."""
        if is_closed:
            return ("Closed", "Won") if is_won else ("Closed", "Lost")
        if stage == self.on_hold_stage:
            return ("New", "Pending")
        return ("Active", "Accepted")


def opportunity_fields(mapping: SalesforceMapping) -> tuple[str, ...]:
    """The fields every opportunity read selects (with the account's name and address)."""
    m = mapping
    return (
        "Id",
        "Name",
        "Amount",
        *([m.currency] if m.currency else []),
        "CloseDate",
        "Description",
        "StageName",
        "IsClosed",
        "IsWon",
        "AccountId",
        "Account.Name",
        "Account.BillingStreet",
        *(f"Account.{name}" for _, name in ACCOUNT_FIELDS),
        "SystemModstamp",
        m.sync,
        m.referral_id,
        m.referral_link,
        m.help,
        m.products,
        m.audit,
    )


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


def help_value(mapping: SalesforceMapping, code: str | None) -> str | None:
    if code is None:
        return None
    value = mapping.help_values.get(code)
    if value is None:
        raise ValidationFailed(
            [
                f"'How can Microsoft help?' value '{code}' has no Salesforce picklist value; "
                "add it to SALESFORCE_HELP_PICKLIST_VALUES"
            ]
        )
    return value


# -- records <-> opportunities --------------------------------------------------------------------------------------
def opportunity_record(
    mapping: SalesforceMapping,
    opportunity: Opportunity,
    fields: Iterable[str],
    currency: Callable[[str], str],
    audit_max_chars: int,
) -> dict[str, Any]:
    """Opportunity fields behind plain neutral fields (customer, contacts and status are handled apart)."""
    m, o, wanted = mapping, opportunity, set(fields)
    body: dict[str, Any] = {}
    if "name" in wanted:
        body["Name"] = o.name
    if "deal_value" in wanted:
        body["Amount"] = float(o.deal_value) if o.deal_value is not None else None
    if "currency" in wanted and o.currency and m.currency:
        body[m.currency] = currency(o.currency)
    # CloseDate is required: an empty date keeps the one the opportunity has.
    if "close_date" in wanted and o.close_date is not None:
        body["CloseDate"] = o.close_date.isoformat()
    if "notes" in wanted:
        body["Description"] = o.notes
    body.update(custom_field_values(m, o, wanted, lambda code: help_value(m, code), check_referral_id, audit_max_chars))
    return body


def record_to_opportunity(
    row: dict[str, Any], roles: list[dict[str, Any]], mapping: SalesforceMapping, help_codes: Mapping[str, str]
) -> Opportunity:
    """The opportunity a record reads as, with the contacts of its contact roles in the order given."""
    m = mapping
    account = row.get("Account") or None
    status, substatus = m.status_of(row.get("StageName"), bool(row.get("IsClosed")), bool(row.get("IsWon")))
    help_picklist = row.get(m.help)
    contacts = []
    for role in roles:
        person = role.get("Contact") or {}
        values = {attr: person.get(name) for attr, name in CONTACT_FIELDS}
        if values["last_name"] == MISSING_LAST_NAME:
            values["last_name"] = None
        contacts.append(Contact(**values))
    address = CustomerAddress()
    if account:
        line1, line2 = split_street(account.get("BillingStreet"))
        address = CustomerAddress(
            line1=line1, line2=line2, **{attr: account.get(name) for attr, name in ACCOUNT_FIELDS}
        )
    currency = row.get(m.currency) if m.currency else None
    modstamp = row.get("SystemModstamp")
    return Opportunity(
        crm_id=row.get("Id"),
        name=row.get("Name"),
        deal_value=to_decimal(row.get("Amount")),
        currency=str(currency).upper() if currency else None,
        close_date=to_date(row.get("CloseDate")),
        notes=row.get("Description"),
        customer_name=account.get("Name") if account else None,
        customer_address=address,
        customer_contacts=tuple(contacts),
        help_code=help_codes.get(help_picklist) if help_picklist is not None else None,
        solution_ids=split_products(row.get(m.products)),
        status=status,
        substatus=substatus,
        referral_id=row.get(m.referral_id),
        referral_link=row.get(m.referral_link),
        sync_enabled=bool(row.get(m.sync)),
        audit=row.get(m.audit),
        etag=str(modstamp) if modstamp else None,
        modified_at=parse_modstamp(modstamp),
    )


def stored_form(mapping: SalesforceMapping, opportunity: Opportunity) -> Opportunity:
    """What reading the opportunity back returns: the status as its stage reads back, one multi-line
    street, products re-split, only contacts that can be stored (once each), no address without an
    account, and no currency in a single-currency org."""
    o, m = opportunity, mapping
    update: dict[str, Any] = {
        "solution_ids": split_products(", ".join(o.solution_ids)),
        "currency": o.currency.strip().upper() if o.currency and m.currency else None,
    }
    stage = m.stage_for(o.status, o.substatus)
    if stage is not None:
        closed = stage in (m.won_stage, m.lost_stage)
        update["status"], update["substatus"] = m.status_of(stage, closed, stage == m.won_stage)
    has_account = bool(o.customer_name)
    if has_account:
        line1, line2 = split_street(street(o.customer_address))
        update["customer_address"] = o.customer_address.model_copy(update={"line1": line1, "line2": line2})
    else:
        update["customer_address"] = CustomerAddress()
    update["customer_contacts"] = tuple(unique_contacts(o.customer_contacts, has_account))
    return o.model_copy(update=update)
