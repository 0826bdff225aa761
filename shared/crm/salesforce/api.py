"""The Salesforce REST layer under the CRM adapter: URLs, re-authentication, limits and typed errors.

* Salesforce answers errors as JSON arrays ``[{"message", "errorCode", "fields"}]``; they become the
  shared error types, with data problems (required field, restricted picklist, ...) as
  :class:`SalesforceRecordError` (a :class:`ValidationFailed`: the record must change, retrying won't help).
* 401 ``INVALID_SESSION_ID`` re-authenticates once and repeats the request; a second 401 is final.
* 403 ``REQUEST_LIMIT_EXCEEDED`` is the org's rolling 24-hour allocation: it is raised at once as
  :class:`QuotaExhausted` with a long ``retry_after``, because retrying inline only burns more of it.
* Every response's ``Sforce-Limit-Info`` is kept in :attr:`SalesforceApi.api_usage`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import requests

from ...domain.errors import AuthenticationError, PermanentError, QuotaExceeded, TransientError, ValidationFailed
from ...httpclient import ApiClient
from .auth import SERVICE, SalesforceAuth

log = logging.getLogger(__name__)

QUOTA_RETRY_AFTER_SECONDS = 900.0
MAX_COLLECTION_SIZE = 200
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 200, 2000
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


def parse_errors(response: requests.Response) -> tuple[str, str | None]:
    """(message, first errorCode) from Salesforce's error array (or an OAuth error object)."""
    try:
        body = response.json()
    except ValueError:
        return (response.reason or "error", None)
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
    return (response.reason or "error", None)


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
