"""Salesforce emulator: the SOQL subset the connector and its tests need.

``SELECT item[, item] FROM Object [WHERE cond] [ORDER BY path [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]`` where an item is a path or a parent-to-child subquery, a path is a field or one
parent relationship hop (``Account.Name``), and a condition combines ``= != <> < <= > >= LIKE IN NOT IN``
with AND / OR / NOT and parentheses. A subquery, ``(SELECT path, ... FROM ChildRelationship [WHERE cond]
[ORDER BY ...] [LIMIT n])``, names one of the object's child relationships (``OpportunityContactRoles``,
not the object ``OpportunityContactRole``) and cannot hold another subquery, as in Salesforce. Literals are
quoted strings with backslash escapes, numbers, true / false / null and, as in Salesforce, UNQUOTED
date (``2024-05-01``) and datetime (``2024-05-01T10:00:00Z``) literals. Text compares case-insensitively.
Like Salesforce, AND and OR cannot be mixed at one level without parentheses, and a quoted value
against a date field is refused, so client bugs of that kind fail here first.

A compiled query also names the ``=`` / ``IN`` conditions on the object's own fields that every matching row
meets, through AND and OR (:class:`Lookup`, :class:`AllOf`, :class:`AnyOf`; NOT and other operators give
none), so that the org can narrow the rows through its indexes before the full predicate decides on each.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cmp_to_key
from typing import Any

from .schema import (
    BOOLEAN,
    DATE,
    DATETIME,
    ID,
    NUMBER_TYPES,
    REFERENCE,
    TEXTAREA,
    ChildRelationship,
    FieldDef,
    SalesforceError,
    SObjectType,
    bad_request,
    normalize_id,
    parse_datetime,
)

KEYWORDS = frozenset(
    {"select", "from", "where", "and", "or", "not", "in", "like", "order", "by", "asc", "desc", "nulls"}
    | {"first", "last", "limit", "offset", "true", "false", "null"}
)
COMPARISONS = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>|\(|\)|,)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\", "%": "%", "_": "_"}

Row = Mapping[str, Any]
Resolver = Callable[[Row, "Column"], Any]


def malformed(message: str) -> SalesforceError:
    return bad_request("MALFORMED_QUERY", message)


def _filter_error(message: str) -> SalesforceError:
    return bad_request("INVALID_QUERY_FILTER_OPERATOR", message)


@dataclass(frozen=True)
class Token:
    kind: str  # name, string, number, date, datetime, op, end
    text: str

    @property
    def keyword(self) -> str:
        return self.text.lower() if self.kind == "name" else ""


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise malformed(f"unexpected token: '{text[position : position + 20]}'")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group()))
        position = match.end()
    tokens.append(Token("end", ""))
    return tokens


def unescape(raw: str) -> str:
    """A quoted SOQL string's value (``raw`` includes the quotes)."""
    out, chars, index = [], raw[1:-1], 0
    while index < len(chars):
        char = chars[index]
        if char == "\\":
            escaped = chars[index + 1]
            if escaped not in _ESCAPES:
                raise malformed(f"Invalid string literal '{raw}'. Illegal character sequence '\\{escaped}'")
            out.append(_ESCAPES[escaped])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def like_pattern(raw: str) -> re.Pattern[str]:
    """``%`` and ``_`` are wildcards unless escaped; matching ignores case."""
    parts, chars, index = [], raw[1:-1], 0
    while index < len(chars):
        char = chars[index]
        if char == "\\":
            escaped = chars[index + 1]
            if escaped not in _ESCAPES:
                raise malformed(f"Invalid string literal '{raw}'. Illegal character sequence '\\{escaped}'")
            parts.append(re.escape(_ESCAPES[escaped]))
            index += 2
            continue
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        index += 1
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Column:
    """A selected or filtered path: the reference fields walked through, then the field read."""

    hops: tuple[FieldDef, ...]  # reference fields, e.g. (AccountId,)
    field: FieldDef

    @property
    def names(self) -> tuple[str, ...]:
        """Output keys: relationship names, then the field name (``("Account", "Name")``)."""
        return (*(hop.relationship or "" for hop in self.hops), self.field.name)


@dataclass
class Order:
    column: Column
    descending: bool
    nulls_last: bool


