"""Dataverse emulator: the tables, their column types, the value rules and the error shape.

The tables are the ones the connector uses (opportunities, accounts, contacts, transactioncurrencies,
opportunitycloses) with the connector's custom columns. Written values are checked against the column
type as the service checks them (:func:`coerce`) and stored values are compared the way Dataverse compares
them (:func:`normalize`: numbers and dates as values, text case-insensitively). Every refusal is an
:class:`ODataError`, answered as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from .._server import Response
from ..package_mapping import CURRENT_AND_MICROSOFT_FIELDS, choice_values, column, entry, shipped_mapping

CODE_NOT_FOUND = "0x80040217"
CODE_THROTTLED = "0x80072322"  # the number of requests
CODE_EXECUTION_TIME = "0x80072321"  # the combined execution time
CODE_CONCURRENCY = "0x80060882"
CODE_DUPLICATE = "0x80040237"
CODE_ALREADY_CLOSED = "0x80040515"  # OpportunityIsAlreadyClosed
CODE_QUERY = "0x80060888"
DEFAULT_HELP_OPTIONS = choice_values("dynamics", "help_code")
DEFAULT_REASON_OPTIONS = choice_values("dynamics", "status_reason")  # the decline reasons
CURRENCIES = (  # iso code, name, symbol, exchange rate against the USD base currency
    ("USD", "US Dollar", "$", "1.0"),
    ("EUR", "Euro", "€", "0.92"),
    ("GBP", "Pound Sterling", "£", "0.79"),
    ("JPY", "Yen", "¥", "151.0"),
    ("AUD", "Australian Dollar", "A$", "1.52"),
    ("CAD", "Canadian Dollar", "CA$", "1.36"),
)

# The organisation's people, seeded by every reset: the application user the connector signs in as (what WhoAmI
# answers, and so the owner of every row it creates without naming one), and sellers and teams that an inbound
# opportunity can be routed to. Tests name them by these ids.
INTEGRATION_USER_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "dataverse-emulator/UserId"))
US_SELLER_ID = "5b0e6a52-8f2d-4c1e-9a3b-1d7c2e4f6a01"
EMEA_SELLER_ID = "5b0e6a52-8f2d-4c1e-9a3b-1d7c2e4f6a02"
AMERICAS_TEAM_ID = "9c4d2f17-3e6b-4a80-b5c1-7e2f0a9d3b01"
INBOUND_TEAM_ID = "9c4d2f17-3e6b-4a80-b5c1-7e2f0a9d3b02"
INTEGRATION_APP_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "dataverse-emulator/ApplicationId"))  # its app registration
SYSTEM_USERS = {  # systemuserid -> full name
    INTEGRATION_USER_ID: "Co-sell connector (application user)",
    US_SELLER_ID: "Dana Birch",
    EMEA_SELLER_ID: "Lena Vogel",
}
TEAMS = {  # teamid -> name
    AMERICAS_TEAM_ID: "Americas co-sell",
    INBOUND_TEAM_ID: "Inbound co-sell",
}

GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
OPPORTUNITY_STATUSES = {0: (1, 2), 1: (3,), 2: (4, 5)}  # statecode -> valid statuscodes
# Lead: Open (New, Contacted), Qualified (Qualified), Disqualified (Lost, Cannot Contact, No Longer Interested,
# Canceled).
LEAD_STATUSES = {0: (1, 2), 1: (3,), 2: (4, 5, 6, 7)}
LEAD_STATE_NAMES = {0: "Open", 1: "Qualified", 2: "Disqualified"}
STATE_NAMES = {0: "Open", 1: "Won", 2: "Lost"}

# Column types. Numbers and dates are compared as values, strings case-insensitively, as Dataverse does.
STRING, MEMO, INT, BIGINT, CHOICE, DECIMAL, MONEY, BOOL, DATE, DATETIME, GUID = (
    "string",
    "memo",
    "int",
    "bigint",
    "choice",
    "decimal",
    "money",
    "bool",
    "date",
    "datetime",
    "guid",
)
EDM = {
    STRING: "Edm.String",
    MEMO: "Edm.String",
    INT: "Edm.Int32",
    BIGINT: "Edm.Int64",
    CHOICE: "Edm.Int32",
    DECIMAL: "Edm.Decimal",
    MONEY: "Edm.Decimal",
    BOOL: "Edm.Boolean",
    DATE: "Edm.Date",
    DATETIME: "Edm.DateTimeOffset",
    GUID: "Edm.Guid",
}
TEXT_TYPES = frozenset({STRING, MEMO})
NUMBER_TYPES = frozenset({INT, BIGINT, CHOICE, DECIMAL, MONEY})
SYSTEM_COLUMNS = {
    "statecode": INT,
    "statuscode": INT,
    "createdon": DATETIME,
    "modifiedon": DATETIME,
    "versionnumber": BIGINT,
}
READ_ONLY = frozenset({"createdon", "modifiedon", "versionnumber", "fullname"})


# -- errors ---------------------------------------------------------------------------------------------------
class ODataError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with the given status."""

    def __init__(self, status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(self.status, {"error": {"code": self.code, "message": self.message}}, dict(self.headers))


def bad_request(message: str, code: str = "") -> ODataError:
    return ODataError(400, message, code)


def property_error(table: Table, name: str) -> ODataError:
    return bad_request(f"Could not find a property named '{name}' on type '{table.type_name}'.", CODE_QUERY)


# -- tables ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nav:
    """A single-valued navigation property: written with ``<name>@odata.bind``, read as ``column``. An owner lookup
    (``ownerid``) is one property pointing at either of two tables: ``also`` names the other."""

    column: str
    target: str  # entity set
    also: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target, *self.also)


