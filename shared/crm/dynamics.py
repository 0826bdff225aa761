"""Dynamics 365 adapter: the :class:`shared.ports.Crm` port over the Dataverse Web API.

Every write is keyed or conditional: opportunities are created by an upsert on the referral-id
alternate key with ``If-None-Match: *``, accounts and contacts are found before they are created,
and updates carry ``If-Match`` with the etag the caller read. Only columns that change are sent,
because Dataverse runs plug-ins and auditing for every column in a request.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import requests

from ..domain.errors import AuthenticationError, NotFound, PreconditionFailed, TransientError, ValidationFailed
from ..domain.opportunity import WRITABLE_FIELDS, Contact, CustomerAddress, Opportunity
from ..httpclient import ApiClient, TokenProvider
from ..settings import DEFAULT_DATAVERSE_HELP_OPTIONS, Settings

log = logging.getLogger(__name__)

SERVICE = "Dataverse"
# Characters that break GET/PATCH by alternate key, per the Dataverse documentation.
KEY_BREAKING_CHARACTERS = frozenset("/<>*%&:\\?+")
TOKEN_REFRESH_MARGIN_SECONDS = 300.0
MAX_PAGE_SIZE = 5000
CLOSE_SUBJECT = "Closed by the Partner Center co-sell connector"
LOOKUP_ANNOTATION = "Microsoft.Dynamics.CRM.lookuplogicalname"
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}

ACCOUNT_ADDRESS = (
    ("line1", "address1_line1"),
    ("line2", "address1_line2"),
    ("city", "address1_city"),
    ("state", "address1_stateorprovince"),
    ("postal_code", "address1_postalcode"),
)
CONTACT_COLUMNS = (
    ("first_name", "firstname"),
    ("last_name", "lastname"),
    ("email", "emailaddress1"),
    ("phone", "telephone1"),
    ("title", "jobtitle"),
)
CUSTOMER_FIELDS = frozenset({"customer_name", "customer_address"})
STATUS_FIELDS = frozenset({"status", "substatus"})
OPEN, WON, LOST = 0, 1, 2
PRIMARY_KEYS = {"opportunities": "opportunityid", "accounts": "accountid", "contacts": "contactid"}


@dataclass(frozen=True)
class DataverseColumns:
    """Logical names of the connector's custom columns (settings ``DATAVERSE_FIELD_*``)."""

    sync: str = "new_syncwithpartnercenter"
    referral_id: str = "new_referralidentifier"
    referral_link: str = "new_referrallink"
    help: str = "new_howcanmicrosofthelp"
    products: str = "new_products"
    audit: str = "new_audit"
    account_country: str = "address1_country"
    help_options: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_DATAVERSE_HELP_OPTIONS))

    @classmethod
    def from_settings(cls, settings: Settings) -> DataverseColumns:
        return cls(
            settings.dataverse_field_sync,
            settings.dataverse_field_referral_id,
            settings.dataverse_field_referral_link,
            settings.dataverse_field_help,
            settings.dataverse_field_products,
            settings.dataverse_field_audit,
            settings.dataverse_account_country_field,
            dict(settings.dataverse_help_option_values),
        )


