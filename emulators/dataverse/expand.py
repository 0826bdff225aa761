"""Dataverse emulator: ``$expand`` on a collection read, one request bringing each row's related rows with it.

A single-valued navigation property (``parentcustomerid_account``) expands to the related row or null and takes
only a nested ``$select``. A collection-valued one (``contact_customer_accounts``: the contacts whose company the
account is) expands to an array and takes nested ``$select``, ``$filter``, ``$orderby`` and ``$top``, separated by
``;``, as the service documents them. A nested ``$expand`` and any other nested option are refused, as are more
than 15 expanded properties in one query (the service's limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from .deep_insert import COLLECTIONS
from .odata import FilterParser, Predicate, parse_orderby, parse_select, sort_comparator
from .schema import CODE_QUERY, Table, bad_request
from .store import Row, Store

MAX_EXPANDS = 15
COLLECTION_OPTIONS = frozenset({"$select", "$filter", "$orderby", "$top"})


@dataclass(frozen=True)
class Expansion:
    name: str
    target: str  # the related rows' entity set
    select: list[str] | None = None
    back_column: str | None = None  # a collection's lookup column on the related rows (None: single-valued)
    predicate: Predicate | None = None
    order: tuple[tuple[str, bool], ...] = ()
    top: int | None = None


def parse_expands(table: Table, text: str, tables: dict[str, Table]) -> list[Expansion]:
    items = split_top_level(text, ",")
    if len(items) > MAX_EXPANDS:
        raise bad_request(f"The query has {len(items)} $expand options; at most {MAX_EXPANDS} are allowed.", CODE_QUERY)
    return [_expansion(table, item, tables) for item in items]


def _expansion(table: Table, item: str, tables: dict[str, Table]) -> Expansion:
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*", item, re.S)
    if not match:
        raise bad_request(f"The $expand item '{item}' is not valid.", CODE_QUERY)
    name, text = match.group(1), match.group(2) or ""
    options: dict[str, str] = {}
    for option in split_top_level(text, ";"):
        key, _, value = option.partition("=")
        options[key.strip()] = value.strip()
    collection = COLLECTIONS.get((table.entity_set, name))
    if collection is None:
        nav = table.navs.get(name)
        if nav is None:
            raise bad_request(f"Could not find a property named '{name}' on type '{table.type_name}'.", CODE_QUERY)
        _refuse_other_options(options, {"$select"}, name)
        target = tables[nav.target]
        select = parse_select(target, options["$select"]) if options.get("$select") else None
        return Expansion(name, nav.target, select)
    _refuse_other_options(options, COLLECTION_OPTIONS, name)
    child_set, back = collection
    child = tables[child_set]
    top = options.get("$top")
    if top is not None and (not top.isdigit() or int(top) < 1):
        raise bad_request(f"Invalid value '{top}' for $top in $expand of '{name}'.", CODE_QUERY)
    return Expansion(
        name,
        child_set,
        parse_select(child, options["$select"]) if options.get("$select") else None,
        child.navs[back].column,
        FilterParser(child, options["$filter"]).parse() if options.get("$filter") else None,
        tuple(parse_orderby(child, options["$orderby"])) if options.get("$orderby") else (),
        int(top) if top is not None else None,
    )


def _refuse_other_options(options: dict[str, str], allowed: set[str] | frozenset[str], name: str) -> None:
    for key in options:
        if key == "$expand":
            raise bad_request(f"A nested $expand in '{name}' is not supported by the Dataverse emulator.", CODE_QUERY)
        if key not in allowed:
            raise bad_request(f"The query option {key} is not allowed in the $expand of '{name}'.", CODE_QUERY)


def expanded(store: Store, table: Table, row: Row, expansions: list[Expansion], annotations: bool) -> dict[str, Any]:
    """The related rows of ``row``, by navigation property name, rendered as a read of them renders them."""
    out: dict[str, Any] = {}
    for expansion in expansions:
        target = store.table(expansion.target)
        if expansion.back_column is None:
            nav = table.navs[expansion.name]
            related = row.values.get(nav.column)
            found = None
            if related is not None and row.targets.get(nav.column) == expansion.target:
                found = store.find(target, str(related))
            out[expansion.name] = None if found is None else store.render(target, found, expansion.select, annotations)
            continue
        parent = row.values[table.pk]
        children = [
            child
            for child in store.rows[target.entity_set].values()
            if child.values.get(expansion.back_column) == parent
            and child.targets.get(expansion.back_column) == table.entity_set
            and (expansion.predicate is None or expansion.predicate(child.values))
        ]
        children = _sorted(target, children, [*expansion.order, (target.pk, False)])
        if expansion.top is not None:
            children = children[: expansion.top]
        out[expansion.name] = [store.render(target, child, expansion.select, annotations) for child in children]
    return out


def _sorted(table: Table, rows: list[Row], order: list[tuple[str, bool]]) -> list[Row]:
    compare = sort_comparator(table, order)

    def values(row: Row) -> list[Any]:
        return [row.values.get(column) for column, _ in order]

    return sorted(rows, key=cmp_to_key(lambda a, b: compare(values(a), values(b))))


def split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside parentheses and outside quoted OData strings ('' is a quote)."""
    items: list[str] = []
    depth, quoted, current = 0, False, ""
    for char in text:
        if char == "'":
            quoted = not quoted  # a doubled quote toggles twice: still inside the string
        elif not quoted:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            elif char == separator and depth == 0:
                items.append(current)
                current = ""
                continue
        current += char
    if quoted or depth != 0:
        raise bad_request(f"The $expand '{text}' is not valid: unbalanced quotes or parentheses.", CODE_QUERY)
    if current.strip():
        items.append(current)
    return items
