"""The Salesforce REST layer under the CRM adapter: URLs, re-authentication, limits and typed errors.

* Salesforce answers errors as JSON arrays ``[{"message", "errorCode", "fields"}]``; they become the
  shared error types, with data problems (required field, restricted picklist, ...) as
  :class:`SalesforceRecordError` (a :class:`ValidationFailed`: the record must change, retrying won't help).
* 401 ``INVALID_SESSION_ID`` re-authenticates once and repeats the request; a second 401 is final.
* 403 ``REQUEST_LIMIT_EXCEEDED`` is the org's rolling 24-hour allocation: it is raised at once as
  :class:`QuotaExhausted` with a long ``retry_after``, because retrying inline only burns more of it.
* Every response's ``Sforce-Limit-Info`` is kept in :attr:`SalesforceApi.api_usage`.
* :meth:`SalesforceApi.composite` sends several subrequests as one ``/composite`` call, which the daily
  allocation counts as ONE request; it is all-or-none, and the failed subrequest's error is raised as the
  same typed error the request sent alone would have raised (a 412 as :class:`PreconditionFailed`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import requests

from ...domain.errors import (
    AuthenticationError,
    Conflict,
    ExternalServiceError,
    NotFound,
    PermanentError,
    PreconditionFailed,
    QuotaExceeded,
    Throttled,
    TransientError,
    ValidationFailed,
)
from ...httpclient import ApiClient, parse_retry_after
from .auth import SERVICE, SalesforceAuth

log = logging.getLogger(__name__)

QUOTA_RETRY_AFTER_SECONDS = 900.0
MAX_COLLECTION_SIZE = 200
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 200, 2000
MAX_COMPOSITE_SUBREQUESTS = 25
# With allOrNone, every subrequest but the one that failed answers this: rolled back, or never run.
PROCESSING_HALTED = "PROCESSING_HALTED"
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
# Error codes that mean "this record's data is not acceptable": an audit entry, not a retry.
RECORD_ERROR_CODES = frozenset(
    {
        "REQUIRED_FIELD_MISSING",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "STRING_TOO_LONG",
        "INVALID_EMAIL_ADDRESS",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "FIELD_FILTER_VALIDATION_EXCEPTION",
        "FIELD_INTEGRITY_EXCEPTION",
        "DUPLICATE_VALUE",
        "DUPLICATES_DETECTED",
        "DUPLICATE_EXTERNAL_ID",
        "INVALID_CROSS_REFERENCE_KEY",
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
    }
)


class QuotaExhausted(QuotaExceeded):
    """403 REQUEST_LIMIT_EXCEEDED: the org's daily API allocation is used up. Pause, do not retry now."""

    def __init__(self, message: str, retry_after: float = QUOTA_RETRY_AFTER_SECONDS) -> None:
        super().__init__(SERVICE, message, 403, "REQUEST_LIMIT_EXCEEDED", retry_after=retry_after)


class SalesforceRecordError(ValidationFailed):
    """Salesforce refused the record's data (``code``; ``fields`` names the fields at fault)."""

    def __init__(self, message: str, code: str | None, fields: list[str] | None = None) -> None:
        self.code, self.fields = code, list(fields or [])
        super().__init__([f"Salesforce refused the record: {message}" + (f" ({code})" if code else "")])


class DuplicateReferralId(ValidationFailed):
    """More than one opportunity holds the referral id; nothing was written. A person must merge them."""

    def __init__(self, field: str, referral_id: str, record_ids: list[str]) -> None:
        self.referral_id, self.record_ids = referral_id, record_ids
        super().__init__(
            [
                f"Salesforce has {len(record_ids)} opportunities with {field} = '{referral_id}' "
                f"({', '.join(record_ids)}); merge them or clear the field on all but one"
            ]
        )


@dataclass(frozen=True)
class Subrequest:
    """One subrequest of a composite call: ``path`` as for :meth:`SalesforceApi.request` (under the versioned
    API), ``params`` its query string, ``headers`` its own conditional headers."""

    method: str
    path: str
    reference_id: str
    body: Any = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubResponse:
    status: int
    body: Any
    headers: Mapping[str, str]


def parse_errors(response: requests.Response) -> tuple[str, str | None]:
    """(message, first errorCode) from Salesforce's error array (or an OAuth error object)."""
    try:
        body = response.json()
    except ValueError:
        return (response.reason or "error", None)
    return error_details(body, response.reason or "error")


