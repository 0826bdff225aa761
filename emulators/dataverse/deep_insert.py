"""Dataverse emulator: deep insert, a create that carries related rows to create with it.

A ``POST <entity set>`` body may hold, under a navigation property's name, a new related row: an object for a
single-valued property (``"customerid_account": {...}``: created first, then bound) or an array of objects for a
collection-valued one (``"contact_customer_accounts": [...]``: created after the parent, each pointing at it).
Nested rows may nest further and may bind to existing rows with ``@odata.bind``. The whole tree is one operation:
when any row of it is refused, none of it stays. Only the relationships the connector's tables have are
modelled; any other name is refused as the service refuses an unknown property.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import CODE_QUERY, Table, bad_request
from .store import Row, Store

# Collection-valued navigation properties: (entity set, name) -> (the related rows' entity set, the single-valued
# navigation property on them that points back at the parent).
COLLECTIONS: Mapping[tuple[str, str], tuple[str, str]] = {
    ("accounts", "contact_customer_accounts"): ("contacts", "parentcustomerid_account"),
    ("accounts", "opportunity_customer_accounts"): ("opportunities", "customerid_account"),
    ("contacts", "opportunity_parent_contact"): ("opportunities", "parentcontactid"),
}
# Rows a deep insert may create; users, teams and currencies are only ever bound to.
CREATABLE = frozenset({"accounts", "contacts", "opportunities"})


def insert_tree(store: Store, table: Table, body: Any) -> list[tuple[Table, Row]]:
    """Create the row ``body`` describes with every related row nested in it; all or nothing. Returns the rows
    created, the root first."""
    created: list[tuple[Table, Row]] = []
    try:
        root = _insert(store, table, body, created)
    except Exception:
        for made_in, row in reversed(created):
            store.delete(made_in, row)
        raise
    return [(table, root), *((t, r) for t, r in created if r is not root)]


def _insert(store: Store, table: Table, body: Any, created: list[tuple[Table, Row]]) -> Row:
    if not isinstance(body, dict):
        raise bad_request(f"A nested {table.logical_name} must be a JSON object.")
    flat: dict[str, Any] = {}
    collections: dict[str, list[dict[str, Any]]] = {}
    for key, value in body.items():
        if key in table.navs and isinstance(value, dict):
            nav = table.navs[key]
            if nav.also or nav.target not in CREATABLE:
                raise bad_request(f"'{key}' can only be bound to an existing record with '{key}@odata.bind'.")
            if f"{key}@odata.bind" in body:
                raise bad_request(f"'{key}' is both bound and created in one request.")
            child = _insert(store, store.table(nav.target), value, created)
            flat[f"{key}@odata.bind"] = f"/{nav.target}({child.values[store.table(nav.target).pk]})"
        elif (table.entity_set, key) in COLLECTIONS:
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise bad_request(f"The collection-valued navigation property '{key}' takes an array of objects.")
            collections[key] = value
        elif isinstance(value, (dict, list)) and "@" not in key:
            raise bad_request(
                f"'{key}' is not a navigation property of {table.type_name} that a record can be created through.",
                CODE_QUERY,
            )
        else:
            flat[key] = value
    values, targets = store.parse_body(table, flat)
    row = store.insert(table, values, targets)
    created.append((table, row))
    for name, items in collections.items():
        child_set, back = COLLECTIONS[(table.entity_set, name)]
        child_table = store.table(child_set)
        for item in items:
            if back in item or f"{back}@odata.bind" in item:
                raise bad_request(f"A record nested in '{name}' must not set '{back}'; it points at its parent.")
            parent = f"/{table.entity_set}({row.values[table.pk]})"
            _insert(store, child_table, {**item, f"{back}@odata.bind": parent}, created)
    return row
