"""Salesforce adapter: the :class:`shared.ports.Crm` port over the Salesforce REST API.

It mirrors the Dynamics 365 adapter: opportunities are created by an upsert on the Referral Identifier
external id (a retried create updates the same record instead of adding one), accounts are found by
name and postal code before one is created, contacts by email, and updates send only the requested
fields with ``If-Unmodified-Since`` set to the ``SystemModstamp`` the caller read. What is particular to
Salesforce stays here: stage names (``IsClosed`` / ``IsWon`` for reading), picklist labels, the
mandatory ``CloseDate``, contact roles, and the daily API allocation
(:class:`~shared.crm.salesforce.api.QuotaExhausted`).

Every REST call counts against the org's daily API allocation, so each operation is shaped to cost few:

* an opportunity is read with ONE query: its account through relationship fields (``Account.Name``) and
  its contacts through a subquery on its contact roles (``OpportunityContactRoles``);
* a write of the opportunity's own fields is ONE ``/composite`` call (which the allocation counts as one
  request): the conditional PATCH and then a read of the record, all-or-none, so the answer is the record
  as written, and a 412 on the PATCH is still :class:`~shared.domain.errors.PreconditionFailed`;
* a create costs two calls: ONE composite call of queries (the record under the referral id, which is the
  guard against a second opportunity, the customer's account and its contacts), then ONE all-or-none
  composite call that creates what the customer lacks, upserts the opportunity by the referral id, writes its
  contact roles and reads it back. A lost answer to the second is resolved by looking the referral id up:
  all or none, so the record found is the whole create.

A single-currency org has no ``CurrencyIsoCode`` field and no ``CurrencyType`` object (naming either fails),
and every amount in it is in the org's currency. The adapter learns which kind the org is from one describe
of Opportunity, the first time it reads or writes (once per adapter), and in a single-currency org neither
selects nor writes a currency field: every opportunity reads in the org's currency
(``Organization.DefaultCurrencyIsoCode``), which Partner Center needs with a deal value, and another
currency is refused before anything is written.

The record <-> opportunity mapping is in :mod:`shared.crm.salesforce.mapping`, the account, contact,
contact-role and currency records in :mod:`shared.crm.salesforce.customers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests

from ...domain.errors import NotFound, OutcomeUnknown, PermanentError, PreconditionFailed, ValidationFailed
from ...domain.mapping import mapped_values
from ...domain.opportunity import Opportunity
from ...domain.routing import Owner
from ...ports import Change
from ..mapping import CUSTOMER_FIELDS, STATUS_FIELDS, Converters, writable
from ..org_columns import OrgColumns, RequiredColumnsMissing, checked, org_columns, without_missing
from .api import (
    MAX_COLLECTION_SIZE,
    MAX_COMPOSITE_SUBREQUESTS,
    QUOTA_RETRY_AFTER_SECONDS,
    DuplicateReferralId,
    SalesforceApi,
    Subrequest,
)
from .auth import SERVICE, SalesforceAuth
from .changes import modstamp_changes
from .customers import ContactRoles, Currencies, CustomerPlan, Customers, Lookups, reference
from .leads import SalesforceLeads
from .mapping import (
    OPPORTUNITY_FIELDS,
    OPPORTUNITY_PREFIX,
    PLAIN_FIELDS,
    ROLE_FIELDS,
    ROLE_ORDER,
    ROLES_RELATIONSHIP,
    OrgCurrency,
    SalesforceMapping,
    check_referral_id,
    default_mapping,
    for_org,
    http_date,
    is_record_id,
    parse_modstamp,
    record_to_opportunity,
    soql,
    soql_string,
    stored_form,
    subquery,
)
from .metadata import mapping_problems
from .same_second import must_read_again

log = logging.getLogger(__name__)

# A referral without a closing date still needs one: Salesforce requires CloseDate on every opportunity.
DEFAULT_CLOSE_DAYS = 30
USER_PREFIX = "005"  # only a User can own an opportunity (queues cannot)


@dataclass(frozen=True)
class SalesforceConfig:
    """How the adapter talks to the org (the instance comes with the session); wiring builds it from the
    settings."""

    api_version: str = "v62.0"
    mapping: SalesforceMapping = field(default_factory=default_mapping)
    timeout: float = 30.0
    max_inline_wait: float = 20.0
    audit_max_chars: int = 20000
    quota_retry_after: float = QUOTA_RETRY_AFTER_SECONDS  # how long a used-up daily quota pauses CRM work


@dataclass(frozen=True)
class _Layout:
    """What the org's currency setting makes of the mapping: the converters of the fields read and written and
    the fields every opportunity read selects (no currency field in a single-currency org)."""

    org: OrgCurrency
    converters: Converters
    fields: tuple[str, ...]
    mapping: SalesforceMapping  # without the optional fields whose field the org lacks
    columns: OrgColumns


class SalesforceCrm:
    """Opportunities in Salesforce, read with SOQL and written through sObject rows and collections."""

    provider = "salesforce"
    closed_is_read_only = False

    def __init__(
        self,
        config: SalesforceConfig,
        auth: SalesforceAuth,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        today: Callable[[], date] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._now = now or (lambda: datetime.now(UTC))
        self.mapping = config.mapping.bounded("audit", config.audit_max_chars)
        self.api = SalesforceApi(
            auth,
            config.api_version,
            session,
            timeout=config.timeout,
            max_inline_wait=config.max_inline_wait,
            sleep=sleep,
            quota_retry_after=config.quota_retry_after,
        )
        self._today = today or (lambda: datetime.now(UTC).date())
        self._customers = Customers(self.api)
        self._roles = ContactRoles(self.api)
        self._currencies = Currencies(self.api)
        self._layout_cache: _Layout | None = None  # built once the org's kind is known (see _layout)
        # The contact roles come with the opportunity, in the order ContactRoles.read gives them.
        self._roles_subquery = subquery(ROLES_RELATIONSHIP, ROLE_FIELDS, ROLE_ORDER)

    def lead_records(self) -> SalesforceLeads:
        """Leads made from Partner Center leads (``SYNC_COSELL_ONLY=false``), over the same API client."""
        return SalesforceLeads(self.api, self.mapping.lead, now=self._now, sleep=self._sleep)

    def held_back_for(self) -> float:
        # Salesforce refuses over its daily allocation (a pause for all work), not with a short Retry-After.
        return 0.0

    def check_mapping(self) -> list[str]:
        """What the org's describe of Opportunity says is wrong with the mapping (missing fields, wrong types,
        picklist values and stages that do not exist); empty when every mapped field fits."""
        return mapping_problems(self.api, self.mapping)

    def _layout(self) -> _Layout:
        """The mapping as the org can use it; the first call learns the org's kind (see Currencies.org)."""
        layout = self._layout_cache
        if layout is None:
            org = self._currencies.org()
            mapping = for_org(self.mapping, org)
            # The same describe says which mapped fields the org has: optional ones it lacks are left out.
            present = self._currencies.opportunity_fields
            try:
                columns = checked(org_columns(mapping, present, SERVICE, "Opportunity", case_sensitive=False))
            except RequiredColumnsMissing:
                self._currencies.forget()  # the next job describes the org again: setup-crm may have run since
                raise
            mapping = without_missing(mapping, columns)
            converters = Converters(mapping, Lookups(self._currencies))
            fields = tuple(dict.fromkeys([*OPPORTUNITY_FIELDS, *converters.select()]))
            # Two threads may both get here: they build the same value, so either may be kept.
            layout = self._layout_cache = _Layout(org, converters, fields, mapping, columns)
        return layout

    def org_columns(self, learn: bool = True) -> OrgColumns | None:
        """The mapped fields the org's Opportunity lacks (from the describe the adapter makes once anyway);
        ``learn=False`` only says what is known already (None before the first read or write)."""
        if learn:
            return self._layout().columns
        return self._layout_cache.columns if self._layout_cache is not None else None

    # -- public extras ------------------------------------------------------------------------------------------
    @property
    def auth(self) -> SalesforceAuth:
        return self.api.auth

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """(used, max) of the org's daily API requests, from the last ``Sforce-Limit-Info`` seen."""
        return self.api.api_usage

    def query(self, soql: str, batch_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Records of any SOQL query, following ``nextRecordsUrl``."""
        return self.api.query(soql, batch_size)

    # -- reading --------------------------------------------------------------------------------------------------
    def get_opportunity(self, crm_id: str) -> Opportunity | None:
        if not is_record_id(crm_id, OPPORTUNITY_PREFIX):
            return None  # an id from another system (or not an opportunity) cannot name one here
        row = self._read(crm_id)
        return self._to_opportunity(row) if row is not None else None

    def find_by_referral_id(self, referral_id: str) -> Opportunity | None:
        if not referral_id:
            return None
        row = self._find(referral_id)
        return self._to_opportunity(row) if row is not None else None

    def changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        """Flagged opportunities changed at or after ``since`` (see :func:`modstamp_changes`)."""
        flagged = f"{self.mapping.column('sync_enabled')} = true"
        hint = self.mapping.column("referral_id")
        return modstamp_changes(self.api, "Opportunity", flagged, since, page_size, hint)

    def stored_form(self, opportunity: Opportunity) -> Opportunity:
        """What reading the opportunity back returns: the status as its stage reads back, one multi-line
        street, products re-split, only contacts that can be stored (once each), no address without an
        account, and in a single-currency org the org's currency where the opportunity has none."""
        layout = self._layout()
        return stored_form(layout.mapping, opportunity, layout.org)

    def _select(self, where: str, order_by: str | None = None) -> str:
        """The query of whole opportunities: mapped fields, the account's fields and the contact roles."""
        return soql("Opportunity", [*self._layout().fields, self._roles_subquery], where, order_by)

    def _select_by_id(self, crm_id: str) -> str:
        return self._select(f"Id = {soql_string(crm_id)}")

    def _read(self, crm_id: str) -> dict[str, Any] | None:
        return next(iter(self.api.query(self._select_by_id(crm_id))), None)

    def _find(self, referral_id: str) -> dict[str, Any] | None:
        field_name = self.mapping.column("referral_id")
        rows = list(self.api.query(self._select(f"{field_name} = {soql_string(referral_id)}", "CreatedDate, Id")))
        if len(rows) > 1:
            # Text external ids match case-insensitively, so an upsert would be refused with 300 as well.
            raise DuplicateReferralId(field_name, referral_id, [str(row["Id"]) for row in rows])
        return rows[0] if rows else None

    def _roles_of(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return self.api.related(row.get(ROLES_RELATIONSHIP))

    def _to_opportunity(self, row: dict[str, Any]) -> Opportunity:
        layout = self._layout()
        values = layout.converters.values(row, row.get("Id"))
        if not layout.org.multi:
            values["currency"] = layout.org.currency  # every amount in a single-currency org is in its currency
        return record_to_opportunity(row, values, self._roles_of(row), self.mapping)

    # -- writing --------------------------------------------------------------------------------------------------
    def create_opportunity(self, opportunity: Opportunity, owner: Owner | None = None) -> Opportunity:
        referral_id = check_referral_id(opportunity.referral_id)
        body = self._fields_for(opportunity, PLAIN_FIELDS - {"referral_id"})  # validates before any write
        if not opportunity.name:
            raise ValidationFailed(["A Salesforce opportunity needs a name"])
        owner_id = self._owner_id(owner)  # checked before any write too
        body = {k: v for k, v in body.items() if v is not None}
        stages = self.mapping.status
        body["StageName"] = stages.stage_for(opportunity.status, opportunity.substatus) or stages.stage_for(
            "Active", None
        )
        body.setdefault(self.mapping.column("close_date"), self._default_close_date())
        # The record under the referral id, asked for in the same composite call as the customer (counted once):
        # the guard against a second opportunity, which costs no request of its own.
        field_name = self.mapping.column("referral_id")
        where = f"{field_name} = {soql_string(referral_id)}"
        lookup = Subrequest("GET", "query", "existing", params={"q": self._select(where, "CreatedDate, Id")})
        plan, existing = self._customers.plan(opportunity, lookup)
        if len(existing) > 1:
            raise DuplicateReferralId(field_name, referral_id, [str(row["Id"]) for row in existing])
        if existing:
            # Made by someone else, or by a job that died before recording it: the caller reads it and merges.
            raise PreconditionFailed(
                SERVICE, f"an opportunity for referral {referral_id} exists already; not created again", 412
            )
        if owner_id is not None:
            # Given on create only: an upsert that finds the record (made meanwhile) would take it from its owner.
            body["OwnerId"] = owner_id
        if fits_one_call(plan):
            try:
                return self._create_in_one_call(referral_id, body, plan)
            except OutcomeUnknown as exc:
                # All or none: nothing was written, or everything was, and the referral id finds it whole.
                log.info("the answer to the one-call create was lost (%s); looking it up", exc.status)
                row = self._find(referral_id)
                if row is not None:
                    return self._to_opportunity(row)
            except (PermanentError, ValidationFailed) as exc:
                # Nothing was written (all or none). A record made meanwhile under the referral id (the upsert
                # then answers without an id, or 300) or a refused value: the careful path reports it as a
                # request of its own would.
                log.info("the one-call create was refused (%s); creating step by step", exc)
        account_id = self._customers.ensure_account(opportunity)
        contact_ids = self._customers.ensure_contacts(opportunity.customer_contacts, account_id)
        if account_id:
            body["AccountId"] = account_id
        crm_id, created, row = self._upsert(referral_id, body)
        if created:
            # This very request made the record (a repeated upsert answers "created": false), so no contact role
            # points at it yet: the roles are written without reading them first, then the record is read once.
            self._roles.sync(crm_id, contact_ids, existing=[])
            return self._reread(crm_id)
        log.info("opportunity for referral %s already existed; updated instead of created again", referral_id)
        row = row or self._require(crm_id)
        if self._roles.sync(crm_id, contact_ids, existing=self._roles_of(row)):
            row = self._require(crm_id)
        return self._to_opportunity(row)

    def update_opportunity(self, current: Opportunity, desired: Opportunity, fields: list[str]) -> Opportunity:
        crm_id = self._crm_id(current.crm_id)
        wanted = writable(fields, "Salesforce")
        body = self._fields_for(desired, wanted & PLAIN_FIELDS)
        if wanted & STATUS_FIELDS:
            stage = self.mapping.status.stage_for(desired.status, desired.substatus)
            if stage is not None:
                body["StageName"] = stage
        account_id: str | None = None
        if wanted & CUSTOMER_FIELDS or "customer_contacts" in wanted:
            account_id = self._customers.ensure_account(desired)
            if account_id and wanted & CUSTOMER_FIELDS:
                body["AccountId"] = account_id
        contact_ids = (
            self._customers.ensure_contacts(desired.customer_contacts, account_id)
            if "customer_contacts" in wanted
            else None
        )
        # The write and the read of the record as written are one call; without fields to write, one read.
        if body:
            self._wait_out_the_version_second(current)
        row = self._patch_and_read(crm_id, body, current.modified_at) if body else self._require(crm_id)
        if contact_ids is not None and self._roles.sync(crm_id, contact_ids, existing=self._roles_of(row)):
            row = self._require(crm_id)
        return self._to_opportunity(row)

    def set_sync_outcome(self, current: Opportunity, name: str | None, audit: str) -> Opportunity:
        crm_id = self._crm_id(current.crm_id)
        audit = audit[: self.config.audit_max_chars]  # the engine puts the newest entry first
        name_field = self.mapping.column("name")
        body: dict[str, Any] = {}
        if name is not None and name != current.name:
            body[name_field] = name
        if audit != current.audit:
            body[self.mapping.column("audit")] = audit
        if not body:
            return current
        self._wait_out_the_version_second(current)
        # Only the new stamp is needed back: the rest of the record is what the caller holds plus what was written.
        stamp_read = Subrequest("GET", f"sobjects/Opportunity/{crm_id}", "stamp", params={"fields": "SystemModstamp"})
        answers = self.api.composite([self._patch(crm_id, body, current.modified_at), stamp_read], idempotent=True)
        answer = answers["stamp"].body
        stamp = answer.get("SystemModstamp") if isinstance(answer, dict) else None
        changed: dict[str, Any] = {"audit": audit, "etag": stamp, "modified_at": parse_modstamp(stamp)}
        if name_field in body:
            changed["name"] = name
        return current.model_copy(update=changed)

    # -- write helpers --------------------------------------------------------------------------------------------
    def _wait_out_the_version_second(self, current: Opportunity) -> None:
        """An edit saved in the second of the version read would pass the write condition (see
        :mod:`.same_second`): for a version that recent, the record is read again once that second is over."""
        if current.crm_id is None or not must_read_again(current.modified_at, self._now, self._sleep):
            return
        stamp = current.modified_at
        fresh = self._to_opportunity(self._require(current.crm_id))
        if fresh.modified_at != stamp or mapped_values(fresh) != mapped_values(current):
            raise PreconditionFailed(
                SERVICE, f"opportunity {current.crm_id} changed in the second of the version read", 412
            )

    def _create_in_one_call(self, referral_id: str, body: dict[str, Any], plan: CustomerPlan) -> Opportunity:
        """The customer's new records, the opportunity (upserted by the referral id), its contact roles and the
        read-back, as one all-or-none composite call. It is not sent twice: a lost answer raises OutcomeUnknown.
        Should the upsert find a record after all (made meanwhile by hand), the roles are put right from it."""
        field_name = self.mapping.column("referral_id")
        opportunity = {**body, **({"AccountId": plan.account} if plan.account else {})}
        calls = [
            *plan.writes,
            Subrequest("PATCH", f"sobjects/Opportunity/{field_name}/{quote(referral_id, safe='')}", "opp", opportunity),
        ]
        if plan.contacts:
            roles = [
                {
                    "attributes": {"type": "OpportunityContactRole"},
                    "OpportunityId": reference("opp"),
                    "ContactId": contact_id,
                    "IsPrimary": index == 0,
                }
                for index, contact_id in enumerate(plan.contacts)
            ]
            calls.append(Subrequest("POST", "composite/sobjects", "roles", {"allOrNone": True, "records": roles}))
        # The reference stays literal in the query string; the service puts the new id there before running it.
        placeholder = "REFERENCED_OPPORTUNITY_ID"
        query = quote(self._select(f"Id = '{placeholder}'"), safe="")
        calls.append(Subrequest("GET", f"query?q={query.replace(placeholder, reference('opp'))}", "read"))
        answers = self.api.composite(calls, idempotent=False)
        upsert = answers["opp"].body if isinstance(answers["opp"].body, dict) else {}
        records = answers["read"].body.get("records") if isinstance(answers["read"].body, dict) else None
        if not records:
            raise NotFound(SERVICE, f"opportunity for referral {referral_id} vanished after its create", 404)
        row = dict(records[0])
        if upsert.get("created") is False:
            log.info("opportunity for referral %s already existed; updated instead of created again", referral_id)
            made = {s.reference_id: answers[s.reference_id].body for s in plan.writes}
            contact_ids = [_resolved(contact_id, made) for contact_id in plan.contacts]
            if self._roles.sync(str(row["Id"]), contact_ids, existing=self._roles_of(row)):
                row = self._require(str(row["Id"]))
        return self._to_opportunity(row)

    def _upsert(self, referral_id: str, body: dict[str, Any]) -> tuple[str, bool, dict[str, Any] | None]:
        """(record id, created, the record when it had to be read) of an upsert by the referral id; 300 means
        duplicates and writes nothing."""
        field_name = self.mapping.column("referral_id")
        response = self.api.request(
            "PATCH",
            f"sobjects/Opportunity/{field_name}/{quote(referral_id, safe='')}",
            json=body,
            ok_statuses=(300,),
        )
        if response.status_code == 300:
            listed = self.api.json(response)
            urls = [item if isinstance(item, str) else str(item.get("url") or item.get("Id")) for item in listed]
            raise DuplicateReferralId(field_name, referral_id, [url.rstrip("/").rsplit("/", 1)[-1] for url in urls])
        created = response.status_code == 201
        answer = self.api.json(response) if response.content else {}
        record_id = answer.get("id") if isinstance(answer, dict) else None
        if record_id:
            return str(record_id), created, None
        # 204 (older API versions) carries no body: look the record up by its key, which reads all of it.
        row = self._find(referral_id)
        if row is None:
            raise NotFound(SERVICE, f"opportunity for referral {referral_id} vanished after the upsert", 404)
        return str(row["Id"]), created, row

    def _patch(self, crm_id: str, body: dict[str, Any], modified_at: datetime | None) -> Subrequest:
        # Opportunity rows have no ETag; If-Unmodified-Since is the condition Salesforce offers (412 on a
        # later change). It has whole-second precision, so a change within the same second goes unnoticed.
        headers = {"If-Unmodified-Since": http_date(modified_at)} if modified_at else {}
        return Subrequest("PATCH", f"sobjects/Opportunity/{crm_id}", "patch", body=body, headers=headers)

    def _patch_and_read(self, crm_id: str, body: dict[str, Any], modified_at: datetime | None) -> dict[str, Any]:
        """Write ``body`` and read the whole record back in one composite call (all-or-none: a refused write
        reads nothing). Sending the call again after a lost answer is as safe as sending the PATCH again: the
        condition then fails with 412 and the caller re-reads and decides anew, as it does for any 412."""
        read = Subrequest("GET", "query", "read", params={"q": self._select_by_id(crm_id)})
        answers = self.api.composite([self._patch(crm_id, body, modified_at), read], idempotent=True)
        result = answers["read"].body
        rows = result.get("records") if isinstance(result, dict) else None
        if not rows:
            raise NotFound(SERVICE, f"opportunity {crm_id} disappeared while it was being written", 404)
        return dict(rows[0])

    def _require(self, crm_id: str) -> dict[str, Any]:
        row = self._read(crm_id)
        if row is None:
            raise NotFound(SERVICE, f"opportunity {crm_id} disappeared while it was being written", 404)
        return row

    def _reread(self, crm_id: str) -> Opportunity:
        return self._to_opportunity(self._require(crm_id))

    def _default_close_date(self) -> str:
        return (self._today() + timedelta(days=DEFAULT_CLOSE_DAYS)).isoformat()

    def _fields_for(self, opportunity: Opportunity, fields: Iterable[str]) -> dict[str, Any]:
        wanted = set(fields)
        if "referral_id" in wanted:
            check_referral_id(opportunity.referral_id)  # the external id: refused before anything is written
        layout = self._layout()
        if "currency" in wanted and not layout.org.multi and opportunity.currency:
            self._currencies.check(opportunity.currency)  # nothing to write, but the amount must be in its currency
        return layout.converters.columns(opportunity, wanted)

    @staticmethod
    def _owner_id(owner: Owner | None) -> str | None:
        if owner is None:
            return None
        if owner.kind != "user" or not is_record_id(owner.id, USER_PREFIX):
            raise ValidationFailed([f"'{owner}' cannot own a Salesforce opportunity: only a User (005...) can"])
        return owner.id

    @staticmethod
    def _crm_id(crm_id: str | None) -> str:
        if not is_record_id(crm_id, OPPORTUNITY_PREFIX):
            raise ValidationFailed([f"'{crm_id}' is not a Salesforce opportunity id"])
        return str(crm_id)


def fits_one_call(plan: CustomerPlan) -> bool:
    """Whether the plan's writes, the upsert, the roles and the read-back fit one composite call."""
    return len(plan.writes) + 3 <= MAX_COMPOSITE_SUBREQUESTS and len(plan.contacts) <= MAX_COLLECTION_SIZE


def _resolved(contact_id: str, made: dict[str, Any]) -> str:
    """A contact's id, where the plan named it by a reference to its create."""
    for reference_id, answer in made.items():
        if contact_id == reference(reference_id) and isinstance(answer, dict):
            return str(answer["id"])
    return contact_id
