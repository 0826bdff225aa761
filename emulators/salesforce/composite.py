"""Salesforce emulator: the Composite resource, ``POST /services/data/vNN.0/composite``.

Up to 25 subrequests, at most 5 of them queries or sObject Collections, run in order. Each one is routed
like a request of its own (injected faults included) but is neither authenticated nor charged again: the
composite call is authenticated once and counts as ONE request of the daily allocation, as on the platform.
A subrequest names its resource with a full ``/services/data/vNN.0/...`` url, may carry ``httpHeaders``
(never Accept, Authorization or Content-Type: those come from the composite request, and naming one
refuses the whole call) and a ``body``, and may use what an earlier subrequest answered through
``@{referenceId.field}`` references (``.`` into an object, ``[n]`` into a list, recursively) in its url or body.

With ``allOrNone`` the first failing subrequest (status 400 or more) rolls back every write of the call, and
every other subrequest then answers 400 ``PROCESSING_HALTED``. Without it, the others still run, except those
that reference a failed one. Either way the call answers 200 with ``{"compositeResponse": [{"body",
"httpHeaders", "httpStatusCode", "referenceId"}, ...]}``; a malformed composite body is refused as a whole
with 400 before anything runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._server import Request, Response
from .schema import SalesforceError, bad_request
from .store import Org

MAX_SUBREQUESTS = 25
MAX_QUERY_OR_COLLECTION_SUBREQUESTS = 5
METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})  # case-sensitive, as Salesforce checks them
INHERITED_HEADERS = frozenset({"accept", "authorization", "content-type"})
HALTED = "PROCESSING_HALTED"
ROLLED_BACK_MESSAGE = "The transaction was rolled back since another operation in the same transaction failed."

_REFERENCE_ID = re.compile(r"[A-Za-z0-9_]+")
_REFERENCE = re.compile(r"@\{(?P<ref>[A-Za-z0-9_]+)(?P<path>(?:\.[A-Za-z0-9_]+|\[\d+\])+)\}")
_STEP = re.compile(r"\.(?P<key>[A-Za-z0-9_]+)|\[(?P<index>\d+)\]")
_SUBREQUEST_URL = re.compile(r"^/services/data/v\d{2}\.\d(?P<rest>/[^?#]*)?(?:\?.*)?$")
# Composite calls do not nest; sObject Collections (composite/sobjects) are subrequests like any other.
_NESTED = re.compile(r"^/composite(?:/(?:batch|tree|graph)(?:/.*)?)?/?$")
_QUERY_OR_COLLECTION = re.compile(r"^/(?:query|queryAll)(?:/|$)|^/composite/sobjects(?:/|$)")

Dispatch = Callable[[Request], Response]


class Unresolved(Exception):
    """A reference to something no earlier subrequest answered."""


@dataclass(frozen=True)
class Subrequest:
    method: str
    url: str
    reference_id: str
    body: Any
    headers: dict[str, str]


def _invalid(message: str) -> SalesforceError:
    # Salesforce refuses a malformed composite body as a whole; the exact error code is not documented.
    return bad_request("INVALID_INPUT", message)


def parse_subrequests(body: Any) -> tuple[list[Subrequest], bool]:
    """The subrequests of a composite body and its ``allOrNone`` flag, or the 400 that refuses the call."""
    if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
        raise bad_request("JSON_PARSER_ERROR", "The request body needs a 'compositeRequest' array")
    items = body["compositeRequest"]
    for flag in ("allOrNone", "collateSubrequests"):
        if flag in body and not isinstance(body[flag], bool):
            raise bad_request("JSON_PARSER_ERROR", f"'{flag}' must be true or false")
    if not items:
        raise _invalid("compositeRequest needs at least one subrequest")
    if len(items) > MAX_SUBREQUESTS:
        raise _invalid(f"A composite request can hold at most {MAX_SUBREQUESTS} subrequests, not {len(items)}")
    subrequests: list[Subrequest] = []
    seen: set[str] = set()
    for item in items:
        subrequest = _subrequest(item)
        if subrequest.reference_id in seen:
            raise _invalid(f"Duplicate referenceId '{subrequest.reference_id}'")
        seen.add(subrequest.reference_id)
        subrequests.append(subrequest)
    heavy = sum(1 for s in subrequests if _QUERY_OR_COLLECTION.search(_resource(s.url)))
    if heavy > MAX_QUERY_OR_COLLECTION_SUBREQUESTS:
        raise _invalid(
            f"A composite request can hold at most {MAX_QUERY_OR_COLLECTION_SUBREQUESTS} query or sObject "
            f"Collections subrequests, not {heavy}"
        )
    return subrequests, bool(body.get("allOrNone", False))


def _resource(url: str) -> str:
    """The part of a subrequest url after ``/services/data/vNN.N`` (``/sobjects/Opportunity/006...``)."""
    match = _SUBREQUEST_URL.match(url)
    return (match.group("rest") or "/") if match else ""


def _subrequest(item: Any) -> Subrequest:
    if not isinstance(item, dict):
        raise bad_request("JSON_PARSER_ERROR", "Each subrequest must be a JSON object")
    method, url, reference_id = item.get("method"), item.get("url"), item.get("referenceId")
    if method not in METHODS:
        raise _invalid(f"Invalid method '{method}': use one of {', '.join(sorted(METHODS))}")
    if not isinstance(url, str) or _SUBREQUEST_URL.match(url) is None:
        raise _invalid(f"Invalid url '{url}': a subrequest url starts with /services/data/vXX.X/")
    if _NESTED.match(_resource(url)):
        raise _invalid(f"Composite requests cannot be nested: {url}")
    if not isinstance(reference_id, str) or not _REFERENCE_ID.fullmatch(reference_id):
        raise _invalid(f"Invalid referenceId '{reference_id}': use letters, numbers and underscores only")
    headers = item.get("httpHeaders") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise bad_request("JSON_PARSER_ERROR", "httpHeaders must map header names to strings")
    inherited = sorted(name for name in headers if name.lower() in INHERITED_HEADERS)
    if inherited:
        raise _invalid(f"A subrequest cannot set {', '.join(inherited)}: it comes from the composite request")
    return Subrequest(method, url, reference_id, item.get("body"), {str(k): v for k, v in headers.items()})


def _lookup(reference: re.Match[str], answers: Mapping[str, Any]) -> Any:
    ref, path = reference.group("ref"), reference.group("path")
    missing = Unresolved(
        f"Invalid reference specified. No value for {ref}{path} found in {ref}. "
        f"Provided referenceId ('{ref}') must be of a subrequest that ran before this one and succeeded."
    )
    if ref not in answers:
        raise missing
    value = answers[ref]
    for step in _STEP.finditer(path):
        if step.group("key") is not None:
            value = value.get(step.group("key")) if isinstance(value, dict) else None
        else:
            index = int(step.group("index"))
            value = value[index] if isinstance(value, list) and index < len(value) else None
        if value is None:
            raise missing
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def resolve(value: Any, answers: Mapping[str, Any]) -> Any:
    """``value`` with its ``@{...}`` references replaced: a string that is one reference takes the referenced
    value as it is (a number stays a number), references inside longer text are written into it."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value)
        if whole:
            return _lookup(whole, answers)
        return _REFERENCE.sub(lambda match: _text(_lookup(match, answers)), value)
    if isinstance(value, list):
        return [resolve(item, answers) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, answers) for key, item in value.items()}
    return value


