"""Dataverse (Dynamics 365) Web API emulator: an in-memory OData v4 subset for tests and the local demo.

``python -m emulators.dataverse [--port N]`` serves ``/api/data/v9.2/`` with the tables the connector
uses (opportunities, accounts, contacts, transactioncurrencies, opportunitycloses). It is strict where
the real service is strict (types in ``$filter``, unknown columns, lookups written only through
``@odata.bind``, closed opportunities read-only) so a client bug shows up here, not in a customer's org.

Tests drive it through the ``/_emulator/...`` routes or the same operations as Python methods:
:meth:`DataverseEmulator.reset`, :meth:`seed`, :meth:`counters`, :meth:`inject_fault`, :meth:`table`,
:meth:`writes`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cmp_to_key
from typing import Any
from urllib.parse import unquote

from ._server import Emulator, Request, Response, main

API = "/api/data/v9.2"
MAX_PAGE_SIZE = 5000
CODE_NOT_FOUND = "0x80040217"
CODE_THROTTLED = "0x80072322"
CODE_CONCURRENCY = "0x80060882"
CODE_DUPLICATE = "0x80040237"
CODE_QUERY = "0x80060888"
THROTTLED_MESSAGE = "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
DEFAULT_HELP_OPTIONS = tuple(range(100000000, 100000006))
CURRENCIES = (  # iso code, name, symbol, exchange rate against the USD base currency
    ("USD", "US Dollar", "$", "1.0"),
    ("EUR", "Euro", "€", "0.92"),
    ("GBP", "Pound Sterling", "£", "0.79"),
    ("JPY", "Yen", "¥", "151.0"),
    ("AUD", "Australian Dollar", "A$", "1.52"),
    ("CAD", "Canadian Dollar", "CA$", "1.36"),
)

GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
OPPORTUNITY_STATUSES = {0: (1, 2), 1: (3,), 2: (4, 5)}  # statecode -> valid statuscodes
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

Predicate = Callable[[dict[str, Any]], bool]


class ODataError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with the given status."""

    def __init__(self, status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(self.status, {"error": {"code": self.code, "message": self.message}}, dict(self.headers))


def _bad_request(message: str, code: str = "") -> ODataError:
    return ODataError(400, message, code)


def _json_body(request: Request) -> Any:
    try:
        return request.json()
    except ValueError:
        raise _bad_request("The request body is not valid JSON.") from None


# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nav:
    """A single-valued navigation property: written with ``<name>@odata.bind``, read as ``column``."""

    column: str
    target: str  # entity set


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
    """Logical names of the connector's custom opportunity columns (ARCHITECTURE defaults)."""

    sync: str = "new_syncwithpartnercenter"
    referral_id: str = "new_referralidentifier"
    referral_link: str = "new_referrallink"
    help: str = "new_howcanmicrosofthelp"
    products: str = "new_products"
    audit: str = "new_audit"


def _table(entity_set: str, logical: str, columns: dict[str, str], **extra: Any) -> Table:
    pk = f"{logical}id" if logical != "opportunityclose" else "activityid"
    all_columns = {pk: GUID, **columns}
    navs: dict[str, Nav] = extra.pop("navs", {})
    for nav in navs.values():
        all_columns.setdefault(nav.column, GUID)
    all_columns.update(SYSTEM_COLUMNS)
    defaults = {"statecode": 0, "statuscode": 1, **extra.pop("defaults", {})}
    return Table(entity_set, logical, pk, all_columns, navs, defaults=defaults, **extra)


def build_tables(custom: CustomColumns, account_country: str, help_options: Iterable[int]) -> dict[str, Table]:
    currency = Nav("_transactioncurrencyid_value", "transactioncurrencies")
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
                custom.sync: BOOL,
                custom.referral_id: STRING,
                custom.referral_link: STRING,
                custom.help: CHOICE,
                custom.products: STRING,
                custom.audit: MEMO,
            },
            navs={
                "customerid_account": Nav("_customerid_value", "accounts"),
                "customerid_contact": Nav("_customerid_value", "contacts"),
                "parentaccountid": Nav("_parentaccountid_value", "accounts"),
                "parentcontactid": Nav("_parentcontactid_value", "contacts"),
                "transactioncurrencyid": currency,
            },
            keys=((custom.referral_id,),),
            defaults={custom.sync: False},
            choices={custom.help: frozenset(help_options), "opportunityratingcode": frozenset({1, 2, 3})},
        ),
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