def error_details(body: Any, reason: str) -> tuple[str, str | None]:
    """(message, first errorCode) of an error body; ``reason`` when the body says nothing usable."""
    if isinstance(body, list) and body and all(isinstance(item, dict) for item in body):
        messages = []
        for item in body:
            message = str(item.get("message") or item.get("errorCode") or "error")
            fields = [str(f) for f in item.get("fields") or [] if str(f) not in message]
            messages.append(message + (f" (fields: {', '.join(fields)})" if fields else ""))
        code = body[0].get("errorCode")
        return ("; ".join(messages), str(code) if code else None)
    if isinstance(body, dict) and body.get("error"):
        return (str(body.get("error_description") or body["error"]), str(body["error"]))
    return (reason, None)


def record_error(error: Mapping[str, Any]) -> Exception:
    """The exception for one per-record error of an sObject Collections result."""
    code = str(error.get("statusCode") or error.get("errorCode") or "") or None
    message = str(error.get("message") or code or "error")
    fields = [str(f) for f in error.get("fields") or []]
    if code in RECORD_ERROR_CODES:
        return SalesforceRecordError(message, code, fields)
    if code == "REQUEST_LIMIT_EXCEEDED":
        return QuotaExhausted(message)
    return PermanentError(SERVICE, message, None, code)


