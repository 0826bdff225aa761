"""Text and agreed values kept within fixed sizes, counted the way Azure Table Storage counts them.

Table Storage measures a string in UTF-16 code units: a character outside the Basic Multilingual Plane
(most emoji) is two units, so Python's ``len`` undercounts and ``text[:n]`` can still be twice too long.

The values both sides agreed on at the last sync (the link's ``LastValues``) are JSON written as is, not
as ``\\uXXXX`` escapes, which made Japanese text six times larger. When they still do not fit their
budget, the largest texts (then, if needed, the largest lists and objects) are replaced by a *digest
marker*: the object ``{"$sha256": "<64 hex digits>"}`` in place of the value. A marker cannot be mistaken
for data: a mapped value is a string, number, boolean, null, list, or an object with fixed keys (an
address, a contact, the CRM defaults keyed by field name), never an object with a ``$sha256`` key. A
string such as ``"sha256:..."`` would not do: it is something a seller may well have typed in the notes.

A marker stands for exactly one value: :func:`same_value` holds a current value equal to a marker only
when the current value's digest is the one recorded. The merge only ever asks "is it still the same
value?" of the agreed values, so it decides exactly as if the full value had been stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

MAX_TEXT_UNITS = 32_000
"""Our limit for one string property (Table Storage refuses more than 32,768 units)."""

AGREED_MAX_UNITS = 24_000
"""The agreed values' share of a link row: with the capped error text and the ids and fingerprints, the
row stays under 64 KiB."""

ERROR_MAX_UNITS = 4_000
"""A failure reason kept in storage (a link's LastError, a state row's Reason)."""

DIGEST_KEY = "$sha256"
ELLIPSIS = "\u2026"


def utf16_units(text: str) -> int:
    """The length Table Storage counts: UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def cap_utf16(text: str, max_units: int) -> str:
    """``text`` if it fits in ``max_units`` UTF-16 units, else its start and an ellipsis, never half a
    surrogate pair."""
    if max_units < 1:
        raise ValueError("max_units must be at least 1")
    if len(text) * 2 <= max_units or utf16_units(text) <= max_units:
        return text
    data = text.encode("utf-16-le", "surrogatepass")[: 2 * (max_units - 1)]
    if data and 0xD8 <= data[-1] <= 0xDB:  # a high surrogate whose partner was cut off (little-endian)
        data = data[:-2]
    return data.decode("utf-16-le", "surrogatepass") + ELLIPSIS


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest_marker(value: object) -> dict[str, str]:
    """The marker stored in place of ``value``."""
    # Escaped ASCII JSON: the same bytes for a value before and after a JSON round trip, whatever it holds.
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return {DIGEST_KEY: hashlib.sha256(canonical.encode("ascii")).hexdigest()}


def is_digest(value: object) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    hexdigest = value.get(DIGEST_KEY)
    return isinstance(hexdigest, str) and len(hexdigest) == 64 and all(c in "0123456789abcdef" for c in hexdigest)


def same_value(current: object, stored: object) -> bool:
    """Whether ``current`` is the value ``stored`` holds, where ``stored`` (and anything inside it) may be a
    digest marker standing for a value that did not fit."""
    if current == stored:
        return True
    if is_digest(stored):
        return not is_digest(current) and digest_marker(current) == stored
    if isinstance(stored, dict) and isinstance(current, dict):
        return current.keys() == stored.keys() and all(same_value(current[k], v) for k, v in stored.items())
    if isinstance(stored, list) and isinstance(current, list):
        return len(current) == len(stored) and all(same_value(c, s) for c, s in zip(current, stored, strict=True))
    return False


_MARKER_UNITS = utf16_units(_dumps(digest_marker(None)))
KeyPath = tuple[str | int, ...]


def encode_agreed(values: Mapping[str, object], max_units: int = AGREED_MAX_UNITS) -> str:
    """``values`` as JSON of at most ``max_units`` UTF-16 units, the largest values replaced by digest
    markers when the whole does not fit. Markers already in ``values`` are kept as they are.

    Texts go first, largest first. Only when that is not enough do whole lists and objects go, largest
    first, except the objects directly under the root, which keep their keys (the CRM defaults are looked
    up by field name) and lose only their members. The keys of the root and of those objects are fixed
    and few for the agreed values, so any budget above a few thousand units fits; a ValueError says when
    the values cannot fit at all."""
    text = _dumps(values)
    excess = utf16_units(text) - max_units
    if excess <= 0:
        return text
    original: dict[str, Any] = json.loads(text)  # plain JSON values: their digests match a round trip
    tree: dict[str, Any] = json.loads(text)
    # Serialised values are independent of each other, so each replacement saves exactly its own size.
    for units, path in sorted(_strings(tree, ()), reverse=True):
        if excess <= 0 or units <= _MARKER_UNITS:
            break
        _replace(tree, path, digest_marker(_at(original, path)))
        excess -= units - _MARKER_UNITS
    while excess > 0:
        # A container's marker is the digest of its original value, not of the markers now inside it.
        candidates = [(units, path) for units, path in _containers(tree, ()) if not _holds_digest(_at(original, path))]
        units, path = max(candidates, default=(0, ()))
        if units <= _MARKER_UNITS:
            raise ValueError(f"the agreed values do not fit in {max_units} UTF-16 units even as digests")
        _replace(tree, path, digest_marker(_at(original, path)))
        excess -= units - _MARKER_UNITS
    return _dumps(tree)


def _children(node: Any, path: KeyPath) -> Iterator[tuple[Any, KeyPath]]:
    """Each member of a list or object that is not a digest marker, with its path."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        if not is_digest(child):
            yield child, (*path, key)


def _strings(node: Any, path: KeyPath) -> Iterator[tuple[int, KeyPath]]:
    for child, child_path in _children(node, path):
        if isinstance(child, str):
            yield utf16_units(_dumps(child)), child_path
        else:
            yield from _strings(child, child_path)


def _containers(node: Any, path: KeyPath) -> Iterator[tuple[int, KeyPath]]:
    for child, child_path in _children(node, path):
        if isinstance(child, list) or (isinstance(child, dict) and len(child_path) > 1):
            yield utf16_units(_dumps(child)), child_path
        if isinstance(child, dict | list):
            yield from _containers(child, child_path)


def _holds_digest(node: Any) -> bool:
    if is_digest(node):
        return True
    members = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return any(_holds_digest(member) for member in members)


def _at(node: Any, path: KeyPath) -> Any:
    for key in path:
        node = node[key]
    return node


def _replace(node: Any, path: KeyPath, value: object) -> None:
    _at(node, path[:-1])[path[-1]] = value