def _entry(reference_id: str, response: Response) -> dict[str, Any]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
    return {
        "body": response.body,
        "httpHeaders": headers,
        "httpStatusCode": response.status,
        "referenceId": reference_id,
    }


def _halted(reference_id: str, message: str = ROLLED_BACK_MESSAGE) -> dict[str, Any]:
    return {
        "body": [{"errorCode": HALTED, "message": message}],
        "httpHeaders": {},
        "httpStatusCode": 400,
        "referenceId": reference_id,
    }


class Composite:
    """Runs composite calls over the org; ``dispatch`` routes one subrequest (with the emulator's lock held)."""

    def __init__(
        self, org: Org, dispatch: Dispatch, checkpoint: Callable[[], Any], rollback: Callable[[Any], None]
    ) -> None:
        self.org = org
        self.dispatch = dispatch
        self.checkpoint, self.rollback = checkpoint, rollback

    def run(self, request: Request, body: Any) -> Response:
        subrequests, all_or_none = parse_subrequests(body)
        checkpoint = self.checkpoint() if all_or_none else None
        with self.org.savepoint() as savepoint:
            answers: dict[str, Any] = {}  # referenceId -> body, of the subrequests that succeeded
            entries: list[dict[str, Any]] = []
            failed: int | None = None
            for index, subrequest in enumerate(subrequests):
                if failed is not None and all_or_none:
                    entries.append(_halted(subrequest.reference_id))
                    continue
                try:
                    url = resolve(subrequest.url, answers)
                    sub_body = resolve(subrequest.body, answers)
                except Unresolved as exc:
                    entries.append(_halted(subrequest.reference_id, str(exc)))
                    failed = index if failed is None else failed
                    continue
                response = self._send(request, subrequest, str(url), sub_body)
                entries.append(_entry(subrequest.reference_id, response))
                if response.status >= 400:
                    failed = index if failed is None else failed
                else:
                    answers[subrequest.reference_id] = response.body
            if failed is not None and all_or_none:
                self.org.roll_back(savepoint)
                self.rollback(checkpoint)
                # The failure keeps its own error; everything else was rolled back or never ran.
                entries = [entry if i == failed else _halted(entry["referenceId"]) for i, entry in enumerate(entries)]
        return Response(200, {"compositeResponse": entries})

    def _send(self, request: Request, subrequest: Subrequest, url: str, body: Any) -> Response:
        parts = urlsplit(url)
        headers = {name.lower(): value for name, value in subrequest.headers.items()}
        headers["host"] = request.header("host") or ""
        sub = Request(
            method=subrequest.method,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
            headers=headers,
            body=json.dumps(body).encode("utf-8") if body is not None else b"",
            raw_path=url,
        )
        try:
            return self.dispatch(sub)
        except SalesforceError as exc:
            return Response(exc.status, [exc.item()], dict(exc.headers))