# ---------------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _convert_error(value: Any, ctype: str) -> ODataError:
    return _bad_request(f"Cannot convert the literal '{value}' to the expected type '{EDM[ctype]}'.")


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
            raise _bad_request(
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
            return _iso(_parse_datetime(value))
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
        return _parse_datetime(value)
    if ctype == DATE:
        return date.fromisoformat(str(value)[:10])
    if ctype == GUID:
        return str(value).lower()
    return value


def _family(ctype: str) -> str:
    if ctype in TEXT_TYPES:
        return "text"
    if ctype in NUMBER_TYPES:
        return "number"
    return "date" if ctype in (DATE, DATETIME) else ctype


# ---------------------------------------------------------------------------------------------------------------
# $filter, $orderby, keys
# ---------------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*')
     |(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])
     |(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
     |(?P<date>\d{4}-\d{2}-\d{2})(?![\w:])
     |(?P<number>-?\d+(?:\.\d+)?)(?![\w.])
     |(?P<name>[A-Za-z_][\w.]*)
     |(?P<punct>[(),])
    )""",
    re.VERBOSE,
)
COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
STRING_FUNCTIONS = {
    "contains": lambda value, arg: arg in value,
    "startswith": lambda value, arg: value.startswith(arg),
    "endswith": lambda value, arg: value.endswith(arg),
}


def _syntax_error(what: str) -> ODataError:
    return _bad_request(f"Syntax error in {what}.", CODE_QUERY)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position, text = 0, text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise _bad_request(f"Syntax error at position {position} in $filter '{text}'.", CODE_QUERY)
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


@dataclass(frozen=True)
class _Operand:
    kind: str  # "column" or a literal kind: string, guid, datetime, date, number, bool, null
    text: str
    ctype: str = ""


def _property_error(table: Table, name: str) -> ODataError:
    return _bad_request(f"Could not find a property named '{name}' on type '{table.type_name}'.", CODE_QUERY)


def _literal(operand: _Operand, ctype: str, op: str) -> Any:
    """The comparable value of a literal compared with a column of ``ctype``."""
    kind, text = operand.kind, operand.text
    ok = (
        kind == "null"
        or (kind == "string" and ctype in TEXT_TYPES)
        or (kind == "number" and ctype in NUMBER_TYPES)
        or (kind == "bool" and ctype == BOOL)
        or (kind == "guid" and ctype == GUID)
        or (kind in ("datetime", "date") and ctype in (DATE, DATETIME))
    )
    if not ok:
        found = {
            "string": "Edm.String",
            "number": "Edm.Decimal",
            "bool": "Edm.Boolean",
            "guid": "Edm.Guid",
            "datetime": "Edm.DateTimeOffset",
            "date": "Edm.Date",
        }[kind]
        raise _bad_request(
            f"A binary operator with incompatible types was detected. Found operand types "
            f"'{EDM[ctype]}' and '{found}' for operator kind '{op}'.",
            CODE_QUERY,
        )
    if kind == "null":
        return None
    if kind == "string":
        return text[1:-1].replace("''", "'").casefold()
    if kind == "number":
        return Decimal(text)
    if kind == "bool":
        return text == "true"
    if kind == "guid":
        return text.lower()
    if kind == "date":
        day = date.fromisoformat(text)
        return day if ctype == DATE else datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        moment = _parse_datetime(text)
    except ValueError:
        raise _syntax_error("a datetime literal") from None
    return moment.date() if ctype == DATE else moment


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    return {"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op]


class FilterParser:
    """Recursive descent over or / and / not / comparison / string function, compiled to a predicate."""

    def __init__(self, table: Table, text: str) -> None:
        self.table = table
        self.tokens = _tokens(text)
        self.position = 0

    def parse(self) -> Predicate:
        predicate = self._or()
        if self.position != len(self.tokens):
            raise _syntax_error(f"$filter near '{self.tokens[self.position][1]}'")
        return predicate

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise _syntax_error("$filter: unexpected end")
        self.position += 1
        return token

    def _accept(self, text: str) -> bool:
        token = self._peek()
        if token is not None and token[1] == text and token[0] in ("name", "punct"):
            self.position += 1
            return True
        return False

    def _expect(self, text: str) -> None:
        if not self._accept(text):
            raise _syntax_error(f"$filter: expected '{text}'")

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._accept("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda row: any(p(row) for p in parts))

    def _and(self) -> Predicate:
        parts = [self._not()]
        while self._accept("and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else (lambda row: all(p(row) for p in parts))

    def _not(self) -> Predicate:
        if self._accept("not"):
            inner = self._not()
            return lambda row: not inner(row)
        return self._primary()

    def _primary(self) -> Predicate:
        if self._accept("("):
            inner = self._or()
            self._expect(")")
            return inner
        token = self._peek()
        if (
            token is not None
            and token[0] == "name"
            and self.position + 1 < len(self.tokens)
            and self.tokens[self.position + 1][1] == "("
        ):
            return self._function()
        left = self._operand()
        following = self._peek()
        if following is None or following[1] not in COMPARISONS:
            if left.kind == "column" and left.ctype == BOOL:  # a bare boolean column is a predicate
                return lambda row: row.get(left.text) is True
            raise _syntax_error("$filter: expected a comparison operator")
        op = self._next()[1]
        return self._comparison(left, op, self._operand())

    def _operand(self) -> _Operand:
        kind, text = self._next()
        if kind == "name":
            if text in ("true", "false"):
                return _Operand("bool", text)
            if text == "null":
                return _Operand("null", text)
            if text not in self.table.columns:
                raise _property_error(self.table, text)
            return _Operand("column", text, self.table.columns[text])
        if kind == "punct":
            raise _syntax_error(f"$filter near '{text}'")
        return _Operand(kind, text)

    def _comparison(self, left: _Operand, op: str, right: _Operand) -> Predicate:
        if left.kind != "column" and right.kind != "column":
            raise _bad_request("A comparison needs at least one column.", CODE_QUERY)
        if left.kind == "column" and right.kind == "column":
            if _family(left.ctype) != _family(right.ctype):
                raise _bad_request(
                    f"A binary operator with incompatible types was detected. Found operand types "
                    f"'{EDM[left.ctype]}' and '{EDM[right.ctype]}' for operator kind '{op}'.",
                    CODE_QUERY,
                )
            return lambda row: _compare(
                op, normalize(left.ctype, row.get(left.text)), normalize(right.ctype, row.get(right.text))
            )
        column, literal, flipped = (left, right, False) if left.kind == "column" else (right, left, True)
        value = _literal(literal, column.ctype, op)
        mirrored = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}.get(op, op) if flipped else op
        return lambda row: _compare(mirrored, normalize(column.ctype, row.get(column.text)), value)

    def _function(self) -> Predicate:
        name = self._next()[1]
        if name not in STRING_FUNCTIONS:
            raise _bad_request(f"The function '{name}' is not supported by the Dataverse emulator.", CODE_QUERY)
        self._expect("(")
        column = self._operand()
        self._expect(",")
        argument = self._operand()
        self._expect(")")
        if column.kind != "column" or column.ctype not in TEXT_TYPES or argument.kind != "string":
            raise _bad_request(f"'{name}' needs a text column and a string literal.", CODE_QUERY)
        needle, test = _literal(argument, column.ctype, name), STRING_FUNCTIONS[name]
        return lambda row: row.get(column.text) is not None and test(str(row[column.text]).casefold(), needle)


def parse_orderby(table: Table, text: str) -> list[tuple[str, bool]]:
    order: list[tuple[str, bool]] = []
    for part in (p.strip() for p in text.split(",")):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise _syntax_error(f"$orderby '{text}'")
        if words[0] not in table.columns:
            raise _property_error(table, words[0])
        order.append((words[0], len(words) == 2 and words[1] == "desc"))
    return order


def parse_select(table: Table, text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in table.columns:
            raise _property_error(table, name)
    return names


_KEY_PART = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*('(?:[^']|'')*'|[^,']+?)\s*(?:,|$)")


def parse_key(text: str) -> str | dict[str, Any]:
    """``<guid>`` or ``name='value'[,name2=value2]`` (already percent-decoded)."""
    text = text.strip()
    if GUID_RE.fullmatch(text):
        return text.lower()
    values: dict[str, Any] = {}
    position = 0
    while position < len(text):
        match = _KEY_PART.match(text, position)
        if not match or match.end() == position:
            raise _bad_request("Bad Request - Error in query syntax.", CODE_QUERY)
        name, raw = match.group(1), match.group(2)
        if raw.startswith("'"):
            values[name] = raw[1:-1].replace("''", "'")
        elif GUID_RE.fullmatch(raw):
            values[name] = raw.lower()
        elif re.fullmatch(r"-?\d+", raw):
            values[name] = int(raw)
        else:
            raise _bad_request("Bad Request - Error in query syntax.", CODE_QUERY)
        position = match.end()
    if not values:
        raise _bad_request("Bad Request - Error in query syntax.", CODE_QUERY)
    return values


def _sort_comparator(table: Table, order: list[tuple[str, bool]]) -> Callable[[list[Any], list[Any]], int]:
    types = [table.columns[column] for column, _ in order]

    def compare(left: list[Any], right: list[Any]) -> int:
        for (_, descending), ctype, a, b in zip(order, types, left, right, strict=True):
            na, nb = normalize(ctype, a), normalize(ctype, b)
            if na == nb:
                continue
            # Nulls sort first ascending, as in SQL Server.
            result = -1 if na is None else 1 if nb is None else (-1 if na < nb else 1)
            return -result if descending else result
        return 0

    return compare


def _encode_token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode("utf-8")).decode("ascii").rstrip("=")


def _decode_token(token: str) -> dict[str, Any]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise _bad_request("The $skiptoken is not valid.", CODE_QUERY) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("after"), list):
        raise _bad_request("The $skiptoken is not valid.", CODE_QUERY)
    return payload


def parse_prefer(header: str | None) -> dict[str, str]:
    """``Prefer`` preferences by lower-cased name (quoted values unquoted; commas inside quotes kept)."""
    prefs: dict[str, str] = {}
    for name, value in re.findall(r'\s*([\w.\-]+)\s*(?:=\s*("[^"]*"|[^,]*))?\s*(?:,|$)', header or ""):
        if name:
            prefs[name.lower()] = value.strip().strip('"')
    return prefs


# ---------------------------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Row:
    values: dict[str, Any]
    targets: dict[str, str] = field(default_factory=dict)  # lookup column -> entity set it points to


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path: re.Pattern[str] | None


@dataclass
class _Query:
    select: list[str] | None
    predicate: Predicate
    order: list[tuple[str, bool]]
    top: int | None
    count: bool
    token: dict[str, Any] | None


class DataverseEmulator(Emulator):
    name = "dataverse"

    def __init__(
        self,
        *,
        columns: CustomColumns | None = None,
        account_country_column: str = "address1_country",
        help_options: Iterable[int] = DEFAULT_HELP_OPTIONS,
        required_token: str | None = None,
        base_currency: str | None = "USD",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.columns = columns or CustomColumns()
        self.tables = build_tables(self.columns, account_country_column, help_options)
        self._configured_token = required_token
        self.required_token = required_token
        self.base_currency = base_currency
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rows: dict[str, dict[str, _Row]] = {}
        self._faults: list[_Fault] = []
        self._writes: list[dict[str, Any]] = []
        self._counters: dict[str, Any] = {}
        self._version = 0
        self._register_routes()
        self.reset()

    # -- control (Python) ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty every table (currencies re-seeded), counters, faults and logs; restore the configured token."""
        with self.lock:
            self._rows = {name: {} for name in self.tables}
            self._faults.clear()
            self._writes.clear()
            self.request_log.clear()
            self.required_token = self._configured_token
            self._version = 1000
            self.reset_counters()
            for code, currency_name, symbol, rate in CURRENCIES:
                self._insert(
                    self.tables["transactioncurrencies"],
                    {
                        "transactioncurrencyid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"transactioncurrency/{code}")),
                        "isocurrencycode": code,
                        "currencyname": currency_name,
                        "currencysymbol": symbol,
                        "exchangerate": float(rate),
                        "currencyprecision": 0 if code == "JPY" else 2,
                    },
                    {},
                    seeding=True,
                )

    def reset_counters(self) -> None:
        with self.lock:
            self._counters = {
                "tables": {
                    name: {"creates": 0, "updates": 0, "deletes": 0, "actions": 0, "reads": 0} for name in self.tables
                },
                "actions": {"WinOpportunity": 0, "LoseOpportunity": 0},
                "requests": 0,
                "faults": 0,
            }

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self._counters))

    def seed(self, entity_set: str, records: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert rows as given (system columns and ``_x_value`` lookups may be set); not counted as writes."""
        table = self._table(entity_set)
        items = [records] if isinstance(records, dict) else list(records)
        with self.lock:
            created = []
            for record in items:
                values, targets = self._parse_body(table, record, seeding=True)
                created.append(self._render(table, self._insert(table, values, targets, seeding=True)))
            return created

    def inject_fault(
        self,
        status: int = 429,
        count: int = 1,
        retry_after: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` API requests (matching ``method`` / the ``path`` regex) with ``status``."""
        if retry_after is None and status in (429, 503):
            retry_after = 1
        with self.lock:
            self._faults.append(
                _Fault(
                    status, count, retry_after, method.upper() if method else None, re.compile(path) if path else None
                )
            )

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def table(self, entity_set: str) -> list[dict[str, Any]]:
        table = self._table(entity_set)
        with self.lock:
            return [self._render(table, row) for row in self._rows[entity_set].values()]

    def record(self, entity_set: str, record_id: str) -> dict[str, Any] | None:
        table = self._table(entity_set)
        with self.lock:
            row = self._rows[entity_set].get(record_id.lower())
            return self._render(table, row) if row else None

    def writes(self) -> list[dict[str, Any]]:
        """Successful writes in order: operation, table, id, the body keys sent and the conditional headers."""
        with self.lock:
            return json.loads(json.dumps(self._writes))

    def set_required_token(self, token: str | None) -> None:
        with self.lock:
            self.required_token = token

    # -- dispatch ---------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_emulator/"):
            return super().dispatch(request)
        try:
            with self.lock:
                self._counters["requests"] += 1
                self._raise_fault(request)
            self._check_headers(request)
            response = super().dispatch(request)
        except ODataError as exc:
            response = exc.response()
        response.headers.setdefault("OData-Version", "4.0")
        if isinstance(response.body, dict):
            response.headers.setdefault("Content-Type", "application/json; odata.metadata=minimal")
        return response

    def _raise_fault(self, request: Request) -> None:
        for fault in self._faults:
            if fault.remaining <= 0 or (fault.method and fault.method != request.method):
                continue
            if fault.path and not fault.path.search(unquote(request.path)):
                continue
            fault.remaining -= 1
            self._counters["faults"] += 1
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            if fault.status == 429:
                raise ODataError(429, THROTTLED_MESSAGE, CODE_THROTTLED, headers)
            if fault.status == 401:
                raise ODataError(401, "The access token has expired.", "", headers)
            raise ODataError(fault.status, "The service is temporarily unavailable. Try again later.", "", headers)
        self._faults[:] = [f for f in self._faults if f.remaining > 0]

    def _check_headers(self, request: Request) -> None:
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        challenge = {
            "WWW-Authenticate": "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize"
        }
        if scheme.lower() != "bearer" or not token.strip():
            raise ODataError(401, "Request is not authenticated: send 'Authorization: Bearer <token>'.", "", challenge)
        if self.required_token is not None and token.strip() != self.required_token:
            raise ODataError(401, "The access token is not valid for this organization.", "", challenge)
        for name in ("odata-version", "odata-maxversion"):
            value = request.header(name)
            if value is not None and not value.strip().startswith("4."):
                raise _bad_request(f"The {name} header value '{value}' is not supported; use 4.0.")

    def _register_routes(self) -> None:
        entity = rf"{API}/(?P<set>[A-Za-z_]+)\((?P<key>.*)\)"
        self.route("POST", r"/_emulator/reset", self._control_reset)
        self.route("POST", r"/_emulator/seed/(?P<set>\w+)", self._control_seed)
        self.route("GET", r"/_emulator/counters", lambda r: Response(200, self.counters()))
        self.route("DELETE", r"/_emulator/counters", self._control_reset_counters)
        self.route("POST", r"/_emulator/faults", self._control_fault)
        self.route("DELETE", r"/_emulator/faults", self._control_clear_faults)
        self.route("GET", r"/_emulator/tables/(?P<set>\w+)", self._control_table)
        self.route("GET", r"/_emulator/writes", lambda r: Response(200, {"value": self.writes()}))
        self.route("POST", r"/_emulator/token", self._control_token)
        self.route("GET", rf"{API}/?", self._service_document)
        self.route("GET", rf"{API}/WhoAmI(?:\(\))?", self._who_am_i)
        self.route(
            "POST",
            rf"{API}/(?:Microsoft\.Dynamics\.CRM\.)?(?P<action>WinOpportunity|LoseOpportunity)",
            self._close_opportunity,
        )
        self.route("GET", rf"{API}/(?P<set>[A-Za-z_]+)/(?:\$|%24)count", self._count)
        self.route("DELETE", rf"{entity}/(?P<prop>[A-Za-z_]+)(?P<ref>/(?:\$|%24)ref)?", self._delete_property)
        self.route("GET", entity, self._get_entity)
        self.route("PATCH", entity, self._patch_entity)
        self.route("DELETE", entity, self._delete_entity)
        self.route("GET", rf"{API}/(?P<set>[A-Za-z_]+)", self._get_collection)
        self.route("POST", rf"{API}/(?P<set>[A-Za-z_]+)", self._post_collection)

    # -- control routes ---------------------------------------------------------------------------------------
    def _control_reset(self, request: Request) -> Response:
        self.reset()
        return Response(204)

    def _control_reset_counters(self, request: Request) -> Response:
        self.reset_counters()
        return Response(204)

    def _control_seed(self, request: Request) -> Response:
        try:
            return Response(201, {"value": self.seed(request.params["set"], _json_body(request))})
        except ODataError as exc:
            return exc.response()

    def _control_fault(self, request: Request) -> Response:
        body = request.json() or {}
        self.inject_fault(
            int(body.get("status", 429)),
            int(body.get("count", 1)),
            int(body["retryAfter"]) if body.get("retryAfter") is not None else None,
            body.get("method"),
            body.get("path"),
        )
        return Response(204)

    def _control_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return Response(204)

    def _control_table(self, request: Request) -> Response:
        try:
            return Response(200, {"value": self.table(request.params["set"])})
        except ODataError as exc:
            return exc.response()

    def _control_token(self, request: Request) -> Response:
        self.set_required_token((request.json() or {}).get("token"))
        return Response(204)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _table(self, entity_set: str) -> Table:
        table = self.tables.get(entity_set)
        if table is None:
            raise ODataError(404, f"Resource not found for the segment '{entity_set}'.", CODE_QUERY)
        return table

    def _base(self, request: Request) -> str:
        return f"http://{request.header('host') or f'127.0.0.1:{self.port}'}{API}"

    def _now(self) -> str:
        return _iso(self._clock())

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    @staticmethod
    def _etag(row: _Row) -> str:
        return f'W/"{row.values["versionnumber"]}"'

    def _render(
        self, table: Table, row: _Row, select: list[str] | None = None, annotations: bool = False
    ) -> dict[str, Any]:
        names = list(table.columns) if select is None else list(select)
        if select is not None:
            names.append(table.pk)
            # Dataverse adds the currency whenever a money column is selected.
            if any(table.columns[n] == MONEY for n in select) and "_transactioncurrencyid_value" in table.columns:
                names.append("_transactioncurrencyid_value")
        out: dict[str, Any] = {"@odata.etag": self._etag(row)}
        for name in dict.fromkeys(names):
            out[name] = row.values.get(name)
            target = row.targets.get(name)
            if annotations and target and out[name] is not None:
                out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = self.tables[target].logical_name
        return out

    def _find(self, table: Table, key: str | dict[str, Any]) -> _Row | None:
        rows = self._rows[table.entity_set]
        if isinstance(key, str):
            return rows.get(key)
        if set(key) == {table.pk}:
            return rows.get(str(key[table.pk]))
        if not any(set(k) == set(key) for k in table.keys):
            raise _bad_request(
                f"The key in the request URI is not valid for resource '{table.type_name}'. Ensure "
                "that the names and number of key properties are correct.",
                CODE_QUERY,
            )
        wanted = {name: normalize(table.columns[name], value) for name, value in key.items()}
        for row in rows.values():
            if all(normalize(table.columns[n], row.values.get(n)) == v for n, v in wanted.items()):
                return row
        return None

    def _not_found(self, table: Table, key: str | dict[str, Any], status: int = 404) -> ODataError:
        if isinstance(key, str):
            return ODataError(status, f"{table.logical_name} With Id = {key} Does Not Exist", CODE_NOT_FOUND)
        return ODataError(
            status,
            f"A record with the specified key values does not exist in {table.logical_name} entity",
            CODE_NOT_FOUND,
        )

    def _resolve_bind(self, nav_name: str, nav: Nav, value: Any) -> str:
        match = re.fullmatch(r"(?:.*/)?(?P<set>[A-Za-z_]+)\((?P<key>.+)\)", value) if isinstance(value, str) else None
        if match is None:
            raise _bad_request(f"The value of '{nav_name}@odata.bind' must be a reference like '/{nav.target}(<id>)'.")
        if match.group("set") != nav.target:
            raise _bad_request(f"'{nav_name}' refers to {nav.target}, not to {match.group('set')}.")
        target = self.tables[nav.target]
        key = parse_key(unquote(match.group("key")))
        row = self._find(target, key)
        if row is None:
            raise self._not_found(target, key, status=400)
        return str(row.values[target.pk])

    def _parse_body(self, table: Table, body: Any, seeding: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        """Column changes and lookup targets from a request body, validated against the schema."""
        if not isinstance(body, dict):
            raise _bad_request("The request body must be a JSON object.")
        values: dict[str, Any] = {}
        targets: dict[str, str] = {}
        for key, value in body.items():
            if key.endswith("@odata.bind"):
                nav_name = key[: -len("@odata.bind")]
                nav = table.navs.get(nav_name)
                if nav is None:
                    raise _bad_request(f"'{nav_name}' is not a navigation property of {table.type_name}.", CODE_QUERY)
                values[nav.column] = None if value is None else self._resolve_bind(nav_name, nav, value)
                targets[nav.column] = nav.target
            elif "@" in key:
                continue  # instance annotations carry no data
            elif key in table.navs:
                if value is not None:
                    raise _bad_request(f"Set '{key}' with '{key}@odata.bind'; only null clears it directly.")
                values[table.navs[key].column] = None
            elif key in table.lookups:
                if not seeding:
                    raise _bad_request(
                        f"'{key}' is read-only; write the lookup through its navigation property with @odata.bind."
                    )
                values[key] = coerce(table, key, value)
                targets[key] = self._seed_target(table, key, values[key])
            elif key in READ_ONLY and not seeding:
                continue  # the service ignores system columns on write
            elif key in table.columns:
                values[key] = coerce(table, key, value)
            else:
                raise _bad_request(
                    f"The property '{key}' does not exist on type '{table.type_name}'. Make sure to "
                    "only use property names that are defined by the type.",
                    CODE_QUERY,
                )
        return values, targets

    def _seed_target(self, table: Table, column: str, value: str | None) -> str:
        candidates = [nav.target for nav in table.navs.values() if nav.column == column]
        for target in candidates:
            if value is not None and value in self._rows[target]:
                return target
        return candidates[0]

    def _check_keys(self, table: Table, values: dict[str, Any], pk: str) -> None:
        for key in table.keys:
            if any(values.get(name) is None for name in key):
                continue
            wanted = [normalize(table.columns[n], values[n]) for n in key]
            for other_id, other in self._rows[table.entity_set].items():
                if other_id != pk and [normalize(table.columns[n], other.values.get(n)) for n in key] == wanted:
                    raise ODataError(
                        412,
                        f"A record that has the attribute values {', '.join(key)} already "
                        "exists. The entity key requires that this set of attributes contains "
                        "unique values.",
                        CODE_DUPLICATE,
                    )

    def _check_opportunity_state(self, before: dict[str, Any] | None, changes: dict[str, Any]) -> None:
        """Open rows take statecode 0 only; closed rows accept nothing but a reopen (statecode 0)."""
        current_state = before["statecode"] if before else 0
        if current_state != 0:
            reopening = changes.get("statecode") == 0 and set(changes) <= {"statecode", "statuscode"}
            if not reopening:
                raise _bad_request(
                    f"The opportunity is closed ({STATE_NAMES.get(current_state)}) and read-only. "
                    "Reopen it first with a PATCH of statecode 0 and statuscode 1."
                )
            changes.setdefault("statuscode", 1)
        state = changes.get("statecode", current_state)
        if state not in OPPORTUNITY_STATUSES:
            raise _bad_request(f"{state} is not a valid state code for opportunity.")
        if state != 0:
            raise _bad_request(
                "An opportunity cannot be closed by setting statecode; use the WinOpportunity or "
                "LoseOpportunity action."
            )
        if "statecode" in changes and "statuscode" not in changes:
            changes["statuscode"] = 1
        status = changes.get("statuscode", before["statuscode"] if before else 1)
        if status not in OPPORTUNITY_STATUSES[state]:
            raise _bad_request(
                f"{status} is not a valid status code for state code OpportunityState."
                f"{STATE_NAMES[state]} on opportunity."
            )

    def _apply_rules(self, table: Table, before: dict[str, Any] | None, changes: dict[str, Any]) -> None:
        if table.entity_set == "opportunities":
            self._check_opportunity_state(before, changes)
        if table.entity_set == "contacts" and ({"firstname", "lastname"} & set(changes) or before is None):
            merged = {**(before or {}), **changes}
            full = " ".join(p for p in (merged.get("firstname"), merged.get("lastname")) if p)
            changes["fullname"] = full or None

    def _insert(self, table: Table, values: dict[str, Any], targets: dict[str, str], seeding: bool = False) -> _Row:
        pk = str(values.get(table.pk) or uuid.uuid4()).lower()
        if pk in self._rows[table.entity_set]:
            raise ODataError(412, "Cannot insert duplicate key.", CODE_DUPLICATE)
        changes = {k: v for k, v in values.items() if k != table.pk}
        if not seeding:
            self._apply_rules(table, None, changes)
        elif table.entity_set == "contacts" and "fullname" not in changes:
            self._apply_rules(table, None, changes)
        row_values: dict[str, Any] = dict.fromkeys(table.columns)
        row_values.update(table.defaults)
        row_values.update(changes)
        row_values[table.pk] = pk
        row = _Row(row_values, {k: v for k, v in targets.items() if row_values.get(k) is not None})
        if (
            self.base_currency
            and table.entity_set == "opportunities"
            and row_values.get("_transactioncurrencyid_value") is None
        ):
            # Dataverse stamps the organisation's base currency on new money-bearing records.
            currency = self._currency_row()
            if currency is not None:
                row_values["_transactioncurrencyid_value"] = currency.values["transactioncurrencyid"]
                row.targets["_transactioncurrencyid_value"] = "transactioncurrencies"
        self._check_keys(table, row_values, pk)
        now = self._now()
        row_values["createdon"] = row_values.get("createdon") if seeding and row_values.get("createdon") else now
        row_values["modifiedon"] = row_values.get("modifiedon") if seeding and row_values.get("modifiedon") else now
        row_values["versionnumber"] = self._next_version()
        self._rows[table.entity_set][pk] = row
        return row

    def _currency_row(self) -> _Row | None:
        for row in self._rows["transactioncurrencies"].values():
            if str(row.values.get("isocurrencycode")).upper() == str(self.base_currency).upper():
                return row
        return None

    def _update(self, table: Table, row: _Row, values: dict[str, Any], targets: dict[str, str]) -> None:
        changes = {k: v for k, v in values.items() if k != table.pk}
        self._apply_rules(table, row.values, changes)
        merged = {**row.values, **changes}
        self._check_keys(table, merged, str(row.values[table.pk]))
        row.values.update(changes)
        for column, target in targets.items():
            if row.values.get(column) is None:
                row.targets.pop(column, None)
            else:
                row.targets[column] = target
        row.values["modifiedon"] = self._now()
        # Every update bumps the row version, even when the values are unchanged.
        row.values["versionnumber"] = self._next_version()

    def _log_write(
        self,
        operation: str,
        table: Table,
        record_id: str,
        request: Request,
        body: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        counter = {"create": "creates", "update": "updates", "delete": "deletes", "action": "actions"}[operation]
        self._counters["tables"][table.entity_set][counter] += 1
        self._writes.append(
            {
                "operation": operation,
                "table": table.entity_set,
                "id": record_id,
                "method": request.method,
                "path": unquote(request.path),
                "columns": sorted(body) if body else [],
                "if_match": request.header("if-match"),
                "if_none_match": request.header("if-none-match"),
                **extra,
            }
        )

    def _write_response(self, request: Request, table: Table, row: _Row, created: bool) -> Response:
        prefer = parse_prefer(request.header("prefer"))
        headers = {
            "OData-EntityId": f"{self._base(request)}/{table.entity_set}({row.values[table.pk]})",
            "ETag": self._etag(row),
        }
        if prefer.get("return") != "representation":
            return Response(204, None, headers)
        select = parse_select(table, request.query["$select"]) if request.query.get("$select") else None
        body = {
            "@odata.context": f"{self._base(request)}/$metadata#{table.entity_set}/$entity",
            **self._render(table, row, select, self._wants_annotations(prefer)),
        }
        headers["Preference-Applied"] = "return=representation"
        del headers["OData-EntityId"]
        return Response(201 if created else 200, body, headers)

    @staticmethod
    def _wants_annotations(prefer: dict[str, str]) -> bool:
        wanted = prefer.get("odata.include-annotations", "")
        return wanted == "*" or "lookuplogicalname" in wanted or wanted == "Microsoft.Dynamics.CRM.*"

    def _entity_key(self, request: Request) -> tuple[Table, str | dict[str, Any]]:
        table = self._table(request.params["set"])
        return table, parse_key(unquote(request.params["key"]))

    # -- reads ------------------------------------------------------------------------------------------------
    def _service_document(self, request: Request) -> Response:
        return Response(
            200,
            {
                "@odata.context": f"{self._base(request)}/$metadata",
                "value": [{"name": n, "kind": "EntitySet", "url": n} for n in self.tables],
            },
        )

    def _who_am_i(self, request: Request) -> Response:
        ids = {
            name: str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataverse-emulator/{name}"))
            for name in ("BusinessUnitId", "UserId", "OrganizationId")
        }
        return Response(
            200, {"@odata.context": f"{self._base(request)}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", **ids}
        )

    def _parse_query(self, table: Table, query: dict[str, str]) -> _Query:
        for name in query:
            if name == "$skip":
                raise _bad_request(
                    "The query parameter $skip is not supported; page with odata.maxpagesize and @odata.nextLink.",
                    CODE_QUERY,
                )
            if name.startswith("$") and name not in ("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken"):
                raise _bad_request(f"The query option {name} is not supported by the Dataverse emulator.", CODE_QUERY)
        top = query.get("$top")
        if top is not None and (not top.isdigit() or int(top) < 1):
            raise _bad_request(f"Invalid value '{top}' for $top.", CODE_QUERY)
        return _Query(
            select=parse_select(table, query["$select"]) if query.get("$select") else None,
            predicate=FilterParser(table, query["$filter"]).parse() if query.get("$filter") else (lambda row: True),
            order=parse_orderby(table, query["$orderby"]) if query.get("$orderby") else [],
            top=int(top) if top is not None else None,
            count=query.get("$count", "").lower() == "true",
            token=_decode_token(query["$skiptoken"]) if query.get("$skiptoken") else None,
        )

    def _get_collection(self, request: Request) -> Response:
        table = self._table(request.params["set"])
        query = self._parse_query(table, request.query)
        prefer = parse_prefer(request.header("prefer"))
        max_page = prefer.get("odata.maxpagesize")
        if max_page is not None and (not max_page.isdigit() or int(max_page) < 1):
            raise _bad_request(f"Invalid odata.maxpagesize '{max_page}'.")
        annotations = self._wants_annotations(prefer)
        order = [*query.order, (table.pk, False)]
        with self.lock:
            self._counters["tables"][table.entity_set]["reads"] += 1
            rows = [row for row in self._rows[table.entity_set].values() if query.predicate(row.values)]
            compare = _sort_comparator(table, order)

            def sort_values(row: _Row) -> list[Any]:
                return [row.values.get(column) for column, _ in order]

            rows.sort(key=cmp_to_key(lambda a, b: compare(sort_values(a), sort_values(b))))
            total = len(rows)
            if query.token is not None:
                after = query.token["after"]
                if len(after) != len(order):
                    raise _bad_request("The $skiptoken does not match this query.", CODE_QUERY)
                rows = [row for row in rows if compare(sort_values(row), after) > 0]
            # $top is ignored when a page size is requested, as the service does.
            remaining = (
                None
                if max_page is not None
                else (query.token.get("remaining") if query.token is not None else query.top)
            )
            page_size = min(int(max_page) if max_page is not None else MAX_PAGE_SIZE, MAX_PAGE_SIZE)
            if remaining is not None:
                page_size = min(page_size, int(remaining))
            page = rows[:page_size]
            body: dict[str, Any] = {"@odata.context": self._context(request, table, query.select)}
            if query.count:
                body["@odata.count"] = min(total, MAX_PAGE_SIZE)
            body["value"] = [self._render(table, row, query.select, annotations) for row in page]
            more = len(rows) > page_size and (remaining is None or int(remaining) > page_size)
            if more and page:
                token = {
                    "after": sort_values(page[-1]),
                    "remaining": None if remaining is None else int(remaining) - page_size,
                }
                body["@odata.nextLink"] = self._next_link(request, table, _encode_token(token))
        headers = {}
        if max_page is not None:
            headers["Preference-Applied"] = f"odata.maxpagesize={min(int(max_page), MAX_PAGE_SIZE)}"
        return Response(200, body, headers)

    def _context(self, request: Request, table: Table, select: list[str] | None) -> str:
        suffix = f"({','.join(select)})" if select else ""
        return f"{self._base(request)}/$metadata#{table.entity_set}{suffix}"

    def _next_link(self, request: Request, table: Table, token: str) -> str:
        raw_query = request.raw_path.partition("?")[2]
        kept = [part for part in raw_query.split("&") if part and unquote(part.partition("=")[0]) != "$skiptoken"]
        return f"{self._base(request)}/{table.entity_set}?{'&'.join([*kept, f'$skiptoken={token}'])}"

    def _count(self, request: Request) -> Response:
        table = self._table(request.params["set"])
        query = self._parse_query(table, {k: v for k, v in request.query.items() if k == "$filter"})
        with self.lock:
            self._counters["tables"][table.entity_set]["reads"] += 1
            count = sum(1 for row in self._rows[table.entity_set].values() if query.predicate(row.values))
        return Response(200, str(min(count, MAX_PAGE_SIZE)), {"Content-Type": "text/plain"})

    def _get_entity(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        unsupported = [n for n in request.query if n.startswith("$") and n != "$select"]
        if unsupported:
            raise _bad_request(
                f"The query option {unsupported[0]} is not supported by the Dataverse emulator.", CODE_QUERY
            )
        select = parse_select(table, request.query["$select"]) if request.query.get("$select") else None
        prefer = parse_prefer(request.header("prefer"))
        with self.lock:
            self._counters["tables"][table.entity_set]["reads"] += 1
            row = self._find(table, key)
            if row is None:
                raise self._not_found(table, key)
            etag = self._etag(row)
            if request.header("if-none-match") == etag:
                return Response(304, None, {"ETag": etag})
            body = {
                "@odata.context": f"{self._context(request, table, select)}/$entity",
                **self._render(table, row, select, self._wants_annotations(prefer)),
            }
        return Response(200, body, {"ETag": etag})

    # -- writes -----------------------------------------------------------------------------------------------
    def _post_collection(self, request: Request) -> Response:
        table = self._table(request.params["set"])
        body = _json_body(request)
        with self.lock:
            values, targets = self._parse_body(table, body)
            row = self._insert(table, values, targets)
            self._log_write("create", table, row.values[table.pk], request, body)
            return self._write_response(request, table, row, created=True)

    def _patch_entity(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _bad_request("The request body must be a JSON object.")
        if_match, if_none_match = request.header("if-match"), request.header("if-none-match")
        key_columns = {table.pk} | (set(key) if isinstance(key, dict) else set())
        # Key columns come from the URL: the service drops them from the body.
        body = {k: v for k, v in body.items() if k not in key_columns}
        with self.lock:
            row = self._find(table, key)
            values, targets = self._parse_body(table, body)
            if row is None:
                if if_match is not None:
                    raise self._not_found(table, key)
                url_values = (
                    {table.pk: key}
                    if isinstance(key, str)
                    else {name: coerce(table, name, value) for name, value in key.items()}
                )
                row = self._insert(table, {**values, **url_values}, targets)
                self._log_write("create", table, row.values[table.pk], request, body)
                return self._write_response(request, table, row, created=True)
            if if_none_match is not None and if_none_match.strip() == "*":
                raise ODataError(412, "A record with matching key values already exists.", CODE_DUPLICATE)
            self._check_if_match(row, if_match)
            self._update(table, row, values, targets)
            self._log_write("update", table, row.values[table.pk], request, body)
            return self._write_response(request, table, row, created=False)

    def _check_if_match(self, row: _Row, if_match: str | None) -> None:
        if if_match is None or if_match.strip() == "*":
            return
        offered = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
        if self._etag(row).removeprefix("W/") not in offered:
            raise ODataError(
                412,
                "The version of the existing record doesn't match the RowVersion property provided.",
                CODE_CONCURRENCY,
            )

    def _delete_entity(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        with self.lock:
            row = self._find(table, key)
            if row is None:
                raise self._not_found(table, key)
            self._check_if_match(row, request.header("if-match"))
            record_id = str(row.values[table.pk])
            del self._rows[table.entity_set][record_id]
            # Lookups pointing at the deleted row are cleared rather than left dangling.
            for other_table in self._rows.values():
                for other in other_table.values():
                    for column, target in list(other.targets.items()):
                        if target == table.entity_set and other.values.get(column) == record_id:
                            other.values[column] = None
                            other.targets.pop(column)
            self._log_write("delete", table, record_id, request)
        return Response(204)

    def _delete_property(self, request: Request) -> Response:
        table, key = self._entity_key(request)
        prop, is_ref = request.params["prop"], "ref" in request.params
        if is_ref:
            if prop not in table.navs:
                raise _bad_request(f"'{prop}' is not a navigation property of {table.type_name}.", CODE_QUERY)
            change: dict[str, Any] = {prop: None}
        elif prop in table.columns and prop not in table.lookups and prop not in READ_ONLY and prop != table.pk:
            change = {prop: None}
        else:
            raise _property_error(table, prop)
        with self.lock:
            row = self._find(table, key)
            if row is None:
                raise self._not_found(table, key)
            values, targets = self._parse_body(table, change)
            self._update(table, row, values, targets)
            self._log_write("update", table, row.values[table.pk], request, change)
        return Response(204)

    def _close_opportunity(self, request: Request) -> Response:
        action = request.params["action"]
        state = 1 if action == "WinOpportunity" else 2
        body = _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("OpportunityClose"), dict):
            raise _bad_request(f"{action} needs an 'OpportunityClose' object.")
        status = body.get("Status")
        if isinstance(status, bool) or not isinstance(status, int):
            raise _bad_request(f"{action} needs an integer 'Status'.")
        if status not in OPPORTUNITY_STATUSES[state]:
            raise _bad_request(
                f"{status} is not a valid status code for state code OpportunityState."
                f"{STATE_NAMES[state]} on opportunity."
            )
        opportunities, closes = self.tables["opportunities"], self.tables["opportunitycloses"]
        with self.lock:
            close_values, close_targets = self._parse_body(closes, body["OpportunityClose"])
            opportunity_id = close_values.get("_opportunityid_value")
            if opportunity_id is None:
                raise _bad_request("OpportunityClose needs 'opportunityid@odata.bind'.")
            row = self._rows["opportunities"][opportunity_id]
            if row.values["statecode"] != 0:
                raise _bad_request(
                    f"The opportunity is already closed ({STATE_NAMES[row.values['statecode']]}); "
                    "reopen it before closing it again."
                )
            close_values.setdefault("subject", "Won" if state == 1 else "Lost")
            close_values.setdefault("actualend", self._clock().astimezone(UTC).date().isoformat())
            close_values.update({"statecode": 1, "statuscode": 2})  # the close activity is completed
            self._insert(closes, close_values, close_targets, seeding=True)
            revenue = close_values.get("actualrevenue")
            if revenue is None and state == 1:
                revenue = row.values.get("estimatedvalue")
            row.values.update(
                {
                    "statecode": state,
                    "statuscode": status,
                    "actualclosedate": close_values["actualend"],
                    "actualvalue": revenue,
                    "modifiedon": self._now(),
                    "versionnumber": self._next_version(),
                }
            )
            self._counters["actions"][action] += 1
            self._log_write("action", opportunities, opportunity_id, request, body, action=action, status=status)
        return Response(204)


def _main() -> None:
    main(DataverseEmulator, 7102)


if __name__ == "__main__":
    _main()