@dataclass(frozen=True)
class Lookup:
    """A condition every matching row meets: ``field`` (of the queried object) equals one of ``values``, given in
    the form the predicate compares (text casefolded, ids in their 18-character form). An index can narrow the
    rows to those; the predicate still decides, so the lookup only has to never leave a match out."""

    field: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class AllOf:
    """AND-ed conditions that narrow: a matching row meets every part, so any one part can narrow the rows."""

    parts: tuple[Narrowing, ...]


@dataclass(frozen=True)
class AnyOf:
    """OR-ed conditions that each narrow: a matching row meets at least one branch."""

    branches: tuple[Narrowing, ...]


Narrowing = Lookup | AllOf | AnyOf
Filter = tuple[Callable[[Row], bool], Narrowing | None]


def index_key(value: Any) -> Any:
    """The key under which an index files a stored value and looks a literal up: both casefolded when text, so
    that case-insensitive text and case-exact ids share one index (the predicate tells them apart)."""
    return value.casefold() if isinstance(value, str) else value


@dataclass
class ChildQuery:
    """A parent-to-child subquery: the child records of each parent row that pass ``predicate``."""

    relation: ChildRelationship
    sobject: SObjectType  # the child object
    columns: list[Column]
    predicate: Callable[[Row], bool]
    order: list[Order]
    limit: int | None
    narrowing: Narrowing | None = None


@dataclass
class Query:
    sobject: SObjectType
    columns: list[Column]
    predicate: Callable[[Row], bool]
    order: list[Order]
    limit: int | None
    offset: int
    children: list[ChildQuery] = field(default_factory=list)
    narrowing: Narrowing | None = None  # the equalities an index can narrow the rows by


def normalize(definition: FieldDef, value: Any) -> Any:
    """A comparable form: text ignores case, ids are compared in their 18-character form."""
    if value is None:
        return None
    if definition.type in (ID, REFERENCE):
        return str(value)
    if isinstance(value, str):
        return value.casefold()
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op in ("!=", "<>"):
        return bool(left != right)
    if left is None or right is None:
        return False
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