@dataclass
class Table:
    entity_set: str
    logical_name: str
    pk: str
    columns: dict[str, str]
    navs: dict[str, Nav] = field(default_factory=dict)
    keys: tuple[tuple[str, ...], ...] = ()
    choices: dict[str, frozenset[int]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def lookups(self) -> frozenset[str]:
        return frozenset(nav.column for nav in self.navs.values())

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical_name}"


@dataclass(frozen=True)
class CustomColumns:
    """Logical names of the connector's custom opportunity columns (defaults: the connector's shipped mapping)."""

    sync: str = column("dynamics", "sync_enabled")
    referral_id: str = column("dynamics", "referral_id")
    referral_link: str = column("dynamics", "referral_link")
    help: str = column("dynamics", "help_code")
    products: str = column("dynamics", "solution_ids")
    audit: str = column("dynamics", "audit")
    decline_reason: str = column("dynamics", "status_reason")
    # The lead's column holding the referral id of a Partner Center lead (an alternate key, as on opportunities).
    lead_referral_id: str = str(shipped_mapping("dynamics")["lead"]["referral_id"])


DEFAULT_INTENT_OPTIONS = choice_values("dynamics", "purchase_intent")  # marketplace purchase intent


def _current_and_microsoft_columns() -> dict[str, str]:
    """Partner Center's current co-sell columns and Microsoft's side, with the shipped mapping's names."""
    kinds = {"memo": MEMO, "choice": CHOICE}
    return {
        column("dynamics", name): kinds.get(str(entry("dynamics", name)["type"]), STRING)
        for name in CURRENT_AND_MICROSOFT_FIELDS
    }


def _table(entity_set: str, logical: str, columns: dict[str, str], **extra: Any) -> Table:
    pk = f"{logical}id" if logical != "opportunityclose" else "activityid"
    all_columns = {pk: GUID, **columns}
    navs: dict[str, Nav] = extra.pop("navs", {})
    for nav in navs.values():
        all_columns.setdefault(nav.column, GUID)
    all_columns.update(SYSTEM_COLUMNS)
    defaults = {"statecode": 0, "statuscode": 1, **extra.pop("defaults", {})}
    return Table(entity_set, logical, pk, all_columns, navs, defaults=defaults, **extra)


