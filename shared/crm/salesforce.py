"""Salesforce adapter: the :class:`shared.ports.Crm` port over the Salesforce REST API.

It mirrors the Dynamics 365 adapter: opportunities are created by an upsert on the Referral Identifier
external id (a retried create updates the same record instead of adding one), accounts are found by
name and postal code before one is created, contacts by email, and updates send only the requested
fields with ``If-Unmodified-Since`` set to the ``SystemModstamp`` the caller read. What is particular to
Salesforce stays here: stage names (``IsClosed`` / ``IsWon`` for reading), picklist labels, the
mandatory ``CloseDate``, contact roles, and the daily API allocation (:class:`QuotaExhausted`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

import requests

from ..domain.errors import NotFound, ValidationFailed
from ..domain.opportunity import WRITABLE_FIELDS, Contact, CustomerAddress, Opportunity
from ..settings import DEFAULT_SALESFORCE_HELP_PICKLIST, Settings
from .salesforce_api import (
    QUOTA_RETRY_AFTER_SECONDS,
    DuplicateReferralId,
    QuotaExhausted,
    SalesforceApi,
    SalesforceRecordError,
    record_error,
)
from .salesforce_auth import SERVICE, SalesforceAuth, StaticToken, auth_from_settings

__all__ = [
    "DuplicateReferralId",
    "QuotaExhausted",
    "SalesforceCrm",
    "SalesforceMapping",
    "SalesforceRecordError",
    "UpsertResult",
]

log = logging.getLogger(__name__)

# A referral without a closing date still needs one: Salesforce requires CloseDate on every opportunity.
DEFAULT_CLOSE_DAYS = 30
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
CUSTOMER_FIELDS = frozenset({"customer_name", "customer_address"})
STATUS_FIELDS = frozenset({"status", "substatus"})
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


@dataclass(frozen=True)
class UpsertResult:
    """One record of :meth:`SalesforceCrm.upsert_many`: the record id and whether it was created, or the error."""

    referral_id: str | None
    crm_id: str | None = None
    created: bool = False
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------
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


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _date(value: Any) -> date | None:
    return None if not value else date.fromisoformat(str(value)[:10])


def _products(value: Any) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value or "").split(",") if part.strip())


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


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_record_id(value: str | None, prefix: str = "") -> bool:
    return bool(value) and _ID_RE.fullmatch(str(value)) is not None and str(value).startswith(prefix)


def check_referral_id(referral_id: str | None) -> str:
    if not referral_id:
        raise ValidationFailed(["A referral id is required to key the Salesforce opportunity"])
    if len(referral_id) > REFERRAL_ID_MAX_LENGTH:
        raise ValidationFailed([f"Referral id '{referral_id}' is longer than {REFERRAL_ID_MAX_LENGTH} characters"])
    return referral_id


# ---------------------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------------------
class SalesforceCrm:
    """Opportunities in Salesforce, read with SOQL and written through sObject rows and collections."""

    provider = "salesforce"

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        auth: SalesforceAuth | None = None,
        sleep: Callable[[float], None] = time.sleep,
        today: Callable[[], date] | None = None,
        quota_retry_after: float = QUOTA_RETRY_AFTER_SECONDS,
    ) -> None:
        self._configure(
            auth or auth_from_settings(settings, session),
            settings.salesforce_api_version,
            SalesforceMapping.from_settings(settings),
            session,
            sleep,
            settings.http_timeout_seconds,
            settings.max_inline_retry_after_seconds,
            settings.audit_max_chars,
            today,
            quota_retry_after,
        )

    @classmethod
    def for_instance(
        cls,
        instance_url: str | None = None,
        access_token: str | None = None,
        *,
        auth: SalesforceAuth | None = None,
        mapping: SalesforceMapping | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        api_version: str = "v62.0",
        timeout: float = 30.0,
        max_inline_wait: float = 20.0,
        audit_max_chars: int = 20000,
        today: Callable[[], date] | None = None,
        quota_retry_after: float = QUOTA_RETRY_AFTER_SECONDS,
    ) -> SalesforceCrm:
        """An adapter for an explicit instance and token, or any :class:`SalesforceAuth` (tests, tools)."""
        if auth is None:
            if not instance_url or not access_token:
                raise ValueError("give instance_url and access_token, or auth")
            auth = StaticToken(access_token, instance_url)
        crm = cls.__new__(cls)
        crm._configure(
            auth,
            api_version,
            mapping or SalesforceMapping(),
            session,
            sleep,
            timeout,
            max_inline_wait,
            audit_max_chars,
            today,
            quota_retry_after,
        )
        return crm

    def _configure(
        self,
        auth: SalesforceAuth,
        api_version: str,
        mapping: SalesforceMapping,
        session: requests.Session | None,
        sleep: Callable[[float], None],
        timeout: float,
        max_inline_wait: float,
        audit_max_chars: int,
        today: Callable[[], date] | None,
        quota_retry_after: float,
    ) -> None:
        self.mapping = mapping
        self.audit_max_chars = audit_max_chars
        self.api = SalesforceApi(
            auth,
            api_version,
            session,
            timeout=timeout,
            max_inline_wait=max_inline_wait,
            sleep=sleep,
            quota_retry_after=quota_retry_after,
        )
        self._today = today or (lambda: datetime.now(UTC).date())
        self._help_codes = {value: code for code, value in mapping.help_values.items()}
        self._currencies: set[str] = set()
        m = mapping
        self._opportunity_fields = (
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

    # -- public extras ------------------------------------------------------------------------------------------
    @property
    def auth(self) -> SalesforceAuth:
        return self.api.auth

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """(used, max) of the org's daily API requests, from the last ``Sforce-Limit-Info`` seen."""
        return self.api.api_usage

    def query(self, soql: str, batch_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Records of any SOQL query, following ``nextRecordsUrl``."""
        return self.api.query(soql, batch_size)

    # -- reading --------------------------------------------------------------------------------------------------
    def get_opportunity(self, crm_id: str) -> Opportunity | None:
        if not is_record_id(crm_id, OPPORTUNITY_PREFIX):
            return None  # an id from another system (or not an opportunity) cannot name one here
        rows = list(self.api.query(self._select(f"Id = {soql_string(crm_id)}")))
        return self._with_contacts(rows)[0] if rows else None

    def find_by_referral_id(self, referral_id: str) -> Opportunity | None:
        if not referral_id:
            return None
        field_name = self.mapping.referral_id
        rows = list(self.api.query(self._select(f"{field_name} = {soql_string(referral_id)}", "CreatedDate, Id")))
        if len(rows) > 1:
            # Text external ids match case-insensitively, so an upsert would be refused with 300 as well.
            raise DuplicateReferralId(field_name, referral_id, [str(row["Id"]) for row in rows])
        return self._with_contacts(rows)[0] if rows else None

    def list_flagged_changed_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Opportunity]:
        """Flagged opportunities with ``SystemModstamp`` at or after ``since`` (whole seconds), oldest first,
        ties broken by Id so that paging is stable."""
        where = f"{self.mapping.sync} = true"
        if since is not None:
            where += f" AND SystemModstamp >= {soql_datetime(since)}"
        for page in self.api.query_pages(self._select(where, "SystemModstamp ASC, Id ASC"), page_size):
            yield from self._with_contacts(page)

    def stored_form(self, opportunity: Opportunity) -> Opportunity:
        """What reading the opportunity back returns: the status as its stage reads back, one multi-line
        street, products re-split, only contacts that can be stored (once each), no address without an
        account, and no currency in a single-currency org."""
        o, m = opportunity, self.mapping
        update: dict[str, Any] = {
            "solution_ids": _products(", ".join(o.solution_ids)),
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

    def _select(self, where: str, order_by: str | None = None) -> str:
        return soql("Opportunity", self._opportunity_fields, where, order_by)

    def _with_contacts(self, rows: list[dict[str, Any]]) -> list[Opportunity]:
        roles = self._roles([str(row["Id"]) for row in rows]) if rows else {}
        return [self._to_opportunity(row, roles.get(str(row["Id"]), [])) for row in rows]

    def _roles(self, opportunity_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Contact roles per opportunity: the primary first, then in the order they were added."""
        fields = ["Id", "OpportunityId", "ContactId", "IsPrimary", *(f"Contact.{name}" for _, name in CONTACT_FIELDS)]
        grouped: dict[str, list[dict[str, Any]]] = {}
        for chunk in chunks(opportunity_ids, IN_LIST_SIZE):
            ids = ", ".join(soql_string(i) for i in chunk)
            order = "OpportunityId, IsPrimary DESC, CreatedDate, Id"
            for row in self.api.query(soql("OpportunityContactRole", fields, f"OpportunityId IN ({ids})", order)):
                grouped.setdefault(str(row["OpportunityId"]), []).append(row)
        return grouped

    def _to_opportunity(self, row: dict[str, Any], roles: list[dict[str, Any]]) -> Opportunity:
        m = self.mapping
        account = row.get("Account") or None
        status, substatus = m.status_of(row.get("StageName"), bool(row.get("IsClosed")), bool(row.get("IsWon")))
        help_value = row.get(m.help)
        if help_value is not None and help_value not in self._help_codes:
            log.warning(
                "opportunity %s: picklist value '%s' of %s has no AssistanceRequestCode mapping",
                row.get("Id"),
                help_value,
                m.help,
            )
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
            deal_value=_decimal(row.get("Amount")),
            currency=str(currency).upper() if currency else None,
            close_date=_date(row.get("CloseDate")),
            notes=row.get("Description"),
            customer_name=account.get("Name") if account else None,
            customer_address=address,
            customer_contacts=tuple(contacts),
            help_code=self._help_codes.get(help_value) if help_value is not None else None,
            solution_ids=_products(row.get(m.products)),
            status=status,
            substatus=substatus,
            referral_id=row.get(m.referral_id),
            referral_link=row.get(m.referral_link),
            sync_enabled=bool(row.get(m.sync)),
            audit=row.get(m.audit),
            etag=str(modstamp) if modstamp else None,
            modified_at=parse_modstamp(modstamp),
        )

    # -- writing --------------------------------------------------------------------------------------------------
    def create_opportunity(self, opportunity: Opportunity) -> Opportunity:
        referral_id = check_referral_id(opportunity.referral_id)
        body = self._fields_for(opportunity, PLAIN_FIELDS - {"referral_id"})  # validates before any write
        if not opportunity.name:
            raise ValidationFailed(["A Salesforce opportunity needs a name"])
        account_id = self._ensure_account(opportunity)
        contact_ids = self._ensure_contacts(opportunity.customer_contacts, account_id)
        body = {k: v for k, v in body.items() if v is not None}
        body["StageName"] = self.mapping.stage_for(opportunity.status, opportunity.substatus) or (
            self.mapping.active_stage
        )
        body.setdefault("CloseDate", self._default_close_date())
        if account_id:
            body["AccountId"] = account_id
        crm_id, created = self._upsert(referral_id, body)
        if not created:
            log.info("opportunity for referral %s already existed; updated instead of created again", referral_id)
        self._sync_roles(crm_id, contact_ids)
        return self._reread(crm_id)

    def update_opportunity(self, current: Opportunity, desired: Opportunity, fields: list[str]) -> Opportunity:
        crm_id = self._crm_id(current.crm_id)
        wanted = set(fields)
        unknown = wanted - WRITABLE_FIELDS
        if unknown:
            raise ValueError(f"fields not written by the Salesforce adapter: {', '.join(sorted(unknown))}")
        body = self._fields_for(desired, wanted & PLAIN_FIELDS)
        if wanted & STATUS_FIELDS:
            stage = self.mapping.stage_for(desired.status, desired.substatus)
            if stage is not None:
                body["StageName"] = stage
        account_id: str | None = None
        if wanted & CUSTOMER_FIELDS or "customer_contacts" in wanted:
            account_id = self._ensure_account(desired)
            if account_id and wanted & CUSTOMER_FIELDS:
                body["AccountId"] = account_id
        contact_ids = (
            self._ensure_contacts(desired.customer_contacts, account_id) if "customer_contacts" in wanted else None
        )
        if body:
            self._patch(crm_id, body, current.modified_at)
        if contact_ids is not None:
            self._sync_roles(crm_id, contact_ids)
        return self._reread(crm_id)

    def set_sync_outcome(self, current: Opportunity, name: str | None, audit: str) -> Opportunity:
        crm_id = self._crm_id(current.crm_id)
        audit = audit[: self.audit_max_chars]  # the engine puts the newest entry first
        body: dict[str, Any] = {}
        if name is not None and name != current.name:
            body["Name"] = name
        if audit != current.audit:
            body[self.mapping.audit] = audit
        if not body:
            return current
        self._patch(crm_id, body, current.modified_at)
        stamp = self.api.json(
            self.api.request("GET", f"sobjects/Opportunity/{crm_id}", params={"fields": "SystemModstamp"})
        ).get("SystemModstamp")
        changed: dict[str, Any] = {"audit": audit, "etag": stamp, "modified_at": parse_modstamp(stamp)}
        if "Name" in body:
            changed["name"] = name
        return current.model_copy(update=changed)

    def upsert_many(self, opportunities: list[Opportunity]) -> list[UpsertResult]:
        """Upsert opportunity fields by referral id with sObject Collections (200 per call, not all-or-none).

        Accounts are found or created once per distinct customer; contact roles are not written (use
        :meth:`create_opportunity` for a complete record). Stage and close date are set only on records
        that do not exist yet when they are not given. Results are in input order."""
        results: list[UpsertResult] = []
        for start in range(0, len(opportunities), 200):
            results.extend(self._upsert_chunk(opportunities[start : start + 200]))
        return results

    def _upsert_chunk(self, chunk: list[Opportunity]) -> list[UpsertResult]:
        m = self.mapping
        prepared: list[tuple[int, dict[str, Any]]] = []
        results: list[UpsertResult] = [UpsertResult(o.referral_id) for o in chunk]
        for index, opportunity in enumerate(chunk):
            try:
                referral_id = check_referral_id(opportunity.referral_id)
                body = self._fields_for(opportunity, PLAIN_FIELDS - {"referral_id"})
                stage = m.stage_for(opportunity.status, opportunity.substatus)
                if stage is not None:
                    body["StageName"] = stage
            except ValidationFailed as exc:
                results[index] = UpsertResult(opportunity.referral_id, error=exc)
                continue
            prepared.append((index, {**body, m.referral_id: referral_id}))
        if not prepared:
            return results
        existing: set[str] = set()
        for part in chunks([body[m.referral_id] for _, body in prepared], IN_LIST_SIZE):
            ids = ", ".join(soql_string(value) for value in part)
            statement = soql("Opportunity", ["Id", m.referral_id], f"{m.referral_id} IN ({ids})")
            existing.update(str(row[m.referral_id]).casefold() for row in self.api.query(statement))
        accounts: dict[tuple[str, str | None], str | None] = {}
        records = []
        for index, body in prepared:
            opportunity = chunk[index]
            if opportunity.customer_name:
                key = (opportunity.customer_name, opportunity.customer_address.postal_code)
                if key not in accounts:
                    accounts[key] = self._ensure_account(opportunity)
                if accounts[key]:
                    body["AccountId"] = accounts[key]
            if str(body[m.referral_id]).casefold() not in existing:
                if not body.get("Name"):
                    error = ValidationFailed(["A Salesforce opportunity needs a name"])
                    results[index] = UpsertResult(opportunity.referral_id, error=error)
                    continue
                body.setdefault("StageName", m.active_stage)
                body.setdefault("CloseDate", self._default_close_date())
            records.append((index, {"attributes": {"type": "Opportunity"}, **body}))
        if not records:
            return results
        answers = self.api.collection(
            "PATCH", f"composite/sobjects/Opportunity/{m.referral_id}", [record for _, record in records]
        )
        for (index, _), answer in zip(records, answers, strict=True):
            referral_id = chunk[index].referral_id
            if answer.get("success"):
                results[index] = UpsertResult(referral_id, answer.get("id"), bool(answer.get("created")))
            else:
                errors = answer.get("errors") or [{}]
                results[index] = UpsertResult(referral_id, answer.get("id"), error=record_error(errors[0]))
        return results

    # -- write helpers --------------------------------------------------------------------------------------------
    def _upsert(self, referral_id: str, body: dict[str, Any]) -> tuple[str, bool]:
        """(record id, created) of an upsert by the referral id; 300 means duplicates and writes nothing."""
        field_name = self.mapping.referral_id
        response = self.api.request(
            "PATCH",
            f"sobjects/Opportunity/{field_name}/{quote(referral_id, safe='')}",
            json=body,
            ok_statuses=(300,),
        )
        if response.status_code == 300:
            listed = self.api.json(response)
            urls = [item if isinstance(item, str) else str(item.get("url") or item.get("Id")) for item in listed]
            raise DuplicateReferralId(field_name, referral_id, [url.rstrip("/").rsplit("/", 1)[-1] for url in urls])
        created = response.status_code == 201
        answer = self.api.json(response) if response.content else {}
        record_id = answer.get("id") if isinstance(answer, dict) else None
        if not record_id:
            # 204 (older API versions) carries no body: look the record up by its key.
            existing = self.find_by_referral_id(referral_id)
            if existing is None or existing.crm_id is None:
                raise NotFound(SERVICE, f"opportunity for referral {referral_id} vanished after the upsert", 404)
            record_id = existing.crm_id
        return str(record_id), created

    def _patch(self, crm_id: str, body: dict[str, Any], modified_at: datetime | None) -> None:
        # Opportunity rows have no ETag; If-Unmodified-Since is the condition Salesforce offers (412 on a
        # later change). It has whole-second precision, so a change within the same second goes unnoticed.
        headers = {"If-Unmodified-Since": http_date(modified_at)} if modified_at else None
        self.api.request("PATCH", f"sobjects/Opportunity/{crm_id}", json=body, headers=headers)

    def _reread(self, crm_id: str) -> Opportunity:
        result = self.get_opportunity(crm_id)
        if result is None:
            raise NotFound(SERVICE, f"opportunity {crm_id} disappeared while it was being written", 404)
        return result

    def _default_close_date(self) -> str:
        return (self._today() + timedelta(days=DEFAULT_CLOSE_DAYS)).isoformat()

    def _fields_for(self, opportunity: Opportunity, fields: Iterable[str]) -> dict[str, Any]:
        """Opportunity fields behind plain neutral fields (customer, contacts and status are handled apart)."""
        m, o, wanted = self.mapping, opportunity, set(fields)
        body: dict[str, Any] = {}
        if "name" in wanted:
            body["Name"] = o.name
        if "deal_value" in wanted:
            body["Amount"] = float(o.deal_value) if o.deal_value is not None else None
        if "currency" in wanted and o.currency and m.currency:
            body[m.currency] = self._currency(o.currency)
        # CloseDate is required: an empty date keeps the one the opportunity has.
        if "close_date" in wanted and o.close_date is not None:
            body["CloseDate"] = o.close_date.isoformat()
        if "notes" in wanted:
            body["Description"] = o.notes
        if "help_code" in wanted:
            body[m.help] = self._help_value(o.help_code)
        if "solution_ids" in wanted:
            body[m.products] = ", ".join(o.solution_ids) or None
        if "referral_id" in wanted:
            body[m.referral_id] = check_referral_id(o.referral_id)
        if "referral_link" in wanted:
            body[m.referral_link] = o.referral_link
        if "sync_enabled" in wanted:
            body[m.sync] = o.sync_enabled
        if "audit" in wanted:
            body[m.audit] = o.audit[: self.audit_max_chars] if o.audit is not None else None
        return body

    def _help_value(self, code: str | None) -> str | None:
        if code is None:
            return None
        value = self.mapping.help_values.get(code)
        if value is None:
            raise ValidationFailed(
                [
                    f"'How can Microsoft help?' value '{code}' has no Salesforce picklist value; "
                    "add it to SALESFORCE_HELP_PICKLIST_VALUES"
                ]
            )
        return value

    def _currency(self, code: str) -> str:
        iso = code.strip().upper()
        if iso not in self._currencies:
            self._load_currencies()  # a currency may have been activated since the cache was filled
        if iso not in self._currencies:
            raise ValidationFailed(
                [
                    f"Currency '{iso}' is not active in Salesforce; activate it under Setup > Company Settings > "
                    "Manage Currencies"
                ]
            )
        return iso

    def _load_currencies(self) -> None:
        rows = self.api.query(soql("CurrencyType", ["IsoCode"], "IsActive = true"))
        self._currencies = {str(row["IsoCode"]).upper() for row in rows}

    def _ensure_account(self, opportunity: Opportunity) -> str | None:
        """Find the customer's account by name and postal code, else create it; fill in missing address parts."""
        if not opportunity.customer_name:
            return None
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
        row = next(iter(self.api.query(statement)), None)
        if row is None:
            body = {"Name": opportunity.customer_name, **{k: v for k, v in wanted.items() if v is not None}}
            return str(self.api.json(self.api.request("POST", "sobjects/Account", json=body))["id"])
        account_id = str(row["Id"])
        # Only values we have overwrite: a blank from Partner Center must not erase what sellers entered.
        changes = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
        if changes:
            self.api.request("PATCH", f"sobjects/Account/{account_id}", json=changes)
        return account_id

    def _ensure_contacts(self, contacts: Iterable[Contact], account_id: str | None) -> list[str]:
        ids: list[str] = []
        for contact in unique_contacts(contacts, bool(account_id)):
            contact_id = self._ensure_contact(contact, account_id)
            if contact_id not in ids:
                ids.append(contact_id)
        return ids

    def _ensure_contact(self, contact: Contact, account_id: str | None) -> str:
        if contact.email:
            where = f"Email = {soql_string(contact.email)}"
        else:
            where = (
                f"FirstName = {soql_string(contact.first_name)} AND LastName = {soql_string(contact.last_name)} "
                f"AND AccountId = {soql_string(account_id)}"
            )
        fields = ["Id", "AccountId", *(name for _, name in CONTACT_FIELDS)]
        wanted = {name: getattr(contact, attr) for attr, name in CONTACT_FIELDS}
        row = next(iter(self.api.query(soql("Contact", fields, where, "CreatedDate, Id", limit=1))), None)
        if row is None:
            body: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None}
            body.setdefault("LastName", MISSING_LAST_NAME)
            if account_id:
                body["AccountId"] = account_id
            return str(self.api.json(self.api.request("POST", "sobjects/Contact", json=body))["id"])
        contact_id = str(row["Id"])
        changes: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
        if account_id and not row.get("AccountId"):
            changes["AccountId"] = account_id
        if changes:
            self.api.request("PATCH", f"sobjects/Contact/{contact_id}", json=changes)
        return contact_id

    def _sync_roles(self, crm_id: str, contact_ids: list[str]) -> None:
        """Make the contact roles read back as ``contact_ids`` (the first one primary).

        Roles read back primary first, then in the order they were added, so the roles from the first
        difference on are replaced. No contacts at all leaves the roles alone: a blank list from Partner
        Center must not erase the roles sellers added."""
        if not contact_ids:
            return
        existing = self._roles([crm_id]).get(crm_id, [])
        keep = 0
        for index, role in enumerate(existing[: len(contact_ids)]):
            if str(role["ContactId"]) != contact_ids[index] or bool(role.get("IsPrimary")) != (index == 0):
                break
            keep = index + 1
        stale = [str(role["Id"]) for role in existing[keep:]]
        if stale:
            self._check(self.api.delete_many(stale))
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
            self._check(self.api.collection("POST", "composite/sobjects", new[start : start + 200]))

    @staticmethod
    def _check(results: list[dict[str, Any]]) -> None:
        for result in results:
            if not result.get("success"):
                raise record_error((result.get("errors") or [{}])[0])

    @staticmethod
    def _crm_id(crm_id: str | None) -> str:
        if not is_record_id(crm_id, OPPORTUNITY_PREFIX):
            raise ValidationFailed([f"'{crm_id}' is not a Salesforce opportunity id"])
        return str(crm_id)
