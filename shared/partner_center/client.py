"""Partner Center Referrals API client (``/v1.0/engagements/referrals``).

Retries, ``Retry-After``, ``client-request-id`` and typed errors come from :class:`ApiClient`; this
module knows the resource: paging by ``@odata.nextLink``, OData filters, JSON Patch with ``If-Match``
and the ids carried by webhook ``ResourceUri`` values. :class:`PartnerCenterClient` is the
:class:`shared.ports.PartnerCenter` of the services, built on the resource's own operations.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ..domain.errors import PermanentError, TransientError
from ..domain.opportunity import Opportunity
from ..domain.referral import Referral, ReferralStatus
from ..httpclient import ApiClient, TokenProvider, create_once
from ..ports import Finder
from .bodies import microsoft_referral_body, partner_referral_body, patch_operations

log = logging.getLogger(__name__)

SERVICE = "Partner Center"
REFERRALS_PATH = "/v1.0/engagements/referrals"
PATCH_OPERATIONS = frozenset({"replace", "add"})
MAX_PAGES = 10_000
_REFERRAL_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{7,63}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def referral_id_from_resource_uri(uri: str) -> str:
    """The referral id at the end of a webhook ``ResourceUri`` (``.../engagements/v1/referrals/{id}``).

    Only the id is used, never the URI itself, so a callback cannot steer our token to another host.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError("ResourceUri is empty")
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme not in ("https", "http") or len(segments) < 2 or segments[-2].lower() != "referrals":
        raise ValueError("ResourceUri does not name a referral")
    candidate = segments[-1]
    if not _GUID.match(candidate):
        raise ValueError("ResourceUri does not end with a referral id")
    return candidate


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _check_id(referral_id: str) -> str:
    if not isinstance(referral_id, str) or not _REFERRAL_ID.match(referral_id):
        raise ValueError("not a valid referral id")
    return quote(referral_id, safe="")