# ---------------------------------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------------------------------
class AzureIdentityToken:
    """Bearer tokens from azure-identity, cached until shortly before they expire."""

    def __init__(
        self, scope: str, credential_factory: Callable[[], Any] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._scope = scope
        self._factory = credential_factory or _default_credential
        self._clock = clock
        self._lock = threading.Lock()
        self._credential: Any = None
        self._token: str | None = None
        self._expires_on = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_on - TOKEN_REFRESH_MARGIN_SECONDS:
                self._refresh()
            assert self._token is not None
            return self._token

    def _refresh(self) -> None:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            if self._credential is None:
                self._credential = self._factory()
            access = self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            # Only the exception type: credential errors can quote configuration values.
            raise AuthenticationError(
                SERVICE, f"no access token from the Azure identity chain ({type(exc).__name__})"
            ) from None
        except AzureError as exc:
            raise TransientError(SERVICE, f"token request failed ({type(exc).__name__})") from None
        self._token, self._expires_on = access.token, float(access.expires_on)


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def token_provider(settings: Settings) -> TokenProvider:
    """``DATAVERSE_ACCESS_TOKEN`` when set (emulators, tests), else managed identity / DefaultAzureCredential."""
    secret = settings.dataverse_access_token
    if secret is not None:
        return secret.get_secret_value
    scope = f"{settings.dataverse_url}/.default"
    client_id, client_secret = settings.dataverse_client_id, settings.dataverse_client_secret
    tenant = settings.dataverse_tenant_id or settings.partner_center_tenant_id
    if client_id and client_secret and tenant:
        # An app registration of its own, for Dataverse environments in another tenant than the app.
        def app_credential() -> Any:
            from azure.identity import ClientSecretCredential

            return ClientSecretCredential(tenant, client_id, client_secret.get_secret_value())

        return AzureIdentityToken(scope, app_credential)
    return AzureIdentityToken(scope)


# ---------------------------------------------------------------------------------------------------------------
# Pure mapping helpers
# ---------------------------------------------------------------------------------------------------------------
def odata_string(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def odata_datetime(moment: datetime) -> str:
    # Whole seconds, rounded down: modifiedon has second precision and 'ge' must not skip a row.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_target(status: str | None, substatus: str | None) -> tuple[int, int] | None:
    """(statecode, statuscode) for a referral status, or None when the status says nothing."""
    if status == "New":
        return (OPEN, 2)  # On Hold: the referral is not accepted yet
    if status == "Active":
        return (OPEN, 1)
    if status == "Closed":
        if substatus == "Won":
            return (WON, 3)
        if substatus == "Lost":
            return (LOST, 5)
        return (LOST, 4)  # declined, expired or closed without a reason: Canceled
    return None


def status_read(statecode: int | None, statuscode: int | None) -> tuple[str, str]:
    if statecode == WON:
        return ("Closed", "Won")
    if statecode == LOST:
        return ("Closed", "Declined" if statuscode == 4 else "Lost")
    if statuscode == 2:
        return ("New", "Pending")
    return ("Active", "Accepted")


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _datetime(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _date(value: Any) -> date | None:
    return None if not value else date.fromisoformat(str(value)[:10])


def _products(value: Any) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value or "").split(",") if part.strip())


def check_referral_id(referral_id: str | None) -> str:
    if not referral_id:
        raise ValidationFailed(["A referral id is required to key the Dynamics 365 opportunity"])
    bad = sorted(set(referral_id) & KEY_BREAKING_CHARACTERS)
    if bad:
        raise ValidationFailed(
            [f"Referral id '{referral_id}' contains characters a Dataverse alternate key cannot hold: {' '.join(bad)}"]
        )
    return referral_id


# ---------------------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------------------
class DataverseCrm:
    """Opportunities in Dynamics 365, read and written through the Dataverse Web API."""

    provider = "dynamics"

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        token: TokenProvider | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.dataverse_url:
            raise ValueError("DATAVERSE_URL is required for the Dynamics 365 adapter")
        self._configure(
            settings.dataverse_url,
            settings.dataverse_api_version,
            DataverseColumns.from_settings(settings),
            token or token_provider(settings),
            session,
            sleep,
            settings.http_timeout_seconds,
            settings.max_inline_retry_after_seconds,
            settings.audit_max_chars,
        )

    @classmethod
    def for_url(
        cls,
        org_url: str,
        token: str | TokenProvider | None,
        *,
        columns: DataverseColumns | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_inline_wait: float = 20.0,
        timeout: float = 30.0,
        audit_max_chars: int = 20000,
        api_version: str = "v9.2",
    ) -> DataverseCrm:
        """An adapter for an explicit organisation URL (tests, tools); ``token=None`` sends no credentials."""
        provider: TokenProvider | None = (lambda: token) if isinstance(token, str) else token
        crm = cls.__new__(cls)
        crm._configure(
            org_url,
            api_version,
            columns or DataverseColumns(),
            provider,
            session,
            sleep,
            timeout,
            max_inline_wait,
            audit_max_chars,
        )
        return crm

    def _configure(
        self,
        org_url: str,
        api_version: str,
        columns: DataverseColumns,
        token: TokenProvider | None,
        session: requests.Session | None,
        sleep: Callable[[float], None],
        timeout: float,
        max_inline_wait: float,
        audit_max_chars: int,
    ) -> None:
        self.columns = columns
        self.audit_max_chars = audit_max_chars
        self.api = ApiClient(
            SERVICE,
            f"{org_url.rstrip('/')}/api/data/{api_version}",
            token,
            timeout=timeout,
            max_inline_wait=max_inline_wait,
            default_headers=ODATA_HEADERS,
            session=session,
            sleep=sleep,
        )
        self._help_codes = {value: code for code, value in columns.help_options.items()}
        self._currency_ids: dict[str, str] = {}
        self._currency_codes: dict[str, str] = {}
        self._cache_lock = threading.Lock()
        c = columns
        self._opportunity_select = ",".join(
            [
                "opportunityid",
                "name",
                "estimatedvalue",
                "estimatedclosedate",
                "description",
                "statecode",
                "statuscode",
                "_customerid_value",
                "_parentcontactid_value",
                "_transactioncurrencyid_value",
                "modifiedon",
                c.sync,
                c.referral_id,
                c.referral_link,
                c.help,
                c.products,
                c.audit,
            ]
        )
        self._account_select = ",".join(["accountid", "name", *(col for _, col in ACCOUNT_ADDRESS), c.account_country])
        self._contact_select = ",".join(["contactid", "_parentcustomerid_value", *(col for _, col in CONTACT_COLUMNS)])

    # -- HTTP helpers --------------------------------------------------------------------------------------------
    def _get(
        self, path: str, params: Mapping[str, str] | None = None, prefer: str | None = None, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        headers = {"Prefer": prefer} if prefer else None
        response = self.api.request(
            "GET", path, params=params, headers=headers, ok_statuses=(404,) if missing_ok else ()
        )
        if response.status_code == 404:
            return None
        data: dict[str, Any] = response.json(parse_float=Decimal)
        return data

    def _rows(
        self, entity_set: str, params: Mapping[str, str], page_size: int = MAX_PAGE_SIZE, annotations: bool = False
    ) -> Iterator[dict[str, Any]]:
        prefer = f"odata.maxpagesize={max(1, min(page_size, MAX_PAGE_SIZE))}"
        if annotations:
            prefer += f',odata.include-annotations="{LOOKUP_ANNOTATION}"'
        path: str | None = entity_set
        query: Mapping[str, str] | None = params
        while path:
            page = self._get(path, query, prefer) or {}
            yield from page.get("value", [])
            # The nextLink is used as given: re-encoding its skiptoken breaks paging.
            path, query = page.get("@odata.nextLink"), None

    def _first(self, entity_set: str, select: str, odata_filter: str) -> dict[str, Any] | None:
        params = {"$select": select, "$filter": odata_filter, "$orderby": "createdon asc"}
        return next(iter(self._rows(entity_set, params, page_size=1)), None)

    def _create(self, entity_set: str, body: dict[str, Any], select: str) -> dict[str, Any]:
        response = self.api.request(
            "POST", entity_set, params={"$select": select}, json=body, headers={"Prefer": "return=representation"}
        )
        created: dict[str, Any] = response.json(parse_float=Decimal)
        return created

    def _patch(self, entity_set: str, record_id: str, body: dict[str, Any], etag: str | None) -> str:
        """Conditional update; returns the new etag. ``If-Match: *`` at least forbids an accidental create."""
        response = self.api.request(
            "PATCH",
            f"{entity_set}({record_id})",
            params={"$select": PRIMARY_KEYS[entity_set]},
            json=body,
            headers={"If-Match": etag or "*", "Prefer": "return=representation"},
        )
        return str(response.json().get("@odata.etag") or response.headers.get("ETag") or "")

    # -- reading --------------------------------------------------------------------------------------------------
    def get_opportunity(self, crm_id: str) -> Opportunity | None:
        row = self._get(
            f"opportunities({self._guid(crm_id)})",
            {"$select": self._opportunity_select},
            f'odata.include-annotations="{LOOKUP_ANNOTATION}"',
            missing_ok=True,
        )
        return self._to_opportunity(row) if row is not None else None

    def find_by_referral_id(self, referral_id: str) -> Opportunity | None:
        row = self._get(
            self._key_path(referral_id),
            {"$select": self._opportunity_select},
            f'odata.include-annotations="{LOOKUP_ANNOTATION}"',
            missing_ok=True,
        )
        return self._to_opportunity(row) if row is not None else None

    def stored_form(self, opportunity: Opportunity) -> Opportunity:
        """Only the primary contact is kept on the opportunity (``parentcontactid``)."""
        return opportunity.model_copy(update={"customer_contacts": opportunity.customer_contacts[:1]})

    def list_flagged_changed_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Opportunity]:
        """Opportunities with the sync flag set and modified at or after ``since``, oldest change first."""
        odata_filter = f"{self.columns.sync} eq true"
        if since is not None:
            odata_filter += f" and modifiedon ge {odata_datetime(since)}"
        params = {
            "$select": self._opportunity_select,
            "$filter": odata_filter,
            "$orderby": "modifiedon asc,opportunityid asc",
        }
        for row in self._rows("opportunities", params, page_size, annotations=True):
            yield self._to_opportunity(row)

    def _to_opportunity(self, row: dict[str, Any]) -> Opportunity:
        c = self.columns
        customer_id = row.get("_customerid_value")
        customer_kind = row.get(f"_customerid_value@{LOOKUP_ANNOTATION}", "account")
        account = None
        if customer_id and customer_kind == "account":
            account = self._get(f"accounts({customer_id})", {"$select": self._account_select}, missing_ok=True)
        contact_id = row.get("_parentcontactid_value")
        contact = (
            self._get(f"contacts({contact_id})", {"$select": self._contact_select}, missing_ok=True)
            if contact_id
            else None
        )
        status, substatus = status_read(row.get("statecode"), row.get("statuscode"))
        help_value = row.get(c.help)
        if help_value is not None and help_value not in self._help_codes:
            log.warning(
                "opportunity %s: choice value %s of %s has no AssistanceRequestCode mapping",
                row.get("opportunityid"),
                help_value,
                c.help,
            )
        return Opportunity(
            crm_id=row.get("opportunityid"),
            name=row.get("name"),
            deal_value=_decimal(row.get("estimatedvalue")),
            currency=self._currency_code(row.get("_transactioncurrencyid_value")),
            close_date=_date(row.get("estimatedclosedate")),
            notes=row.get("description"),
            customer_name=account.get("name") if account else None,
            customer_address=CustomerAddress(
                **{attr: account.get(col) for attr, col in ACCOUNT_ADDRESS},
                country=account.get(c.account_country),
            )
            if account
            else CustomerAddress(),
            customer_contacts=(Contact(**{attr: contact.get(col) for attr, col in CONTACT_COLUMNS}),)
            if contact
            else (),
            help_code=self._help_codes.get(help_value) if help_value is not None else None,
            solution_ids=_products(row.get(c.products)),
            status=status,
            substatus=substatus,
            referral_id=row.get(c.referral_id),
            referral_link=row.get(c.referral_link),
            sync_enabled=bool(row.get(c.sync)),
            audit=row.get(c.audit),
            etag=row.get("@odata.etag"),
            modified_at=_datetime(row.get("modifiedon")),
        )

    # -- writing --------------------------------------------------------------------------------------------------
    def create_opportunity(self, opportunity: Opportunity) -> Opportunity:
        path = self._key_path(opportunity.referral_id)
        fields = WRITABLE_FIELDS - STATUS_FIELDS - {"referral_id"}
        body = self._columns_for(opportunity, fields)  # validates before anything is written
        account_id = self._ensure_account(opportunity)
        if account_id:
            body["customerid_account@odata.bind"] = f"/accounts({account_id})"
        contact_ids = self._ensure_contacts(opportunity.customer_contacts, account_id)
        if contact_ids:
            body["parentcontactid@odata.bind"] = f"/contacts({contact_ids[0]})"
        body = {k: v for k, v in body.items() if v is not None}
        target = status_target(opportunity.status, opportunity.substatus)
        if target is not None and target[0] == OPEN and target[1] != 1:
            body["statuscode"] = target[1]
        try:
            response = self.api.request(
                "PATCH",
                path,
                params={"$select": self._opportunity_select},
                json=body,
                headers={
                    "If-None-Match": "*",
                    "Prefer": f'return=representation,odata.include-annotations="{LOOKUP_ANNOTATION}"',
                },
            )
        except PreconditionFailed:
            # Already there (a retried job, or a concurrent one): the existing row is the answer.
            existing = self.find_by_referral_id(check_referral_id(opportunity.referral_id))
            if existing is None:
                raise
            log.info("opportunity for referral %s already existed; not created again", opportunity.referral_id)
            return existing
        row: dict[str, Any] = response.json(parse_float=Decimal)
        if target is not None and target[0] != OPEN:
            self._close(row["opportunityid"], target, opportunity.deal_value, None)
            return self._reread(row["opportunityid"])
        return self._to_opportunity(row)

    def update_opportunity(self, current: Opportunity, desired: Opportunity, fields: list[str]) -> Opportunity:
        crm_id = self._guid(current.crm_id)
        wanted = set(fields)
        unknown = wanted - WRITABLE_FIELDS
        if unknown:
            raise ValueError(f"fields not written by the Dynamics 365 adapter: {', '.join(sorted(unknown))}")
        body = self._columns_for(desired, wanted - STATUS_FIELDS)
        row = self._state_row(crm_id, current.etag)
        is_account = row.get(f"_customerid_value@{LOOKUP_ANNOTATION}", "account") == "account"
        account_id = row.get("_customerid_value") if is_account else None
        if wanted & CUSTOMER_FIELDS:
            found = self._ensure_account(desired)
            if found and found != row.get("_customerid_value"):
                body["customerid_account@odata.bind"] = f"/accounts({found})"
                account_id = found
        if "customer_contacts" in wanted:
            contact_ids = self._ensure_contacts(desired.customer_contacts, account_id)
            if contact_ids and contact_ids[0] != row.get("_parentcontactid_value"):
                body["parentcontactid@odata.bind"] = f"/contacts({contact_ids[0]})"
        target = status_target(desired.status, desired.substatus) if wanted & STATUS_FIELDS else None
        self._write(crm_id, current.etag, row, body, target, desired.deal_value)
        return self._reread(crm_id)

    def set_sync_outcome(self, current: Opportunity, name: str | None, audit: str) -> Opportunity:
        crm_id = self._guid(current.crm_id)
        audit = audit[: self.audit_max_chars]  # the engine puts the newest entry first
        body: dict[str, Any] = {}
        if name is not None and name != current.name:
            body["name"] = name
        if audit != current.audit:
            body[self.columns.audit] = audit
        if not body:
            return current
        if current.status == "Closed":
            row = self._state_row(crm_id, current.etag)
        else:
            row = {"statecode": OPEN}
        etag = self._write(crm_id, current.etag, row, body, None, None)
        changed = {"etag": etag, "audit": audit, **({"name": name} if "name" in body else {})}
        return current.model_copy(update=changed)

    def _write(
        self,
        crm_id: str,
        etag: str | None,
        row: dict[str, Any],
        body: dict[str, Any],
        target: tuple[int, int] | None,
        deal_value: Decimal | None,
    ) -> str:
        """Write ``body`` and move to ``target``; a closed row is reopened around the write and closed again."""
        original = (row.get("statecode", OPEN), row.get("statuscode"))
        final = target or original
        status, reopened = original[1], False
        if original[0] != OPEN and (body or final != original):
            status = final[1] if final[0] == OPEN else 1
            etag = self._patch("opportunities", crm_id, {"statecode": OPEN, "statuscode": status}, etag)
            reopened = True
        if final[0] == OPEN and final[1] != status:
            body = {**body, "statuscode": final[1]}
        if body:
            etag = self._patch("opportunities", crm_id, body, etag)
        if final[0] != OPEN and (reopened or original[0] == OPEN):
            # Closing again after a reopen keeps the original close date and revenue.
            same_close = final == original
            revenue = _decimal(row.get("actualvalue")) if same_close else deal_value
            self._close(crm_id, final, revenue, row.get("actualclosedate") if same_close else None)
            refreshed = self._get(f"opportunities({crm_id})", {"$select": "opportunityid"})
            etag = str((refreshed or {}).get("@odata.etag") or etag)
        return etag or ""

    def _state_row(self, crm_id: str, etag: str | None) -> dict[str, Any]:
        row = self._get(
            f"opportunities({crm_id})",
            {"$select": "statecode,statuscode,_customerid_value,_parentcontactid_value,actualclosedate,actualvalue"},
            f'odata.include-annotations="{LOOKUP_ANNOTATION}"',
            missing_ok=True,
        )
        if row is None:
            raise NotFound(SERVICE, f"opportunity {crm_id} does not exist", 404)
        if etag and row.get("@odata.etag") != etag:
            raise PreconditionFailed(SERVICE, f"opportunity {crm_id} changed since it was read", 412)
        return row

    def _close(self, crm_id: str, target: tuple[int, int], revenue: Decimal | None, actual_end: str | None) -> None:
        action = "WinOpportunity" if target[0] == WON else "LoseOpportunity"
        close: dict[str, Any] = {"subject": CLOSE_SUBJECT, "opportunityid@odata.bind": f"/opportunities({crm_id})"}
        if revenue is not None:
            close["actualrevenue"] = float(revenue)
        if actual_end:
            close["actualend"] = str(actual_end)[:10]
        self.api.request("POST", action, json={"Status": target[1], "OpportunityClose": close})

    def _reread(self, crm_id: str) -> Opportunity:
        result = self.get_opportunity(crm_id)
        if result is None:
            raise NotFound(SERVICE, f"opportunity {crm_id} disappeared while it was being written", 404)
        return result

    # -- columns ----------------------------------------------------------------------------------------------------
    def _columns_for(self, opportunity: Opportunity, fields: Iterable[str]) -> dict[str, Any]:
        """Columns behind the given plain fields (customer, contacts and status are handled by the caller)."""
        c, o, wanted = self.columns, opportunity, set(fields)
        body: dict[str, Any] = {}
        if "name" in wanted:
            body["name"] = o.name
        if "deal_value" in wanted:
            body["estimatedvalue"] = float(o.deal_value) if o.deal_value is not None else None
        if "currency" in wanted and o.currency:
            body["transactioncurrencyid@odata.bind"] = f"/transactioncurrencies({self._currency_id(o.currency)})"
        if "close_date" in wanted:
            body["estimatedclosedate"] = o.close_date.isoformat() if o.close_date else None
        if "notes" in wanted:
            body["description"] = o.notes
        if "help_code" in wanted:
            body[c.help] = self._help_value(o.help_code)
        if "solution_ids" in wanted:
            body[c.products] = ", ".join(o.solution_ids) or None
        if "referral_id" in wanted:
            body[c.referral_id] = check_referral_id(o.referral_id)
        if "referral_link" in wanted:
            body[c.referral_link] = o.referral_link
        if "sync_enabled" in wanted:
            body[c.sync] = o.sync_enabled
        if "audit" in wanted:
            body[c.audit] = o.audit[: self.audit_max_chars] if o.audit is not None else None
        return body

    def _help_value(self, code: str | None) -> int | None:
        if code is None:
            return None
        value = self.columns.help_options.get(code)
        if value is None:
            raise ValidationFailed(
                [
                    f"'How can Microsoft help?' value '{code}' has no Dynamics 365 choice value; "
                    "add it to DATAVERSE_HELP_OPTION_VALUES"
                ]
            )
        return value

    def _currency_id(self, code: str) -> str:
        iso = code.strip().upper()
        if iso not in self._currency_ids:
            self._load_currencies()  # a currency may have been enabled since the cache was filled
        currency_id = self._currency_ids.get(iso)
        if currency_id is None:
            raise ValidationFailed(
                [
                    f"Currency '{iso}' is not enabled in Dynamics 365; add it under Settings > "
                    "Business Management > Currencies"
                ]
            )
        return currency_id

    def _currency_code(self, currency_id: str | None) -> str | None:
        if not currency_id:
            return None
        if currency_id not in self._currency_codes:
            self._load_currencies()
        return self._currency_codes.get(currency_id)

    def _load_currencies(self) -> None:
        rows = list(self._rows("transactioncurrencies", {"$select": "transactioncurrencyid,isocurrencycode"}))
        with self._cache_lock:
            for row in rows:
                iso, currency_id = str(row["isocurrencycode"]).upper(), str(row["transactioncurrencyid"])
                self._currency_ids[iso] = currency_id
                self._currency_codes[currency_id] = iso

    def _ensure_account(self, opportunity: Opportunity) -> str | None:
        """Find the customer's account by name and postal code, else create it; fill in missing address parts."""
        if not opportunity.customer_name:
            return None
        address = opportunity.customer_address
        wanted = {col: getattr(address, attr) for attr, col in ACCOUNT_ADDRESS}
        wanted[self.columns.account_country] = address.country
        odata_filter = (
            f"name eq {odata_string(opportunity.customer_name)} and "
            f"address1_postalcode eq {odata_string(address.postal_code)}"
        )
        row = self._first("accounts", self._account_select, odata_filter)
        if row is None:
            body = {"name": opportunity.customer_name, **{k: v for k, v in wanted.items() if v is not None}}
            return str(self._create("accounts", body, "accountid")["accountid"])
        account_id = str(row["accountid"])
        # Only values we have overwrite: a blank from Partner Center must not erase what sellers entered.
        changes = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
        if changes:
            self._patch("accounts", account_id, changes, row.get("@odata.etag"))
        return account_id

    def _ensure_contacts(self, contacts: Iterable[Contact], account_id: str | None) -> list[str]:
        ids: list[str] = []
        for contact in contacts:
            contact_id = self._ensure_contact(contact, account_id)
            if contact_id and contact_id not in ids:
                ids.append(contact_id)
        return ids

    def _ensure_contact(self, contact: Contact, account_id: str | None) -> str | None:
        if contact.email:
            odata_filter = f"emailaddress1 eq {odata_string(contact.email)}"
        elif contact.last_name and account_id:
            odata_filter = (
                f"firstname eq {odata_string(contact.first_name)} and lastname eq "
                f"{odata_string(contact.last_name)} and _parentcustomerid_value eq {account_id}"
            )
        else:
            # Without an email or a name at a known account a retry could not find it again: skip, not duplicate.
            return None
        wanted = {col: getattr(contact, attr) for attr, col in CONTACT_COLUMNS}
        row = self._first("contacts", self._contact_select, odata_filter)
        if row is None:
            body: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None}
            if account_id:
                body["parentcustomerid_account@odata.bind"] = f"/accounts({account_id})"
            return str(self._create("contacts", body, "contactid")["contactid"])
        contact_id = str(row["contactid"])
        changes: dict[str, Any] = {k: v for k, v in wanted.items() if v is not None and row.get(k) != v}
        if account_id and not row.get("_parentcustomerid_value"):
            changes["parentcustomerid_account@odata.bind"] = f"/accounts({account_id})"
        if changes:
            self._patch("contacts", contact_id, changes, row.get("@odata.etag"))
        return contact_id

    # -- keys -------------------------------------------------------------------------------------------------------
    def _key_path(self, referral_id: str | None) -> str:
        value = check_referral_id(referral_id)
        return f"opportunities({self.columns.referral_id}='{quote(value.replace(chr(39), chr(39) * 2), safe='')}')"

    @staticmethod
    def _guid(crm_id: str | None) -> str:
        try:
            return str(uuid.UUID(str(crm_id)))
        except ValueError:
            raise ValidationFailed([f"'{crm_id}' is not a Dynamics 365 record id"]) from None