class Parser:
    def __init__(self, text: str, objects: Mapping[str, SObjectType], resolve: Resolver) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.position = 0
        self.objects = {name.lower(): sobject for name, sobject in objects.items()}
        self.resolve = resolve
        self.sobject: SObjectType | None = None

    # -- token helpers ------------------------------------------------------------------------------------
    def _peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.position + ahead, len(self.tokens) - 1)]

    def _next(self) -> Token:
        token = self._peek()
        if token.kind != "end":
            self.position += 1
        return token

    def _accept(self, word: str) -> bool:
        token = self._peek()
        if token.keyword == word or (token.kind == "op" and token.text == word):
            self.position += 1
            return True
        return False

    def _expect(self, word: str) -> None:
        if not self._accept(word):
            found = self._peek().text or "end of query"
            raise malformed(f"unexpected token: '{found}' (expecting '{word.upper()}')")

    # -- grammar ------------------------------------------------------------------------------------------
    def parse(self) -> Query:
        self._expect("select")
        paths, subqueries = self._select_list(nested=False)
        self._expect("from")
        name = self._next()
        sobject = self.objects.get(name.text.lower()) if name.kind == "name" else None
        if sobject is None:
            raise bad_request(
                "INVALID_TYPE",
                f"sObject type '{name.text}' is not supported. If you are attempting to use a custom object, "
                "be sure to append the '__c' after the entity name.",
            )
        # A subquery's FROM names a child relationship of the outer object, known only now: parse it here.
        resume = self.position
        children = [self._subquery(start, sobject) for start in subqueries]
        self.position, self.sobject = resume, sobject
        columns = self._columns(paths)
        predicate, narrowing = self._expression() if self._accept("where") else (_keep_all, None)
        order = self._order_by()
        limit = self._count("limit")
        offset = self._count("offset") or 0
        if self._peek().kind != "end":
            raise malformed(f"unexpected token: '{self._peek().text}'")
        return Query(sobject, columns, predicate, order, limit, offset, children, narrowing)

    def _select_list(self, nested: bool) -> tuple[list[str], list[int]]:
        """The paths of a SELECT list and the token positions where its subqueries start (after the ``(``)."""
        paths: list[str] = []
        subqueries: list[int] = []
        while True:
            if self._peek().kind == "op" and self._peek().text == "(":
                if nested:
                    raise malformed("unexpected token: '(' (a subquery cannot contain another subquery)")
                self._next()
                subqueries.append(self.position)
                self._skip_to_closing()
            else:
                paths.append(self._path_text())
            if not self._accept(","):
                return paths, subqueries

    def _skip_to_closing(self) -> None:
        depth = 1
        while depth:
            token = self._next()
            if token.kind == "end":
                raise malformed("unexpected token: 'end of query' (expecting ')')")
            if token.kind == "op" and token.text in "()":
                depth += 1 if token.text == "(" else -1

    def _subquery(self, start: int, parent: SObjectType) -> ChildQuery:
        self.position = start
        self._expect("select")
        paths, _ = self._select_list(nested=True)
        self._expect("from")
        name = self._next()
        relation = parent.child(name.text) if name.kind == "name" else None
        if relation is None:
            raise bad_request(
                "INVALID_TYPE",
                f"Didn't understand relationship '{name.text}' in FROM part of query call. If you are attempting "
                "to use a custom relationship, be sure to append the '__r' after the custom relationship name.",
            )
        self.sobject = self.objects[relation.child.lower()]
        columns = self._columns(paths)
        predicate, narrowing = self._expression() if self._accept("where") else (_keep_all, None)
        order = self._order_by()
        limit = self._count("limit")
        self._expect(")")
        return ChildQuery(relation, self.sobject, columns, predicate, order, limit, narrowing)

    def _columns(self, paths: list[str]) -> list[Column]:
        return list({c.names: c for c in (self._column(p) for p in paths)}.values())

    def _order_by(self) -> list[Order]:
        order: list[Order] = []
        if self._accept("order"):
            self._expect("by")
            order.append(self._order_item())
            while self._accept(","):
                order.append(self._order_item())
        return order

    def _count(self, word: str) -> int | None:
        if not self._accept(word):
            return None
        token = self._next()
        if token.kind != "number" or not token.text.isdigit():
            raise malformed(f"unexpected token: '{token.text}' ({word.upper()} needs a whole number)")
        return int(token.text)

    def _path_text(self) -> str:
        token = self._next()
        if token.kind != "name" or token.keyword in KEYWORDS:
            raise malformed(f"unexpected token: '{token.text or 'end of query'}'")
        return token.text

    def _column(self, path: str) -> Column:
        assert self.sobject is not None
        parts = path.split(".")
        sobject, hops = self.sobject, []
        for part in parts[:-1]:
            hop = sobject.relationship(part)
            if hop is None or hop.reference_to is None:
                raise bad_request(
                    "INVALID_FIELD",
                    f"Didn't understand relationship '{part}' in field path. If you are attempting to use a "
                    "custom relationship, be sure to append the '__r' after the custom relationship name.",
                )
            hops.append(hop)
            sobject = self.objects[hop.reference_to.lower()]
        definition = sobject.field(parts[-1])
        if definition is None:
            raise bad_request("INVALID_FIELD", f"No such column '{parts[-1]}' on entity '{sobject.name}'.")
        return Column(tuple(hops), definition)

    def _order_item(self) -> Order:
        column = self._column(self._path_text())
        if column.field.type == TEXTAREA and (column.field.length or 0) > 255:
            raise bad_request("INVALID_FIELD", f"field '{column.field.name}' can not be sorted in a query call")
        descending = self._accept("desc")
        if not descending:
            self._accept("asc")
        nulls_last = descending  # Salesforce's default: nulls first ascending, last descending
        if self._accept("nulls"):
            if self._accept("last"):
                nulls_last = True
            else:
                self._expect("first")
                nulls_last = False
        return Order(column, descending, nulls_last)

    def _expression(self) -> Filter:
        parts = [self._negation()]
        joiner = ""
        while self._peek().keyword in ("and", "or"):
            word = self._next().keyword
            if joiner and word != joiner:
                raise malformed("unexpected token: 'OR' (use parentheses when mixing AND and OR)")
            joiner = word
            parts.append(self._negation())
        if len(parts) == 1:
            return parts[0]
        predicates = [predicate for predicate, _ in parts]
        narrowings = [narrowing for _, narrowing in parts]
        if joiner == "and":
            # A part that does not narrow leaves the others to do it.
            kept = tuple(n for n in narrowings if n is not None)
            all_of = (kept[0] if len(kept) == 1 else AllOf(kept)) if kept else None
            return (lambda row: all(p(row) for p in predicates)), all_of
        # A branch that does not narrow could match any row, and so could the OR.
        any_of = None if None in narrowings else AnyOf(tuple(n for n in narrowings if n is not None))
        return (lambda row: any(p(row) for p in predicates)), any_of

    def _negation(self) -> Filter:
        if self._accept("not"):
            inner, _ = self._negation()
            return (lambda row: not inner(row)), None
        if self._accept("("):
            inner = self._expression()
            self._expect(")")
            return inner
        return self._condition()

    def _condition(self) -> Filter:
        column = self._column(self._path_text())
        definition = column.field
        if definition.type == TEXTAREA and (definition.length or 0) > 255:
            raise bad_request("INVALID_FIELD", f"field '{definition.name}' can not be filtered in a query call")
        resolve = self.resolve
        # Only a field of the queried object itself can be looked up in that object's index.
        own = not column.hops
        negated = self._peek().keyword == "not" and self._peek(1).keyword == "in"
        if negated:
            self._next()
        if self._accept("in"):
            self._expect("(")
            values = [self._literal(definition, "=")]
            while self._accept(","):
                values.append(self._literal(definition, "="))
            self._expect(")")
            wanted = set(values)
            if negated:
                return (lambda row: normalize(definition, resolve(row, column)) not in wanted), None
            found = Lookup(definition.name, tuple(values)) if own else None
            return (lambda row: normalize(definition, resolve(row, column)) in wanted), found
        if self._accept("like"):
            token = self._next()
            if token.kind != "string" or definition.type in (BOOLEAN, DATE, DATETIME, *NUMBER_TYPES):
                raise _filter_error(f"invalid operator on field '{definition.name}': LIKE needs a text field")
            pattern = like_pattern(token.text)

            def like(row: Row) -> bool:
                value = resolve(row, column)
                return value is not None and pattern.fullmatch(str(value)) is not None

            return like, None
        token = self._next()
        if token.kind != "op" or token.text not in COMPARISONS:
            raise malformed(f"unexpected token: '{token.text or 'end of query'}' (expecting a comparison)")
        op = token.text
        value = self._literal(definition, op)
        found = Lookup(definition.name, (value,)) if own and op == "=" else None
        return (lambda row: _compare(op, normalize(definition, resolve(row, column)), value)), found

    def _literal(self, definition: FieldDef, op: str) -> Any:
        token = self._next()
        kind, name = definition.type, definition.name
        if token.keyword == "null":
            if op not in ("=", "!=", "<>"):
                raise _filter_error(f"invalid operator on field '{name}': null compares only with = and !=")
            return None
        if kind in (DATE, DATETIME):
            wanted = "date" if kind == DATE else "dateTime"
            if token.kind not in ("date", "datetime") or (kind == DATE) != (token.kind == "date"):
                quoted = " and should not be enclosed in quotes" if token.kind == "string" else ""
                raise _filter_error(f"value of filter criterion for field '{name}' must be of type {wanted}{quoted}")
            return date.fromisoformat(token.text) if kind == DATE else parse_datetime(token.text)
        if kind == BOOLEAN:
            if token.keyword not in ("true", "false") or op not in ("=", "!=", "<>"):
                raise _filter_error(f"value of filter criterion for field '{name}' must be of type boolean")
            return token.keyword == "true"
        if kind in NUMBER_TYPES:
            if token.kind != "number":
                raise _filter_error(f"value of filter criterion for field '{name}' must be of type double")
            return float(token.text)
        if token.kind != "string":
            raise _filter_error(
                f"value of filter criterion for field '{name}' must be of type string and should be enclosed in quotes"
            )
        text = unescape(token.text)
        if kind in (ID, REFERENCE):
            normalized = normalize_id(text)
            if normalized is None:
                raise _filter_error(f"invalid ID field: {text}")
            return normalized
        return text.casefold()


def _keep_all(row: Row) -> bool:
    return True


def compile_query(text: str, objects: Mapping[str, SObjectType], resolve: Resolver) -> Query:
    return Parser(text, objects, resolve).parse()


def sort_rows(rows: list[Row], order: list[Order], resolve: Resolver) -> list[Row]:
    def compare(a: Row, b: Row) -> int:
        for item in order:
            left = normalize(item.column.field, resolve(a, item.column))
            right = normalize(item.column.field, resolve(b, item.column))
            if left == right:
                continue
            if left is None or right is None:
                return (1 if left is None else -1) if item.nulls_last else (-1 if left is None else 1)
            result = -1 if left < right else 1
            return -result if item.descending else result
        return 0

    return sorted(rows, key=cmp_to_key(compare))
