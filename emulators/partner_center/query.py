"""One page of the emulated referrals list: filter, order, ``$top``/``$skip`` and server-side paging.

The paging state (filter, order, offset) travels inside an opaque ``$skiptoken``, so a next link is
a complete request on its own, as the service's links are.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .odata import (
    FILTERABLE_ROOTS,
    ODataError,
    decode_skiptoken,
    encode_skiptoken,
    parse_datetime,
    parse_filter,
    parse_orderby,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _sort_time(value: Any) -> datetime:
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is None:
        return _EPOCH
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def query_state(query: dict[str, str]) -> dict[str, Any]:
    """The paging state of a first request (from its query) or of a next link (from its skiptoken)."""
    if "$skiptoken" in query:
        return decode_skiptoken(query["$skiptoken"])
    state: dict[str, Any] = {"o": 0, "f": query.get("$filter"), "ob": query.get("$orderby")}
    for name, key, minimum in (("$top", "t", 1), ("$skip", "s", 0)):
        if name in query:
            raw = query[name]
            if not raw.isdigit() or int(raw) < minimum:
                raise ODataError(f"{name} must be an integer of at least {minimum}")
            state[key] = int(raw)
    return state


def list_page(
    referrals: Iterable[dict[str, Any]],
    query: dict[str, str],
    page_size: int,
    base_url: str,
    list_path: str,
    filterable: frozenset[str] = FILTERABLE_ROOTS,
) -> dict[str, Any]:
    """The response body for one list request; raises :class:`ODataError` for unsupported queries."""
    state = query_state(query)
    predicate = parse_filter(state.get("f"), filterable)
    order = parse_orderby(state.get("ob"))
    matches = [r for r in referrals if predicate(r)]
    matches.sort(key=lambda r: _sort_time(r.get("createdDateTime")))  # stable: ties keep insertion order
    for field, descending in reversed(order):
        matches.sort(key=lambda r, f=field: _sort_time(r.get(f)), reverse=descending)
    window = matches[state.get("s", 0) :]
    if state.get("t") is not None:
        window = window[: state["t"]]
    offset, size = state["o"], max(1, page_size)
    body: dict[str, Any] = {
        "@odata.context": f"{base_url}/v1.0/$metadata#referrals",
        "@odata.count": len(matches),
        "value": copy.deepcopy(window[offset : offset + size]),
    }
    if offset + size < len(window):
        body["@odata.nextLink"] = f"{base_url}{list_path}?$skiptoken={encode_skiptoken({**state, 'o': offset + size})}"
    return body