def _check_operations(operations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    for operation in operations:
        if operation.get("op") not in PATCH_OPERATIONS:
            raise ValueError(f"Partner Center accepts only {sorted(PATCH_OPERATIONS)} patch operations")
        path = operation.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("each patch operation needs a JSON Pointer path")
        checked.append({"op": operation["op"], "path": path, "value": operation.get("value")})
    if not checked:
        raise ValueError("a patch needs at least one operation")
    return checked


@dataclass(frozen=True)
class PartnerCenterConfig:
    api_url: str
    timeout: float = 30.0
    max_inline_wait: float = 20.0  # a Retry-After up to this is waited inline; a longer one raises Throttled
    max_attempts: int = 4


class PartnerCenterClient:
    """Typed access to referrals; every method raises :mod:`shared.domain.errors` types on failure."""

    def __init__(
        self,
        config: PartnerCenterConfig,
        token: TokenProvider,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        extra_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.api = ApiClient(
            SERVICE,
            config.api_url,
            token,
            timeout=config.timeout,
            max_inline_wait=config.max_inline_wait,
            max_attempts=config.max_attempts,
            default_headers={"Accept": "application/json"},
            session=session,
            sleep=sleep,
            extra_headers=extra_headers,
        )
        self._base = urlsplit(self.api.base_url)

    # -- the port: referrals in the domain's terms -----------------------------------------------------
    def get(self, referral_id: str) -> Referral:
        response = self.api.request("GET", f"{REFERRALS_PATH}/{_check_id(referral_id)}")
        return self._referral(response)

    def changed_since(self, moment: datetime | None) -> Iterator[Referral]:
        if moment is None:
            yield from self.list_referrals(None, orderby="updatedDateTime asc")
            return
        pages = self.list_referrals(
            f"updatedDateTime ge '{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}'", orderby="updatedDateTime asc"
        )
        try:
            first = next(pages, None)
        except PermanentError:
            # Filtering on updatedDateTime is documented only in older pages; a service that refuses it is
            # read newest first instead, up to the moment asked for.
            log.warning("Partner Center refused the updatedDateTime filter; reading newest first instead")
            recent = []
            for referral in self.list_referrals(None, orderby="updatedDateTime desc"):
                changed = referral.updated_at()
                if changed is not None and changed < moment:
                    break
                recent.append(referral)
            yield from recent[::-1]
            return
        if first is not None:
            yield first
            yield from pages

    def open_referrals(self, since: datetime | None = None) -> Iterator[Referral]:
        """The partner's New and Active referrals (filtered by the service: a day-one load does not page through
        years of closed ones), updated at or after ``since`` when given and when the service takes that filter;
        the caller checks the date again. New is read before Active, so a referral accepted meanwhile is read
        twice rather than missed."""
        stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ") if since is not None else None
        for status in (ReferralStatus.NEW, ReferralStatus.ACTIVE):
            by_status = f"status eq '{status.value}'"
            if stamp is None:
                yield from self.list_referrals(by_status, orderby="createdDateTime asc")
                continue
            pages = self.list_referrals(f"{by_status} and updatedDateTime ge '{stamp}'", orderby="createdDateTime asc")
            try:
                first = next(pages, None)
            except PermanentError:
                # Filtering on updatedDateTime is documented only in older pages (as for changed_since).
                log.warning("Partner Center refused the updatedDateTime filter; reading every open referral instead")
                stamp = None
                yield from self.list_referrals(by_status, orderby="createdDateTime asc")
                continue
            if first is not None:
                yield first
                yield from pages

    def by_external_reference(self, crm_id: str) -> Iterator[Referral]:
        return self.list_referrals(f"externalReferenceId eq {_quoted(crm_id)}")

    def by_engagement(self, engagement_id: str) -> Iterator[Referral]:
        return self.list_referrals(f"engagementId eq {_quoted(engagement_id)}")

    def create(self, opportunity: Opportunity, find: Finder) -> Referral:
        return self.create_referral(partner_referral_body(opportunity), find)

    def create_for_microsoft(self, opportunity: Opportunity, engagement_id: str, find: Finder) -> Referral:
        return self.create_referral(microsoft_referral_body(partner_referral_body(opportunity), engagement_id), find)

    def update(self, referral: Referral, opportunity: Opportunity, fields: list[str]) -> Referral:
        if not referral.id:
            raise ValueError("only a referral Partner Center has created can be updated")
        return self.patch_referral(referral.id, patch_operations(opportunity, fields, referral), etag=referral.e_tag)

    # -- the resource as it is -------------------------------------------------------------------------
    def list_referrals(
        self, odata_filter: str | None = None, orderby: str | None = None, top: int | None = None
    ) -> Iterator[Referral]:
        """Every matching referral, page by page; stops after ``top`` when given."""
        params: dict[str, Any] = {}
        if odata_filter:
            params["$filter"] = odata_filter
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            if top < 1:
                raise ValueError("top must be at least 1")
            params["$top"] = top
        url: str | None = REFERRALS_PATH
        seen: set[str] = set()
        returned = 0
        for _page in range(MAX_PAGES):
            if url is None:
                return
            response = self.api.request("GET", url, params=params or None)
            body = _json(response)
            for item in body.get("value") or []:
                yield Referral.model_validate(item)
                returned += 1
                if top is not None and returned >= top:
                    return
            link = body.get("@odata.nextLink")
            url = self._next_url(link) if isinstance(link, str) and link else None
            if url is not None and url in seen:
                raise TransientError(SERVICE, "the referral list repeated a page link; stopped paging")
            if url is not None:
                seen.add(url)
            params = {}  # the next link already carries the query
        raise TransientError(SERVICE, f"the referral list did not end after {MAX_PAGES} pages")

    def create_referral(
        self, referral: Mapping[str, Any] | Referral, find: Callable[[], Referral | None] | None = None
    ) -> Referral:
        """Create a referral. A create whose answer was lost may have taken effect: without ``find`` that
        raises :class:`OutcomeUnknown`; with it, ``find`` looks for what the attempt made (by a key the
        caller chose, such as ``externalReferenceId``) and the create is sent again only if nothing is found."""
        body = referral.to_json_dict() if isinstance(referral, Referral) else dict(referral)

        def send() -> Referral:
            return self._referral(self.api.request("POST", REFERRALS_PATH, json=body))

        return send() if find is None else create_once(send, find, "a referral")

    def patch_referral(
        self, referral_id: str, operations: Sequence[Mapping[str, Any]], etag: str | None = None
    ) -> Referral:
        """Apply JSON Patch ``replace``/``add`` operations; with ``etag`` a concurrent change raises
        :class:`PreconditionFailed` (HTTP 412) instead of being overwritten."""
        path = f"{REFERRALS_PATH}/{_check_id(referral_id)}"
        headers = {"Prefer": "return=representation"}
        if etag:
            headers["If-Match"] = etag
        response = self.api.request("PATCH", path, json=_check_operations(operations), headers=headers)
        if response.status_code == 204 or not response.content:
            # The service ignored Prefer: read the result so callers always get the new eTag.
            return self.get(referral_id)
        return self._referral(response)

    def _next_url(self, link: str) -> str:
        # The documented nextLink host/scheme are odd (http, another path); only its path and query are
        # trusted, and they are always sent to the configured base so the bearer token never leaves it.
        parts = urlsplit(link)
        if not parts.path:
            raise PermanentError(SERVICE, "the referral list returned an unusable next link")
        query = f"?{parts.query}" if parts.query else ""
        return f"{self._base.scheme}://{self._base.netloc}{parts.path}{query}"

    @staticmethod
    def _referral(response: requests.Response) -> Referral:
        referral = Referral.model_validate(_json(response))
        if not referral.e_tag and response.headers.get("ETag"):
            referral.e_tag = response.headers["ETag"]
        return referral


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise TransientError(SERVICE, f"unexpected non-JSON answer (HTTP {response.status_code})") from None
    if not isinstance(body, dict):
        raise TransientError(SERVICE, f"unexpected JSON answer (HTTP {response.status_code})")
    return body