def build_tables(custom: CustomColumns | None, account_country: str, help_options: Iterable[int]) -> dict[str, Table]:
    """The organisation's tables; ``custom`` None: an organisation nobody has set up for the connector yet (no
    custom opportunity columns, no alternate key), which ``setup-crm`` then customises through the Web API."""
    currency = Nav("_transactioncurrencyid_value", "transactioncurrencies")
    custom_columns = (
        {
            custom.sync: BOOL,
            custom.referral_id: STRING,
            custom.referral_link: STRING,
            custom.help: CHOICE,
            custom.products: STRING,
            custom.audit: MEMO,
            custom.decline_reason: CHOICE,
            **_current_and_microsoft_columns(),
        }
        if custom
        else {}
    )
    address = {
        f"address1_{part}": STRING
        for part in ("line1", "line2", "line3", "city", "stateorprovince", "postalcode", "country")
    }
    tables = [
        _table(
            "opportunities",
            "opportunity",
            {
                "name": STRING,
                "description": MEMO,
                "estimatedvalue": MONEY,
                "estimatedclosedate": DATE,
                "actualvalue": MONEY,
                "actualclosedate": DATE,
                "closeprobability": INT,
                "opportunityratingcode": CHOICE,
                "stepname": STRING,
                **custom_columns,
            },
            navs={
                "originatingleadid": Nav("_originatingleadid_value", "leads"),
                "customerid_account": Nav("_customerid_value", "accounts"),
                "customerid_contact": Nav("_customerid_value", "contacts"),
                "parentaccountid": Nav("_parentaccountid_value", "accounts"),
                "parentcontactid": Nav("_parentcontactid_value", "contacts"),
                "transactioncurrencyid": currency,
                "ownerid": Nav("_ownerid_value", "systemusers", also=("teams",)),
            },
            keys=((custom.referral_id,),) if custom else (),
            defaults={custom.sync: False} if custom else {},
            choices={
                **({custom.help: frozenset(help_options)} if custom else {}),
                **({custom.decline_reason: frozenset(DEFAULT_REASON_OPTIONS)} if custom else {}),
                **({column("dynamics", "purchase_intent"): frozenset(DEFAULT_INTENT_OPTIONS)} if custom else {}),
                "opportunityratingcode": frozenset({1, 2, 3}),
            },
        ),
        _lead_table(custom, address),
        _table(
            "accounts",
            "account",
            {
                "name": STRING,
                "accountnumber": STRING,
                "telephone1": STRING,
                "emailaddress1": STRING,
                "websiteurl": STRING,
                **address,
                account_country: STRING,
            },
            navs={
                "parentaccountid": Nav("_parentaccountid_value", "accounts"),
                "primarycontactid": Nav("_primarycontactid_value", "contacts"),
                "transactioncurrencyid": currency,
            },
        ),
        _table(
            "contacts",
            "contact",
            {
                "firstname": STRING,
                "lastname": STRING,
                "fullname": STRING,
                "emailaddress1": STRING,
                "telephone1": STRING,
                "mobilephone": STRING,
                "jobtitle": STRING,
            },
            navs={
                "parentcustomerid_account": Nav("_parentcustomerid_value", "accounts"),
                "parentcustomerid_contact": Nav("_parentcustomerid_value", "contacts"),
                "transactioncurrencyid": currency,
            },
        ),
        _table(
            "transactioncurrencies",
            "transactioncurrency",
            {
                "isocurrencycode": STRING,
                "currencyname": STRING,
                "currencysymbol": STRING,
                "exchangerate": DECIMAL,
                "currencyprecision": INT,
            },
        ),
        _table(
            "systemusers",
            "systemuser",
            {"fullname": STRING, "domainname": STRING, "isdisabled": BOOL, "applicationid": GUID},
        ),
        _table("teams", "team", {"name": STRING}),
        # Security: business units, roles and the privileges a role holds (see emulators.dataverse.security).
        _table(
            "businessunits",
            "businessunit",
            {"name": STRING},
            navs={"parentbusinessunitid": Nav("_parentbusinessunitid_value", "businessunits")},
        ),
        _table(
            "roles", "role", {"name": STRING}, navs={"businessunitid": Nav("_businessunitid_value", "businessunits")}
        ),
        _table("privileges", "privilege", {"name": STRING}),
        _table(
            "opportunitycloses",
            "opportunityclose",
            {
                "subject": STRING,
                "description": MEMO,
                "actualrevenue": MONEY,
                "actualend": DATE,
            },
            navs={"opportunityid": Nav("_opportunityid_value", "opportunities")},
        ),
    ]
    return {t.entity_set: t for t in tables}


