"""What each Salesforce operation costs of the org's daily API allocation, counted as the requests the emulator
receives: a read is one query, a write of the opportunity's own fields (and the sync outcome) one composite
call, and what each call answers is what a fresh read returns. Failed subrequests of a composite call raise
the errors the same request sent alone raises, so the engine's handling of 412, throttling and the daily
quota is unchanged."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from emulators.salesforce.emulator import SalesforceEmulator
from shared.crm.salesforce import SalesforceCrm
from shared.crm.salesforce.api import QuotaExhausted, SalesforceRecordError
from shared.crm.salesforce.mapping import parse_modstamp
from shared.domain.errors import NotFound, PreconditionFailed, Throttled, TransientError
from shared.domain.opportunity import Contact
from tests.test_salesforce_adapter import CLOCK, TODAY, _no_sleep, from_settings, full_opportunity, settings

API = "/services/data/v62.0"


SALESFORCE_EMULATOR_OPTIONS = {"clock": CLOCK}


@pytest.fixture
def emu(salesforce_server: SalesforceEmulator) -> SalesforceEmulator:
    server = salesforce_server
    server.reset()
    server.upsert_update_status = 200
    return server


@pytest.fixture
def crm(emu: SalesforceEmulator) -> SalesforceCrm:
    return from_settings(settings(emu), sleep=_no_sleep, today=lambda: TODAY, now=CLOCK)


# The poll and the queue put seconds between a seller's save and our write; a version younger than a job's read
# to write is looked at once more before the write (test_salesforce_adapter: the second of the version read).
SETTLED = 7


class Calls:
    """The REST API requests the emulator receives from now on (the token endpoint is not part of the API)."""

    def __init__(self, emu: SalesforceEmulator) -> None:
        self.emu = emu
        self.start = len(emu.request_log)
        self.usage = emu.api_usage()[0]

    def __call__(self) -> list[str]:
        """Each request as ``METHOD resource``, a query as ``GET query <object>``."""
        seen = []
        for method, raw in self.emu.request_log[self.start :]:
            url = urlsplit(raw)
            if not url.path.startswith(API):
                continue
            resource = url.path.removeprefix(API + "/")
            if resource == "query":
                statement = parse_qs(url.query)["q"][0]
                resource = "query " + statement.rsplit(" FROM ", 1)[1].split()[0]  # the outer object
            seen.append(f"{method} {resource}")
        return seen

    def charged(self) -> int:
        """How much of the daily allocation the requests used."""
        return self.emu.api_usage()[0] - self.usage


# -- reading ------------------------------------------------------------------------------------------------------
def test_reading_an_opportunity_with_its_account_and_contacts_is_one_query(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    created = crm.create_opportunity(full_opportunity())
    crm_id = created.crm_id or ""
    # A seller adds a contact role and makes it the primary one: it reads first, the others in the order added.
    cy = emu.seed("Contact", {"FirstName": "Cy", "LastName": "Ng", "Email": "cy@contoso.example"})[0]["Id"]
    emu.seed("OpportunityContactRole", {"OpportunityId": crm_id, "ContactId": cy, "IsPrimary": True})

    calls = Calls(emu)
    by_id = crm.get_opportunity(crm_id)
    assert calls() == ["GET query Opportunity"]
    by_referral = crm.find_by_referral_id("ref-0001")
    assert calls() == ["GET query Opportunity"] * 2 and calls.charged() == 2

    assert by_id is not None and by_id == by_referral
    assert [c.email for c in by_id.customer_contacts] == [
        "cy@contoso.example",
        "ann@contoso.example",
        "bo@contoso.example",
    ]
    assert by_id.customer_contacts[2] == Contact(first_name="Bo", email="bo@contoso.example")  # no placeholder name
    assert by_id.customer_name == "Contoso Ltd" and by_id.customer_address.line2 == "Building 4"
    assert by_id.customer_address.country == "US" and by_id.deal_value == Decimal("125000.50")
    # The same opportunity, contacts and order as the two queries this read replaces (record, then its roles).
    roles = crm._roles.read([crm_id])[crm_id]
    assert [c.email for c in by_id.customer_contacts] == [r["Contact"]["Email"] for r in roles]
    assert by_id.model_copy(update={"customer_contacts": ()}) == created.model_copy(update={"customer_contacts": ()})


def test_a_long_contact_list_is_read_to_the_end(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    created = crm.create_opportunity(full_opportunity())
    emu.configure(subquery_batch_size=1)  # Salesforce pages long child lists like any query result
    try:
        calls = Calls(emu)
        again = crm.get_opportunity(created.crm_id or "")
        assert again == created and len(again.customer_contacts) == 2
        first, *more = calls()
        assert first == "GET query Opportunity"
        assert len(more) == 1 and more[0].startswith("GET query/01g")  # the second contact's page
    finally:
        emu.configure(subquery_batch_size=200)


# -- updating -----------------------------------------------------------------------------------------------------
def test_an_update_of_plain_fields_is_one_call_that_answers_what_a_fresh_read_returns(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    current = crm.create_opportunity(full_opportunity())
    desired = current.model_copy(update={"deal_value": Decimal("99.95"), "notes": "Scope doubled"})
    CLOCK.advance(SETTLED)

    calls = Calls(emu)
    updated = crm.update_opportunity(current, desired, ["deal_value", "notes"])
    assert calls() == ["POST composite"] and calls.charged() == 1  # was: PATCH, then a query and a roles query
    assert updated.deal_value == Decimal("99.95") and updated.notes == "Scope doubled"
    assert updated.etag != current.etag
    assert updated == crm.get_opportunity(current.crm_id or "")
    assert [(w["fields"], "ifUnmodifiedSince" in w) for w in emu.writes()[-1:]] == [(["Amount", "Description"], True)]

    CLOCK.advance(SETTLED)
    calls = Calls(emu)
    closed = crm.update_opportunity(
        updated, updated.model_copy(update={"status": "Closed", "substatus": "Won"}), ["status", "substatus"]
    )
    assert calls() == ["POST composite"]
    assert (closed.status, closed.substatus) == ("Closed", "Won")
    assert closed == crm.get_opportunity(current.crm_id or "")


def test_setting_the_sync_outcome_is_one_call(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    current = crm.create_opportunity(full_opportunity())
    CLOCK.advance(SETTLED)
    calls = Calls(emu)
    marked = crm.set_sync_outcome(current, "✔ Contoso Azure migration", "new line\ncreated")
    assert calls() == ["POST composite"] and calls.charged() == 1  # was: PATCH, then a GET of the stamp
    assert marked == crm.get_opportunity(current.crm_id or "")
    assert marked.name == "✔ Contoso Azure migration" and marked.audit == "new line\ncreated"


def test_a_change_within_the_second_of_the_read_comes_back_with_the_write(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    """If-Unmodified-Since has whole seconds: a seller's edit in the second of our read passes the condition. The
    record is read once more before the write, and the edit makes it a precondition failure: nothing written."""
    created = crm.create_opportunity(full_opportunity())
    renamed = emu.update_record("Opportunity", created.crm_id or "", {"Name": "Renamed by the seller"})
    # Our read, as if made earlier in the second of the seller's save: the condition cannot tell them apart.
    current = created.model_copy(update={"modified_at": parse_modstamp(renamed["SystemModstamp"])})
    writes = len(emu.writes())
    with pytest.raises(PreconditionFailed):
        crm.update_opportunity(current, current.model_copy(update={"notes": "ours"}), ["notes"])
    assert len(emu.writes()) == writes
    kept = crm.get_opportunity(current.crm_id or "")
    assert kept is not None and (kept.name, kept.notes) == ("Renamed by the seller", created.notes)


# -- creating -----------------------------------------------------------------------------------------------------
def made_meanwhile(crm: SalesforceCrm, make: Callable[[], object]) -> None:
    """``make`` runs right after the create's lookup (one composite call of queries) has found nothing: a record
    made by someone else in between, which only the create itself can notice."""
    lookup = crm._customers.plan

    def plan(*args: Any, **kwargs: Any) -> Any:
        answer = lookup(*args, **kwargs)
        crm._customers.plan = lookup  # once
        make()
        return answer

    crm._customers.plan = plan  # type: ignore[method-assign]


def test_creating_an_opportunity_for_a_known_customer(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    crm.create_opportunity(full_opportunity("ref-first"))  # the customer, its two contacts, the active currencies

    calls = Calls(emu)
    created = crm.create_opportunity(full_opportunity("ref-second"))
    # The lookup of the referral id, the account and both contacts in one composite call of queries; then the
    # upsert, the contact roles and the read-back in another (was: the two queries, the upsert, the roles and
    # the read, five calls; and the engine's lookup before them).
    assert calls() == ["POST composite", "POST composite"] and calls.charged() == 2
    assert created == crm.get_opportunity(created.crm_id or "")
    assert [c.email for c in created.customer_contacts] == ["ann@contoso.example", "bo@contoso.example"]
    assert len(emu.records("Account")) == 1 and len(emu.records("Contact")) == 2

    calls, writes = Calls(emu), len(emu.writes())
    with pytest.raises(PreconditionFailed):  # a second create for the referral: found by the lookup, nothing sent
        crm.create_opportunity(full_opportunity("ref-second"))
    assert calls() == ["POST composite"] and len(emu.writes()) == writes
    assert len(emu.records("OpportunityContactRole")) == 4  # two per opportunity, none twice


def test_a_record_made_between_lookup_and_create_gets_roles_a_seller_changed_rewritten(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    other = from_settings(settings(emu), sleep=_no_sleep, today=lambda: TODAY, now=CLOCK)  # a concurrent worker

    def made_by_the_other_with_a_changed_role() -> None:
        other.create_opportunity(full_opportunity())
        [ann_role] = [r for r in emu.records("OpportunityContactRole") if r["IsPrimary"]]
        emu.update_record("OpportunityContactRole", ann_role["Id"], {"IsPrimary": False})

    made_meanwhile(crm, made_by_the_other_with_a_changed_role)
    calls = Calls(emu)
    again = crm.create_opportunity(full_opportunity())  # the upsert finds the record: "created": false
    assert calls()[-3:] == ["DELETE composite/sobjects", "POST composite/sobjects", "GET query Opportunity"]
    assert [c.email for c in again.customer_contacts] == ["ann@contoso.example", "bo@contoso.example"]
    assert len(emu.records("Opportunity")) == 1 and again == crm.get_opportunity(again.crm_id or "")


def test_an_upsert_answered_with_204_reads_the_record_once(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    other = from_settings(settings(emu), sleep=_no_sleep, today=lambda: TODAY, now=CLOCK)
    made = []

    def made_by_the_other() -> None:
        made.append(other.create_opportunity(full_opportunity()))
        emu.upsert_update_status = 204  # older API versions: no body, so no id

    made_meanwhile(crm, made_by_the_other)
    calls = Calls(emu)
    again = crm.create_opportunity(full_opportunity())
    assert calls()[-2:] == ["PATCH sobjects/Opportunity/Referral_Identfier__c/ref-0001", "GET query Opportunity"]
    assert again == crm.get_opportunity(made[0].crm_id or "")


def test_contacts_looked_up_together_are_matched_as_one_query_each_would_match_them(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    """A contact without email is found by its name at the account: one created earlier in the same list (with
    an email) is found, as the query sent for it after that create found it, and not created a second time."""
    contacts = (
        Contact(first_name="Ann", last_name="Lee", email="ann@contoso.example"),
        Contact(first_name="Ann", last_name="Lee", title="CTO"),
        Contact(first_name="Bo", last_name="Ek", email="bo@contoso.example"),
    )
    emu.seed("Contact", {"FirstName": "Bo", "LastName": "Old", "Email": "BO@contoso.example"})  # found by email
    created = crm.create_opportunity(full_opportunity(customer_contacts=contacts))
    assert sorted((c["FirstName"], c["LastName"]) for c in emu.records("Contact")) == [("Ann", "Lee"), ("Bo", "Ek")]
    assert [c.email for c in created.customer_contacts] == ["ann@contoso.example", "bo@contoso.example"]
    contact_writes = [(w["operation"], w["fields"]) for w in emu.writes() if w["object"] == "Contact"]
    assert contact_writes == [
        ("create", ["AccountId", "Email", "FirstName", "LastName"]),  # Ann, once
        ("update", ["Title"]),  # the same Ann, found by her name at the account
        ("update", ["AccountId", "Email", "LastName"]),  # Bo, found by his email
    ]


def test_many_contacts_are_looked_up_in_a_few_queries_that_keep_the_url_short(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    contacts = tuple(Contact(last_name=f"Person {i}", email=f"{'x' * 60}.{i:03d}@contoso.example") for i in range(60))
    crm.create_opportunity(full_opportunity("ref-first", customer_contacts=contacts))
    calls = Calls(emu)
    created = crm.create_opportunity(full_opportunity("ref-second", customer_contacts=contacts))
    # The contacts' queries ride in the lookup's composite call: two of them (not 60), each far below 16 KB.
    assert calls() == ["POST composite", "POST composite"]
    queries = crm._customers._contact_queries(list(contacts), None)
    assert len(queries) == 2 and max(len(quote(q)) for q in queries) < 12000
    assert len(emu.records("Contact")) == 60 and [c.email for c in created.customer_contacts] == [
        c.email for c in contacts
    ]


# -- failed subrequests -------------------------------------------------------------------------------------------
def test_a_refused_condition_in_the_composite_call_is_precondition_failed_and_writes_nothing(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    current = crm.create_opportunity(full_opportunity())
    CLOCK.advance(SETTLED)
    emu.update_record("Opportunity", current.crm_id or "", {"Description": "a seller's edit"})
    writes = len(emu.writes())
    calls = Calls(emu)
    with pytest.raises(PreconditionFailed):
        crm.update_opportunity(current, current.model_copy(update={"deal_value": Decimal(1)}), ["deal_value"])
    with pytest.raises(PreconditionFailed):
        crm.set_sync_outcome(current, "✔ x", "audit")
    assert calls() == ["POST composite"] * 2 and len(emu.writes()) == writes


def test_a_lost_answer_to_the_composite_call_is_sent_again_and_refused_by_its_own_condition(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    """As with the PATCH alone: the first call took effect, the repeat is refused with 412, and the engine
    re-reads and finds the value in place. The write happened once."""
    current = crm.create_opportunity(full_opportunity())
    CLOCK.advance(2)  # the repeat carries a condition older than our own write
    emu.network_faults.add("lose_answer", method="POST", path=r"/composite$", mode="502")
    try:
        with pytest.raises(PreconditionFailed):
            crm.update_opportunity(current, current.model_copy(update={"notes": "once"}), ["notes"])
    finally:
        emu.network_faults.clear()
    assert [w["fields"] for w in emu.writes() if w["operation"] == "update"] == [["Description"]]
    assert emu.record("Opportunity", current.crm_id or "")["Description"] == "once"  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (503, None, TransientError),
        (429, None, Throttled),
        (403, "REQUEST_LIMIT_EXCEEDED", QuotaExhausted),
    ],
)
def test_a_failed_subrequest_raises_what_the_request_alone_would(
    emu: SalesforceEmulator, crm: SalesforceCrm, status: int, code: str | None, error: type[Exception]
) -> None:
    current = crm.create_opportunity(full_opportunity())
    writes = len(emu.writes())
    emu.inject_fault(status, method="PATCH", path=r"/sobjects/Opportunity/006", retry_after=120, error_code=code)
    with pytest.raises(error) as raised:
        crm.update_opportunity(current, current.model_copy(update={"notes": "x"}), ["notes"])
    assert isinstance(raised.value, TransientError) and raised.value.status == status
    if status != 403:
        assert raised.value.retry_after == 120  # the subrequest's own Retry-After
    assert len(emu.writes()) == writes and emu.counters()["faults"] == 1


def test_record_errors_and_a_vanished_record_in_a_subrequest(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    current = crm.create_opportunity(full_opportunity())
    with pytest.raises(SalesforceRecordError) as refused:
        crm.update_opportunity(current, current.model_copy(update={"name": None}), ["name"])
    assert refused.value.code == "REQUIRED_FIELD_MISSING"
    seller = {"Authorization": f"Bearer {emu.issue_token()}"}
    deleted = requests.delete(f"{emu.url}{API}/sobjects/Opportunity/{current.crm_id}", headers=seller, timeout=5)
    assert deleted.status_code == 204  # a seller deletes it meanwhile
    with pytest.raises(NotFound):
        crm.set_sync_outcome(current, "✔ x", "audit")
