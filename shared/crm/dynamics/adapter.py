"""Dynamics 365 adapter: the :class:`shared.ports.Crm` port over the Dataverse Web API.

Every write is keyed or conditional: an opportunity is created by one deep insert that carries the
referral-id alternate key (a second one for the referral fails with 412 and makes nothing, so the create
itself is the guard against a duplicate: no lookup comes before it), accounts and contacts are found
before they are created, and updates carry ``If-Match`` with the etag the caller read. Only columns that
change are sent, because Dataverse runs plug-ins and auditing for every column in a request.

Tokens come from :mod:`shared.crm.dynamics.auth` and the row <-> opportunity mapping from
:mod:`shared.crm.dynamics.mapping`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import requests

from ...domain.errors import NotFound, PermanentError, PreconditionFailed, ValidationFailed
from ...domain.opportunity import WRITABLE_FIELDS, Opportunity
from ...domain.routing import Owner
from ...httpclient import ApiClient, TokenProvider, create_once
from ...ports import Change, DeltaPage
from ...request_pacing import RequestPacer
from ..mapping import CUSTOMER_FIELDS, STATUS_FIELDS, Converters, to_decimal, writable
from ..org_columns import OrgColumns
from .auth import SERVICE
from .changes import modified_changes
from .customer_rows import CustomerFinder
from .customers import Currencies, Customers, Lookups
from .delta import delta_pages
from .leads import DataverseLeads
from .mapping import (
    OPEN,
    WON,
    DataverseMapping,
    account_select,
    check_referral_id,
    contact_select,
    default_mapping,
    row_to_opportunity,
)
from .metadata import mapping_problems
from .org_layout import OrgLayout
from .owners import owner_bind
from .row_states import STATE_COLUMNS, RowStates
from .webapi import LOOKUP_ANNOTATION, MAX_PAGE_SIZE, ODATA_HEADERS, DataverseRows, web_api_root

log = logging.getLogger(__name__)
ANNOTATIONS = f'odata.include-annotations="{LOOKUP_ANNOTATION}"'

CLOSE_SUBJECT = "Closed by the Partner Center co-sell connector"
ALREADY_CLOSED = "0x80040515"  # OpportunityIsAlreadyClosed: "The opportunity is already closed."


@dataclass(frozen=True)
class DataverseConfig:
    """Where the organisation is and how the adapter talks to it; wiring builds it from the settings."""

    org_url: str
    api_version: str = "v9.2"
    mapping: DataverseMapping = field(default_factory=default_mapping)
    timeout: float = 30.0
    max_inline_wait: float = 20.0
    audit_max_chars: int = 20000


class DataverseCrm:
    """Opportunities in Dynamics 365, read and written through the Dataverse Web API."""

    provider = "dynamics"
    closed_is_read_only = True

    def __init__(
        self,
        config: DataverseConfig,
        token: TokenProvider | None,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``token`` None sends no credentials (emulators that check none)."""
        self.config = config
        self.mapping = config.mapping.bounded("audit", config.audit_max_chars)
        self.api = ApiClient(
            SERVICE,
            web_api_root(config.org_url, config.api_version),
            token,
            timeout=config.timeout,
            max_inline_wait=config.max_inline_wait,
            default_headers=ODATA_HEADERS,
            session=session,
            sleep=sleep,
            # One adapter per process (wiring's container): its threads keep under the request limit together.
            pacer=RequestPacer(),
        )
        self._web = DataverseRows(self.api)
        self._customers = Customers(self._web, self.mapping)
        self._new_customer = CustomerFinder(self._web, self.mapping)
        self._currencies = Currencies(self._web)
        self._account_select = account_select(self.mapping)
        self._contact_select = contact_select()
        # The mapping as this organisation's columns allow (optional ones it lacks left out), learned on first use.
        self._org = OrgLayout(
            self._web, self.mapping, Lookups(self._currencies), self._account_select, self._contact_select
        )
        self._states = RowStates()

    @property
    def _converters(self) -> Converters:
        return self._org.get().converters

    @property
    def _opportunity_select(self) -> str:
        return self._org.get().select

    @property
    def _read_params(self) -> dict[str, str]:
        return self._org.get().read_params

    def org_columns(self, learn: bool = True) -> OrgColumns | None:
        """The mapped columns the organisation lacks (one metadata request per adapter); ``learn=False`` only
        says what is known already (None before the first read or write)."""
        return self._org.get().columns if learn else self._org.known()

    def lead_records(self) -> DataverseLeads:
        """Leads made from Partner Center leads (``SYNC_COSELL_ONLY=false``), over the same client."""
        return DataverseLeads(self._web, self.mapping.lead)

    def held_back_for(self) -> float:
        return self.api.held_back_for()

    def check_mapping(self) -> list[str]:
        """What the organisation's metadata says is wrong with the mapping (missing columns, wrong types,
        choice and status values that do not exist); empty when every mapped column fits."""
        return mapping_problems(self._web, self.mapping)

    # -- reading --------------------------------------------------------------------------------------------------
    def get_opportunity(self, crm_id: str) -> Opportunity | None:
        return self._read(f"opportunities({self._guid(crm_id)})")

    def find_by_referral_id(self, referral_id: str) -> Opportunity | None:
        return self._read(self._key_path(referral_id))

    def _read(self, path: str) -> Opportunity | None:
        row = self._web.get(path, self._read_params, ANNOTATIONS, missing_ok=True)
        return self._to_opportunity(row) if row is not None else None

    def stored_form(self, opportunity: Opportunity) -> Opportunity:
        """Only the primary contact is kept on the opportunity (``parentcontactid``), only what the mapping
        stores, and the status as its state and status reason read back (declined and expired are both
        Lost/Canceled, which reads as declined)."""
        stored = self._org.get().mapping.stored(opportunity)
        update: dict[str, Any] = {"customer_contacts": stored.customer_contacts[:1]}
        target = self.mapping.status.target(stored.status, stored.substatus)
        if target is not None:
            update["status"], update["substatus"] = self.mapping.status.status_of(*target)
        return stored.model_copy(update=update)

    def changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        """Flagged opportunities modified at or after ``since`` (see :func:`modified_changes`)."""
        flagged = f"{self.mapping.column('sync_enabled')} eq true"
        hint = self.mapping.column("referral_id")
        return modified_changes(self._web, "opportunities", "opportunityid", flagged, since, page_size, hint)

    def delta_pages(self, link: str | None, page_size: int = MAX_PAGE_SIZE) -> Iterator[DeltaPage]:
        """Flagged opportunities changed, and opportunities deleted, since ``link`` (see :func:`delta_pages`)."""
        flag = self.mapping.column("sync_enabled")
        hint = self.mapping.column("referral_id")
        return delta_pages(self._web, "opportunities", "opportunityid", flag, link, page_size, hint)

    def _to_opportunity(self, row: dict[str, Any]) -> Opportunity:
        """``row`` read with its account and primary contact expanded (null when the customer is a contact)."""
        self._states.remember(row)
        values = self._converters.values(row, row.get("opportunityid"))
        return row_to_opportunity(row, values, row.get("customerid_account"), row.get("parentcontactid"), self.mapping)

    # -- writing --------------------------------------------------------------------------------------------------
    def create_opportunity(self, opportunity: Opportunity, owner: Owner | None = None) -> Opportunity:
        fields = WRITABLE_FIELDS - STATUS_FIELDS
        body = self._columns_for(opportunity, fields)  # validates (the referral-id key too) before any write
        # The create below never touches a row that exists, so the owner never moves one.
        bind = owner_bind(owner) if owner is not None else None
        customer = self._new_customer.prepare(opportunity)
        body = {k: v for k, v in body.items() if v is not None}
        body.update(customer.binds())
        if bind is not None:
            body["ownerid@odata.bind"] = bind
        target = self.mapping.status.target(opportunity.status, opportunity.substatus)
        if target is not None and target[0] == OPEN and target[1] != 1:
            body["statuscode"] = target[1]
        referral_id = check_referral_id(opportunity.referral_id)

        def send() -> Opportunity:
            # One deep insert: the opportunity with whatever of its customer is new nested in it, under the referral
            # id, an alternate key. It is not sent blind again: a lost answer is resolved by that key below.
            response = self.api.request(
                "POST",
                "opportunities",
                params={"$select": self._opportunity_select},
                json=body,
                headers={"Prefer": f"return=representation,{ANNOTATIONS}"},
            )
            # The record as a read would give it: the create's answer, with the account and contact rows as they
            # were just found or made (the answer of a write cannot expand them).
            row: dict[str, Any] = response.json(parse_float=Decimal)
            rows = self._new_customer.finish(customer)
            account, contacts = rows.account, rows.contacts
            row["customerid_account"] = account if account and row.get("_customerid_value") else None
            row["parentcontactid"] = contacts[0] if contacts and row.get("_parentcontactid_value") else None
            return self._to_opportunity(row)

        def made_by_lost_attempt() -> Opportunity | None:
            # All or nothing: the row under the key is the whole create, customer rows included.
            found = self.find_by_referral_id(referral_id)
            if found is not None:
                self._new_customer.finish(customer)
            return found

        try:
            created = create_once(send, made_by_lost_attempt, f"the opportunity for referral {referral_id}")
        except PreconditionFailed:
            # The key is taken by a row this create did not make (a seller's, or one made before our link was
            # recorded): nothing was created (all or nothing), and the caller reads that row and merges with it.
            raise PreconditionFailed(
                SERVICE, f"an opportunity for referral {referral_id} exists already; not created again", 412
            ) from None
        if target is not None and target[0] != OPEN and created.crm_id and created.status != "Closed":
            self._close(created.crm_id, target, opportunity.deal_value, None)
            return self._reread(created.crm_id)
        return created

    def update_opportunity(self, current: Opportunity, desired: Opportunity, fields: list[str]) -> Opportunity:
        crm_id = self._guid(current.crm_id)
        wanted = writable(fields, "Dynamics 365")
        body = self._columns_for(desired, wanted - STATUS_FIELDS)
        # The state the caller read (same etag) saves a read; the conditional write is the guard either way.
        row = self._states.get(crm_id, current.etag) or self._state_row(crm_id, current.etag)
        is_account = row.get(f"_customerid_value@{LOOKUP_ANNOTATION}", "account") == "account"
        account_id = row.get("_customerid_value") if is_account else None
        if wanted & CUSTOMER_FIELDS:
            found = self._customers.ensure_account(desired)
            if found and found != row.get("_customerid_value"):
                body["customerid_account@odata.bind"] = f"/accounts({found})"
                account_id = found
        if "customer_contacts" in wanted:
            contact_ids = self._customers.ensure_contacts(desired.customer_contacts, account_id)
            if contact_ids and contact_ids[0] != row.get("_parentcontactid_value"):
                body["parentcontactid@odata.bind"] = f"/contacts({contact_ids[0]})"
        target = self.mapping.status.target(desired.status, desired.substatus) if wanted & STATUS_FIELDS else None
        written = self._write(crm_id, current.etag, row, body, target, desired.deal_value)
        if written is None or wanted & CUSTOMER_FIELDS or "customer_contacts" in wanted:
            return self._reread(crm_id)  # closed by an action, or the customer's rows changed
        # The write's answer is the row as it is now; the account and contact are the ones read before.
        self._states.remember(written)
        values = self._converters.values(written, crm_id)
        updated = row_to_opportunity(written, values, None, None, self.mapping)
        return updated.model_copy(
            update={f: getattr(current, f) for f in ("customer_name", "customer_address", "customer_contacts")}
        )

    def set_sync_outcome(self, current: Opportunity, name: str | None, audit: str) -> Opportunity:
        """A closed opportunity is read-only: it is not reopened (a second close activity) for our bookkeeping."""
        crm_id = self._guid(current.crm_id)
        audit = audit[: self.config.audit_max_chars]  # the engine puts the newest entry first
        body: dict[str, Any] = {}
        if name is not None and name != current.name:
            body[self.mapping.column("name")] = name
        if audit != current.audit:
            body[self.mapping.column("audit")] = audit
        if not body or current.status == "Closed":
            return current
        written = self._write(crm_id, current.etag, {"statecode": OPEN}, body, None, None)
        assert written is not None  # an open row written without a status change ends with the PATCH
        self._states.remember(written)
        changed = {"etag": written.get("@odata.etag"), "audit": audit, **({"name": name} if "name" in body else {})}
        return current.model_copy(update=changed)

    def _write(
        self,
        crm_id: str,
        etag: str | None,
        row: dict[str, Any],
        body: dict[str, Any],
        target: tuple[int, int] | None,
        deal_value: Decimal | None,
    ) -> dict[str, Any] | None:
        """Write ``body`` and move to ``target``; a closed row is reopened around the write and closed again.
        Returns the row as the last PATCH left it, or None when a close action came after it."""
        original = (row.get("statecode", OPEN), row.get("statuscode"))
        final = target or original
        status, reopened = original[1], False
        if original[0] != OPEN and (body or final != original):
            status = final[1] if final[0] == OPEN else 1
            etag = self._web.patch("opportunities", crm_id, {"statecode": OPEN, "statuscode": status}, etag)[
                "@odata.etag"
            ]
            reopened = True
        if final[0] == OPEN and final[1] != status:
            body = {**body, "statuscode": final[1]}
        written = None
        if body:
            written = self._web.patch("opportunities", crm_id, body, etag, self._opportunity_select, ANNOTATIONS)
        if final[0] != OPEN and (reopened or original[0] == OPEN):
            # Closing again after a reopen keeps the original close date and revenue.
            same_close = final == original
            revenue = to_decimal(row.get("actualvalue")) if same_close else deal_value
            self._close(crm_id, final, revenue, row.get("actualclosedate") if same_close else None)
            return None
        return written

    def _state_row(self, crm_id: str, etag: str | None) -> dict[str, Any]:
        row = self._web.get(
            f"opportunities({crm_id})",
            {"$select": ",".join(STATE_COLUMNS)},
            ANNOTATIONS,
            missing_ok=True,
        )
        if row is None:
            raise NotFound(SERVICE, f"opportunity {crm_id} does not exist", 404)
        if etag and row.get("@odata.etag") != etag:
            raise PreconditionFailed(SERVICE, f"opportunity {crm_id} changed since it was read", 412)
        return row

    def _close(self, crm_id: str, target: tuple[int, int], revenue: Decimal | None, actual_end: str | None) -> None:
        """Win or lose the opportunity once. The action is a POST that makes a close activity, so it is not
        sent blind again: when its answer is lost, or Dataverse says the opportunity is already closed (an
        earlier attempt took effect), the opportunity's state decides whether it is done."""
        action = "WinOpportunity" if target[0] == WON else "LoseOpportunity"
        close: dict[str, Any] = {"subject": CLOSE_SUBJECT, "opportunityid@odata.bind": f"/opportunities({crm_id})"}
        if revenue is not None:
            close["actualrevenue"] = float(revenue)
        if actual_end:
            close["actualend"] = str(actual_end)[:10]

        def send() -> bool:
            try:
                self.api.request("POST", action, json={"Status": target[1], "OpportunityClose": close})
            except PermanentError as exc:
                if exc.code != ALREADY_CLOSED:
                    raise
                if not self._closed_as(crm_id, target):
                    # Closed otherwise by someone else since we read it: re-read and decide again.
                    raise PreconditionFailed(SERVICE, f"opportunity {crm_id} was closed by someone else", 412) from None
            return True

        create_once(
            send, lambda: True if self._closed_as(crm_id, target) else None, f"the close of opportunity {crm_id}"
        )

    def _closed_as(self, crm_id: str, target: tuple[int, int]) -> bool:
        row = self._web.get(f"opportunities({crm_id})", {"$select": "statecode,statuscode"}, missing_ok=True)
        return row is not None and (row.get("statecode"), row.get("statuscode")) == target

    def _reread(self, crm_id: str) -> Opportunity:
        result = self.get_opportunity(crm_id)
        if result is None:
            raise NotFound(SERVICE, f"opportunity {crm_id} disappeared while it was being written", 404)
        return result

    # -- columns and keys -------------------------------------------------------------------------------------------
    def _columns_for(self, opportunity: Opportunity, fields: Iterable[str]) -> dict[str, Any]:
        wanted = set(fields)
        if "referral_id" in wanted:
            check_referral_id(opportunity.referral_id)  # the alternate key: refused before anything is written
        return self._converters.columns(opportunity, wanted)

    def _key_path(self, referral_id: str | None) -> str:
        value = check_referral_id(referral_id)
        column = self.mapping.column("referral_id")
        return f"opportunities({column}='{quote(value.replace(chr(39), chr(39) * 2), safe='')}')"

    @staticmethod
    def _guid(crm_id: str | None) -> str:
        try:
            return str(uuid.UUID(str(crm_id)))
        except ValueError:
            raise ValidationFailed([f"'{crm_id}' is not a Dynamics 365 record id"]) from None