def _lead_table(custom: CustomColumns | None, address: dict[str, str]) -> Table:
    """The lead table; an organisation set up for the connector has the referral id column and its alternate key."""
    return _table(
        "leads",
        "lead",
        {
            "subject": STRING,
            "firstname": STRING,
            "lastname": STRING,
            "fullname": STRING,
            "companyname": STRING,
            "emailaddress1": STRING,
            "telephone1": STRING,
            "jobtitle": STRING,
            "description": MEMO,
            "estimatedamount": MONEY,
            "estimatedclosedate": DATE,
            **address,
            **({custom.lead_referral_id: STRING} if custom else {}),
        },
        navs={
            "parentaccountid": Nav("_parentaccountid_value", "accounts"),
            "parentcontactid": Nav("_parentcontactid_value", "contacts"),
            "qualifyingopportunityid": Nav("_qualifyingopportunityid_value", "opportunities"),
            "transactioncurrencyid": Nav("_transactioncurrencyid_value", "transactioncurrencies"),
            "ownerid": Nav("_ownerid_value", "systemusers", also=("teams",)),
        },
        keys=((custom.lead_referral_id,),) if custom else (),
    )


# -- values ---------------------------------------------------------------------------------------------------
def iso_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _convert_error(value: Any, ctype: str) -> ODataError:
    return bad_request(f"Cannot convert the literal '{value}' to the expected type '{EDM[ctype]}'.")


def coerce(table: Table, column: str, value: Any) -> Any:
    """Validate a written value against the column type and return its stored (JSON) form."""
    ctype = table.columns[column]
    if value is None:
        return None
    if ctype in TEXT_TYPES:
        if not isinstance(value, str):
            raise _convert_error(value, ctype)
        return value
    if ctype in (INT, BIGINT, CHOICE):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _convert_error(value, ctype)
        allowed = table.choices.get(column)
        if allowed is not None and value not in allowed:
            raise bad_request(
                f"A validation error occurred. The value {value} of '{column}' on record of type "
                f"'{table.logical_name}' is outside the valid range. "
                f"Accepted Values: {','.join(str(v) for v in sorted(allowed))}"
            )
        return value
    if ctype in (DECIMAL, MONEY):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _convert_error(value, ctype)
        # Money keeps four decimal places in Dataverse.
        return float(round(Decimal(str(value)), 4 if ctype == MONEY else 10))
    if ctype == BOOL:
        if not isinstance(value, bool):
            raise _convert_error(value, ctype)
        return value
    if ctype == DATE:
        if not isinstance(value, str) or not DATE_RE.fullmatch(value):
            raise _convert_error(value, ctype)
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise _convert_error(value, ctype) from None
    if ctype == DATETIME:
        try:
            return iso_datetime(parse_datetime(value))
        except (TypeError, ValueError, AttributeError):
            raise _convert_error(value, ctype) from None
    if ctype == GUID:
        if not isinstance(value, str) or not GUID_RE.fullmatch(value):
            raise _convert_error(value, ctype)
        return value.lower()
    raise _convert_error(value, ctype)  # pragma: no cover - every type is handled above


def normalize(ctype: str, value: Any) -> Any:
    """A comparable form of a stored value."""
    if value is None:
        return None
    if ctype in TEXT_TYPES:
        return str(value).casefold()
    if ctype in NUMBER_TYPES:
        return Decimal(str(value))
    if ctype == DATETIME:
        return parse_datetime(value)
    if ctype == DATE:
        return date.fromisoformat(str(value)[:10])
    if ctype == GUID:
        return str(value).lower()
    return value


def type_family(ctype: str) -> str:
    if ctype in TEXT_TYPES:
        return "text"
    if ctype in NUMBER_TYPES:
        return "number"
    return "date" if ctype in (DATE, DATETIME) else ctype
