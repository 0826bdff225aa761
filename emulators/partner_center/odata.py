"""The OData subset the emulated referrals list understands: ``$filter``, ``$orderby`` and ``$skiptoken``.

Only what the Partner Center documentation shows is accepted, so that a connector relying on an
undocumented query shape fails here first rather than in production.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

FILTERABLE_ROOTS = frozenset(
    {
        "id",
        "engagementId",
        "name",
        "status",
        "substatus",
        "type",
        "direction",
        "qualification",
        "externalReferenceId",
        "updatedDateTime",
        "createdDateTime",
        "organizationId",
        "customerProfile",
        "inviteContext",
        "team",
    }
)
ORDERABLE = frozenset({"createdDateTime", "updatedDateTime"})
COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^']|'')*')
     |(?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
     |(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})
     |(?P<num>-?\d+(?:\.\d+)?)
     |(?P<lp>\()|(?P<rp>\))|(?P<colon>:)
     |(?P<name>[A-Za-z_]\w*(?:/[A-Za-z_]\w*)*)
    )""",
    re.VERBOSE,
)
_FRACTION = re.compile(r"\.(\d+)")
_MISSING = object()


class ODataError(ValueError):
    """The query uses something this service does not support (answered with 400 invalidRequest)."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ODataError(f"unexpected character at position {position} of $filter")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind)))
        position = match.end()
    return tokens


def parse_datetime(value: str) -> datetime | None:
    """ISO-8601 with any number of fractional digits (the service emits seven), else None."""
    trimmed = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value, count=1)
    try:
        return datetime.fromisoformat(trimmed.replace("Z", "+00:00"))
    except ValueError:
        return None


def _resolve(item: Any, segments: list[str]) -> Any:
    for segment in segments:
        if not isinstance(item, dict) or segment not in item:
            return _MISSING
        item = item[segment]
    return item


def _comparable(left: Any, right: Any) -> tuple[Any, Any] | None:
    if isinstance(left, str) and isinstance(right, str):
        left_dt, right_dt = parse_datetime(left), parse_datetime(right)
        if left_dt is not None and right_dt is not None and (left_dt.tzinfo is None) == (right_dt.tzinfo is None):
            return left_dt, right_dt
        return left, right
    numeric = (int, float)
    if isinstance(left, numeric) and isinstance(right, numeric) and not isinstance(left, bool):
        return left, right
    return None


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is _MISSING:
        left = None
    if op in ("eq", "ne"):
        pair = _comparable(left, right)
        equal = (pair[0] == pair[1]) if pair else left == right
        return equal if op == "eq" else not equal
    pair = _comparable(left, right)
    if pair is None:
        return False
    a, b = pair
    return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]


class _Parser:
    def __init__(self, tokens: list[_Token], roots: frozenset[str]) -> None:
        self.tokens, self.position, self.roots = tokens, 0, roots
        self.lambda_vars: list[str] = []

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> _Token:
        token = self.peek()
        if token is None or (kind and token.kind != kind) or (text and token.text.lower() != text):
            expected = text or kind or "more input"
            raise ODataError(f"$filter: expected {expected}")
        self.position += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text.lower() == word:
            self.position += 1
            return True
        return False

    def parse(self) -> Predicate:
        predicate = self.expression()
        if self.peek() is not None:
            raise ODataError("$filter: unexpected text after the expression")
        return predicate

    def expression(self) -> Predicate:
        terms = [self.conjunction()]
        while self.keyword("or"):
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else (lambda item: any(t(item) for t in terms))

    def conjunction(self) -> Predicate:
        terms = [self.unary()]
        while self.keyword("and"):
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else (lambda item: all(t(item) for t in terms))

    def unary(self) -> Predicate:
        if self.keyword("not"):
            inner = self.unary()
            return lambda item: not inner(item)
        token = self.peek()
        if token is not None and token.kind == "lp":
            self.take("lp")
            inner = self.expression()
            self.take("rp")
            return inner
        return self.comparison()

    def path(self) -> tuple[str | None, list[str]]:
        segments = self.take("name").text.split("/")
        if segments[0] in self.lambda_vars:
            return segments[0], segments[1:]
        if segments[0] not in self.roots:
            raise ODataError(f"$filter: filtering on '{segments[0]}' is not supported")
        return None, segments

    def comparison(self) -> Predicate:
        variable, segments = self.path()
        if segments and segments[-1] == "any":
            return self.any_lambda(variable, segments[:-1])
        op = self.take("name").text.lower()
        if op not in COMPARISONS:
            raise ODataError(f"$filter: operator '{op}' is not supported")
        value = self.literal()

        def predicate(item: dict[str, Any]) -> bool:
            scope = item[variable] if variable else item
            return _compare(op, _resolve(scope, segments), value)

        return predicate

    def any_lambda(self, variable: str | None, segments: list[str]) -> Predicate:
        self.take("lp")
        name = self.take("name").text
        self.take("colon")
        self.lambda_vars.append(name)
        inner = self.expression()
        self.lambda_vars.pop()
        self.take("rp")

        def predicate(item: dict[str, Any]) -> bool:
            collection = _resolve(item[variable] if variable else item, segments)
            if not isinstance(collection, list):
                return False
            return any(inner({**item, name: element}) for element in collection)

        return predicate

    def literal(self) -> Any:
        token = self.take()
        if token.kind == "str":
            return token.text[1:-1].replace("''", "'")
        if token.kind in ("dt", "guid"):
            return token.text
        if token.kind == "num":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "name" and token.text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token.text.lower()]
        raise ODataError("$filter: expected a literal value")


def parse_filter(text: str | None, roots: frozenset[str] = FILTERABLE_ROOTS) -> Predicate:
    """Compile a ``$filter`` expression into a predicate over referral JSON dicts."""
    if text is None or not text.strip():
        return lambda _item: True
    return _Parser(_tokenize(text), roots).parse()


def parse_orderby(text: str | None) -> list[tuple[str, bool]]:
    """``createdDateTime desc, updatedDateTime`` -> [(field, descending), ...]."""
    if text is None or not text.strip():
        return []
    keys: list[tuple[str, bool]] = []
    for clause in text.split(","):
        parts = clause.split()
        if not parts or parts[0] not in ORDERABLE or len(parts) > 2:
            raise ODataError(f"$orderby: '{clause.strip()}' is not supported")
        direction = parts[1].lower() if len(parts) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise ODataError(f"$orderby: direction '{parts[1]}' is not supported")
        keys.append((parts[0], direction == "desc"))
    return keys


def encode_skiptoken(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_skiptoken(token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ODataError("$skiptoken is not valid") from None
    if not isinstance(state, dict) or not isinstance(state.get("o"), int):
        raise ODataError("$skiptoken is not valid")
    return state