class SalesforceApi:
    def __init__(
        self,
        auth: SalesforceAuth,
        api_version: str,
        session: requests.Session | None = None,
        *,
        timeout: float = 30.0,
        max_inline_wait: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        quota_retry_after: float = QUOTA_RETRY_AFTER_SECONDS,
    ) -> None:
        self.auth = auth
        self.version = api_version if api_version.startswith("v") else f"v{api_version}"
        self.quota_retry_after = quota_retry_after
        self.client = ApiClient(
            SERVICE,
            "",
            auth.token,
            timeout=timeout,
            max_inline_wait=max_inline_wait,
            default_headers={"Accept": "application/json"},
            error_parser=parse_errors,
            session=session,
            sleep=sleep,
        )
        self.api_usage: tuple[int, int] | None = None
        # A response hook sees error responses too, which ApiClient turns into exceptions.
        self.client.session.hooks.setdefault("response", []).append(self._observe)

    def _observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        match = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.api_usage = (int(match.group(1)), int(match.group(2)))

    def url(self, path: str) -> str:
        if path.startswith("/services/"):
            return f"{self.auth.instance_url()}{path}"
        return f"{self.auth.instance_url()}/services/data/{self.version}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **options: Any) -> requests.Response:
        """:meth:`ApiClient.request` on the instance's REST API (same options), signing in again once when the
        session has expired."""
        for attempt in (1, 2):
            used = self.auth.token()
            try:
                return self.client.request(method, self.url(path), **options)
            except AuthenticationError as exc:
                if exc.code != "INVALID_SESSION_ID" or not self.auth.renewable or attempt == 2:
                    raise
                log.info("Salesforce session expired; authenticating again")
                self.auth.invalidate(used)
            except PermanentError as exc:
                raise self._typed(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _typed(self, exc: PermanentError) -> Exception:
        if exc.status == 403 and exc.code == "REQUEST_LIMIT_EXCEEDED":
            usage = f" (api-usage {self.api_usage[0]}/{self.api_usage[1]})" if self.api_usage else ""
            return QuotaExhausted(
                f"the org's daily API request allocation is used up{usage}; pausing until it recovers",
                self.quota_retry_after,
            )
        if exc.status == 400 and exc.code in RECORD_ERROR_CODES:
            text = str(exc).split(": ", 1)[-1].removesuffix(f" ({exc.code})")
            return SalesforceRecordError(text, exc.code)
        return exc

    def json(self, response: requests.Response) -> Any:
        # Amounts stay exact: Decimal, never float.
        return response.json(parse_float=Decimal)

    # -- SOQL ----------------------------------------------------------------------------------------------------
    def query_pages(self, soql: str, batch_size: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of a SOQL query, following ``nextRecordsUrl`` until ``done``."""
        headers = None
        if batch_size is not None:
            size = max(MIN_BATCH_SIZE, min(MAX_BATCH_SIZE, batch_size))
            headers = {"Sforce-Query-Options": f"batchSize={size}"}
        page = self.json(self.request("GET", "query", params={"q": soql}, headers=headers))
        while True:
            yield list(page.get("records") or [])
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return
            page = self.json(self.request("GET", str(next_url), headers=headers))

    def query(self, soql: str, batch_size: int | None = None) -> Iterator[dict[str, Any]]:
        for page in self.query_pages(soql, batch_size):
            yield from page

    def related(self, result: Any) -> list[dict[str, Any]]:
        """The records of a row's parent-to-child subquery: Salesforce answers null when there are none, and pages
        long child lists like any query result (``nextRecordsUrl``), which costs a request per further page."""
        if not isinstance(result, dict):
            return []
        records = list(result.get("records") or [])
        while not result.get("done", True) and result.get("nextRecordsUrl"):
            result = self.json(self.request("GET", str(result["nextRecordsUrl"])))
            records.extend(result.get("records") or [])
        return records

    # -- Composite ---------------------------------------------------------------------------------------------
    def composite(self, subrequests: Sequence[Subrequest], *, idempotent: bool) -> dict[str, SubResponse]:
        """The subrequests as ONE ``/composite`` call, in order and all-or-none; their answers by reference id.

        A failed subrequest rolls every other one back and is raised as the typed error the same request sent
        alone would raise. ``idempotent`` says whether sending the whole call again after a lost answer is safe
        (as for a conditional PATCH and reads); otherwise a lost answer raises ``OutcomeUnknown``."""
        if not 0 < len(subrequests) <= MAX_COMPOSITE_SUBREQUESTS:
            raise ValueError(f"a composite call takes 1 to {MAX_COMPOSITE_SUBREQUESTS} subrequests")
        body = {
            "allOrNone": True,
            # Collated subrequests (the default from v49) may run in any order; ours depend on running in order.
            "collateSubrequests": False,
            "compositeRequest": [self._subrequest(s) for s in subrequests],
        }
        answer = self.json(self.request("POST", "composite", json=body, idempotent=idempotent))
        items = answer.get("compositeResponse") if isinstance(answer, dict) else None
        answers: dict[str, SubResponse] = {}
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("httpStatusCode"), int):
                headers = item.get("httpHeaders") if isinstance(item.get("httpHeaders"), dict) else {}
                answers[str(item.get("referenceId"))] = SubResponse(item["httpStatusCode"], item.get("body"), headers)
        ordered = [answers.get(s.reference_id) for s in subrequests]
        if any(a is None for a in ordered):
            raise TransientError(SERVICE, "unexpected composite answer: a subrequest has no result")
        failed = [a for a in ordered if a is not None and a.status >= 400]
        if failed:
            # The others answer PROCESSING_HALTED (rolled back or not run); the cause is the one that does not.
            culprit = next((a for a in failed if error_details(a.body, "")[1] != PROCESSING_HALTED), failed[0])
            raise self.subrequest_error(culprit)
        return answers

    def _subrequest(self, subrequest: Subrequest) -> dict[str, Any]:
        url = f"/services/data/{self.version}/{subrequest.path.lstrip('/')}"
        if subrequest.params:
            url += "?" + urlencode(subrequest.params)
        wire: dict[str, Any] = {"method": subrequest.method, "url": url, "referenceId": subrequest.reference_id}
        if subrequest.body is not None:
            wire["body"] = subrequest.body
        if subrequest.headers:
            wire["httpHeaders"] = dict(subrequest.headers)
        return wire

    def subrequest_error(self, answer: SubResponse) -> Exception:
        """The error a subrequest's answer stands for: what :meth:`request` raises for the same status and body."""
        status = answer.status
        message, code = error_details(answer.body, f"HTTP {status}")
        headers = {k.lower(): str(v) for k, v in answer.headers.items()}
        retry_after = parse_retry_after(headers.get("retry-after"))
        error: ExternalServiceError
        if status == 401:
            error = AuthenticationError(SERVICE, message, status, code)
        elif status == 404:
            error = NotFound(SERVICE, message, status, code)
        elif status == 409:
            error = Conflict(SERVICE, message, status, code)
        elif status == 412:
            error = PreconditionFailed(SERVICE, message, status, code)
        elif status == 429:
            error = Throttled(SERVICE, message, status, code, retry_after=retry_after)
        elif status >= 500:
            error = TransientError(SERVICE, message, status, code, retry_after=retry_after)
        else:
            error = PermanentError(SERVICE, message, status, code)
        return self._typed(error) if isinstance(error, PermanentError) else error

    # -- sObject Collections -------------------------------------------------------------------------------------
    def collection(self, method: str, path: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One Collections call (``allOrNone`` false); the per-record results in order."""
        if len(records) > MAX_COLLECTION_SIZE:
            raise ValueError(f"sObject Collections take at most {MAX_COLLECTION_SIZE} records per call")
        response = self.request(method, path, json={"allOrNone": False, "records": records})
        results = self.json(response)
        if not isinstance(results, list) or len(results) != len(records):
            raise TransientError(SERVICE, f"unexpected sObject Collections answer from {path}")
        return results

    def delete_many(self, ids: list[str]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(ids), MAX_COLLECTION_SIZE):
            chunk = ids[start : start + MAX_COLLECTION_SIZE]
            response = self.request(
                "DELETE", "composite/sobjects", params={"ids": ",".join(chunk), "allOrNone": "false"}
            )
            results.extend(self.json(response))
        return results
