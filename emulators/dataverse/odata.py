"""Dataverse emulator: what a Web API request says, parsed and checked against the table schema.

``$filter`` (comparisons, ``and`` / ``or`` / ``not``, ``contains`` / ``startswith`` / ``endswith``) is
compiled to a predicate over stored rows; ``$select`` and ``$orderby`` name real columns; entity keys
are a GUID or alternate-key values; ``$skiptoken`` is an opaque, self-contained paging state; ``Prefer``
preferences and the JSON body are read as the service reads them. Anything the emulator does not support
is refused with an error rather than ignored, so a client relying on it fails here first.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from .._server import Request
from .schema import (
    BOOL,
    CODE_QUERY,
    DATE,
    DATETIME,
    EDM,
    GUID,
    GUID_RE,
    NUMBER_TYPES,
    TEXT_TYPES,
    ODataError,
    Table,
    bad_request,
    normalize,
    parse_datetime,
    property_error,
    type_family,
)

Predicate = Callable[[dict[str, Any]], bool]

# -- $filter -------------------------------------------------------------------------------------------------
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
    return bad_request(f"Syntax error in {what}.", CODE_QUERY)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position, text = 0, text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise bad_request(f"Syntax error at position {position} in $filter '{text}'.", CODE_QUERY)
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


@dataclass(frozen=True)
class _Operand:
    kind: str  # "column" or a literal kind: string, guid, datetime, date, number, bool, null
    text: str
    ctype: str = ""


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
        raise bad_request(
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
        moment = parse_datetime(text)
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
                raise property_error(self.table, text)
            return _Operand("column", text, self.table.columns[text])
        if kind == "punct":
            raise _syntax_error(f"$filter near '{text}'")
        return _Operand(kind, text)

    def _comparison(self, left: _Operand, op: str, right: _Operand) -> Predicate:
        if left.kind != "column" and right.kind != "column":
            raise bad_request("A comparison needs at least one column.", CODE_QUERY)
        if left.kind == "column" and right.kind == "column":
            if type_family(left.ctype) != type_family(right.ctype):
                raise bad_request(
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
            raise bad_request(f"The function '{name}' is not supported by the Dataverse emulator.", CODE_QUERY)
        self._expect("(")
        column = self._operand()
        self._expect(",")
        argument = self._operand()
        self._expect(")")
        if column.kind != "column" or column.ctype not in TEXT_TYPES or argument.kind != "string":
            raise bad_request(f"'{name}' needs a text column and a string literal.", CODE_QUERY)
        needle, test = _literal(argument, column.ctype, name), STRING_FUNCTIONS[name]
        return lambda row: row.get(column.text) is not None and test(str(row[column.text]).casefold(), needle)


# -- $orderby, $select, keys ----------------------------------------------------------------------------------
def parse_orderby(table: Table, text: str) -> list[tuple[str, bool]]:
    order: list[tuple[str, bool]] = []
    for part in (p.strip() for p in text.split(",")):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise _syntax_error(f"$orderby '{text}'")
        if words[0] not in table.columns:
            raise property_error(table, words[0])
        order.append((words[0], len(words) == 2 and words[1] == "desc"))
    return order


def parse_select(table: Table, text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in table.columns:
            raise property_error(table, name)
    return names


def parse_expand(table: Table, text: str, tables: dict[str, Table]) -> dict[str, list[str] | None]:
    """``nav($select=a,b),nav2`` for single-valued navigation properties, as Dataverse takes them on an entity
    read; nested options other than ``$select`` are refused."""
    expanded: dict[str, list[str] | None] = {}
    for item in _top_level_items(text):
        match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*", item, re.S)
        if not match:
            raise bad_request(f"The $expand item '{item}' is not valid.", CODE_QUERY)
        name, options = match.group(1), match.group(2)
        nav = table.navs.get(name)
        if nav is None:
            raise bad_request(f"Could not find a property named '{name}' on type '{table.type_name}'.", CODE_QUERY)
        select: list[str] | None = None
        for option in _top_level_items(options or "", separator=";"):
            key, _, value = option.partition("=")
            if key.strip() != "$select":
                raise bad_request(
                    f"The nested query option {key.strip()} is not supported by the Dataverse emulator.", CODE_QUERY
                )
            select = parse_select(tables[nav.target], value)
        expanded[name] = select
    return expanded


def _top_level_items(text: str, separator: str = ",") -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == separator and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current)
    return [item for item in items if item.strip()]


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
            raise bad_request("Bad Request - Error in query syntax.", CODE_QUERY)
        name, raw = match.group(1), match.group(2)
        if raw.startswith("'"):
            values[name] = raw[1:-1].replace("''", "'")
        elif GUID_RE.fullmatch(raw):
            values[name] = raw.lower()
        elif re.fullmatch(r"-?\d+", raw):
            values[name] = int(raw)
        else:
            raise bad_request("Bad Request - Error in query syntax.", CODE_QUERY)
        position = match.end()
    if not values:
        raise bad_request("Bad Request - Error in query syntax.", CODE_QUERY)
    return values


# -- paging, preferences, bodies, query options -------------------------------------------------------------
def sort_comparator(table: Table, order: list[tuple[str, bool]]) -> Callable[[list[Any], list[Any]], int]:
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


def encode_skiptoken(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode("utf-8")).decode("ascii").rstrip("=")


def decode_skiptoken(token: str) -> dict[str, Any]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise bad_request("The $skiptoken is not valid.", CODE_QUERY) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("after"), list):
        raise bad_request("The $skiptoken is not valid.", CODE_QUERY)
    return payload


def parse_prefer(header: str | None) -> dict[str, str]:
    """``Prefer`` preferences by lower-cased name (quoted values unquoted; commas inside quotes kept)."""
    prefs: dict[str, str] = {}
    for name, value in re.findall(r'\s*([\w.\-]+)\s*(?:=\s*("[^"]*"|[^,]*))?\s*(?:,|$)', header or ""):
        if name:
            prefs[name.lower()] = value.strip().strip('"')
    return prefs


def json_body(request: Request) -> Any:
    try:
        return request.json()
    except ValueError:
        raise bad_request("The request body is not valid JSON.") from None


@dataclass
class Query:
    select: list[str] | None
    predicate: Predicate
    order: list[tuple[str, bool]]
    top: int | None
    count: bool
    token: dict[str, Any] | None


def parse_query(table: Table, query: dict[str, str]) -> Query:
    """The query options of a collection read; ``$skip`` and options the emulator lacks are refused."""
    for name in query:
        if name == "$skip":
            raise bad_request(
                "The query parameter $skip is not supported; page with odata.maxpagesize and @odata.nextLink.",
                CODE_QUERY,
            )
        if name.startswith("$") and name not in ("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken"):
            raise bad_request(f"The query option {name} is not supported by the Dataverse emulator.", CODE_QUERY)
    top = query.get("$top")
    if top is not None and (not top.isdigit() or int(top) < 1):
        raise bad_request(f"Invalid value '{top}' for $top.", CODE_QUERY)
    return Query(
        select=parse_select(table, query["$select"]) if query.get("$select") else None,
        predicate=FilterParser(table, query["$filter"]).parse() if query.get("$filter") else (lambda row: True),
        order=parse_orderby(table, query["$orderby"]) if query.get("$orderby") else [],
        top=int(top) if top is not None else None,
        count=query.get("$count", "").lower() == "true",
        token=decode_skiptoken(query["$skiptoken"]) if query.get("$skiptoken") else None,
    )


def wants_annotations(prefer: dict[str, str]) -> bool:
    wanted = prefer.get("odata.include-annotations", "")
    return wanted == "*" or "lookuplogicalname" in wanted or wanted == "Microsoft.Dynamics.CRM.*"
