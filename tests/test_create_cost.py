"""What creating an opportunity for a referral costs in the CRM, counted as the requests the emulators receive,
and the Dataverse deep insert that makes it cheap: the customer's account and contacts are found in one read each
and created together (a new account with its contacts in one deep insert; a new primary contact nested in the
opportunity's create), all or nothing, and never twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from emulators.dataverse import DataverseEmulator
from emulators.salesforce.emulator import SalesforceEmulator
from shared.crm.dynamics import DataverseConfig, DataverseCrm
from shared.crm.dynamics.mapping import default_mapping
from shared.crm.salesforce import SalesforceCrm
from shared.domain.errors import PreconditionFailed
from shared.domain.opportunity import Contact
from tests.test_dynamics_adapter import _opportunity
from tests.test_salesforce_adapter import CLOCK, TODAY, _no_sleep, from_settings, full_opportunity, settings
from tests.test_salesforce_cost import Calls, made_meanwhile

TOKEN = "create-cost-token"
API = "/api/data/v9.2"
ADA = Contact(first_name="Ada", last_name="Lovelace", email="ada@contoso.com", title="CTO")
GRACE = Contact(first_name="Grace", last_name="Hopper", email="grace@contoso.com")


@pytest.fixture
def emu(dataverse_emu: DataverseEmulator) -> DataverseEmulator:
    return dataverse_emu


@pytest.fixture
def crm(emu: DataverseEmulator) -> DataverseCrm:
    adapter = DataverseCrm(DataverseConfig(emu.url), lambda: TOKEN)
    adapter._currencies.id_of("EUR")  # loaded once per adapter; not what a record costs
    adapter.org_columns()  # the org's columns, learned once per adapter; not what a record costs either
    return adapter


def _calls(emu: DataverseEmulator, since: int) -> list[str]:
    """Each request as ``METHOD entity set``."""
    return [
        f"{method} {path.split('?')[0].split('(')[0].rsplit('/', 1)[-1]}" for method, path in emu.request_log[since:]
    ]


def _post(emu: DataverseEmulator, entity_set: str, body: dict[str, Any], **params: str) -> requests.Response:
    return requests.post(
        f"{emu.url}{API}/{entity_set}",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {TOKEN}", "Prefer": "return=representation"},
        timeout=5,
    )


# -- the adapter ----------------------------------------------------------------------------------------------------
def test_a_new_customer_with_two_contacts_costs_two_reads_and_one_write(
    emu: DataverseEmulator, crm: DataverseCrm
) -> None:
    before = len(emu.request_log)
    created = crm.create_opportunity(_opportunity(customer_contacts=(ADA, GRACE)))
    # Before: a read and a write for the account and for each contact, and the opportunity's upsert (7); then the
    # account's own deep insert before the opportunity's (4). Now the account and its contacts ride in the create.
    assert _calls(emu, before) == ["GET accounts", "GET contacts", "POST opportunities"]
    (account,) = emu.table("accounts")
    contacts = {c["emailaddress1"]: c for c in emu.table("contacts")}
    assert sorted(contacts) == ["ada@contoso.com", "grace@contoso.com"]
    assert all(c["_parentcustomerid_value"] == account["accountid"] for c in contacts.values())
    row = emu.record("opportunities", created.crm_id or "")
    assert row is not None and row["_customerid_value"] == account["accountid"]
    assert row["_parentcontactid_value"] == contacts["ada@contoso.com"]["contactid"]
    assert created == crm.get_opportunity(created.crm_id or "")


def test_a_known_customer_costs_one_read_and_one_write(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    crm.create_opportunity(_opportunity("0b5e3a6c-1111-4c1e-9d1a-000000000098", customer_contacts=(ADA, GRACE)))
    before = len(emu.request_log)
    created = crm.create_opportunity(_opportunity(customer_contacts=(ADA, GRACE)))
    # The account's contacts come with the account's read ($expand); before, a read of its own (3).
    assert _calls(emu, before) == ["GET accounts", "POST opportunities"]
    assert len(emu.table("accounts")) == 1 and len(emu.table("contacts")) == 2
    assert created == crm.get_opportunity(created.crm_id or "")


def test_a_new_primary_contact_of_a_known_account_is_created_inside_the_opportunity_create(
    emu: DataverseEmulator, crm: DataverseCrm
) -> None:
    account = emu.seed("accounts", {"name": "Contoso Ltd", "address1_postalcode": "98052"})[0]
    emu.seed("contacts", {"firstname": "Grace", "lastname": "Hopper", "emailaddress1": "GRACE@contoso.com"})
    before = len(emu.request_log)
    created = crm.create_opportunity(_opportunity(customer_contacts=(ADA, GRACE)))
    calls = _calls(emu, before)
    # The account's missing address parts and Grace's missing company are filled in; Ada comes with the create.
    assert calls == ["GET accounts", "GET contacts", "PATCH accounts", "PATCH contacts", "POST opportunities"]
    contacts = {c["emailaddress1"].lower(): c for c in emu.table("contacts")}
    assert sorted(contacts) == ["ada@contoso.com", "grace@contoso.com"]
    assert all(c["_parentcustomerid_value"] == account["accountid"] for c in contacts.values())
    row = emu.record("opportunities", created.crm_id or "")
    assert row is not None and row["_parentcontactid_value"] == contacts["ada@contoso.com"]["contactid"]
    assert created == crm.get_opportunity(created.crm_id or "")


def test_one_contact_listed_twice_is_created_once(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    twice = Contact(first_name="Ada", last_name="Lovelace", email="ADA@contoso.com")
    crm.create_opportunity(_opportunity(customer_contacts=(ADA, twice)))
    assert [c["emailaddress1"] for c in emu.table("contacts")] == ["ada@contoso.com"]


def test_a_second_create_for_the_referral_makes_nothing_not_even_its_new_contact(
    emu: DataverseEmulator, crm: DataverseCrm
) -> None:
    emu.seed("accounts", {"name": "Contoso Ltd", "address1_postalcode": "98052"})
    first = crm.create_opportunity(_opportunity(customer_contacts=(ADA,)))
    other = DataverseCrm(DataverseConfig(emu.url), lambda: TOKEN)  # a concurrent worker with another team list
    with pytest.raises(PreconditionFailed):  # the key is taken: the engine reads that record and merges with it
        other.create_opportunity(_opportunity(customer_contacts=(GRACE,)))
    assert emu.record("opportunities", first.crm_id or "") is not None
    assert [c["emailaddress1"] for c in emu.table("contacts")] == ["ada@contoso.com"]  # Grace's insert rolled back
    assert len(emu.table("opportunities")) == 1


# -- the emulator's deep insert ---------------------------------------------------------------------------------------
def test_deep_insert_creates_the_nested_rows_and_answers_with_the_created_record(emu: DataverseEmulator) -> None:
    body = {
        "name": "Deep",
        "customerid_account": {
            "name": "Fabrikam",
            "contact_customer_accounts": [{"lastname": "One"}, {"lastname": "Two", "emailaddress1": "two@f.example"}],
        },
        "parentcontactid": {"firstname": "Pat", "lastname": "Primary"},
    }
    response = _post(emu, "opportunities", body, **{"$select": "name,_customerid_value,_parentcontactid_value"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == "Deep" and "customerid_account" not in created
    (account,) = emu.table("accounts")
    assert created["_customerid_value"] == account["accountid"]
    children = [c for c in emu.table("contacts") if c["_parentcustomerid_value"] == account["accountid"]]
    assert sorted(c["lastname"] for c in children) == ["One", "Two"]
    primary = emu.record("contacts", created["_parentcontactid_value"])
    assert primary is not None and primary["fullname"] == "Pat Primary"
    assert emu.counters()["tables"]["contacts"]["creates"] == 3


@pytest.mark.parametrize(
    "nested",
    [
        {"customerid_account": {"name": "Fabrikam", "contact_customer_accounts": [{"nosuchcolumn": 1}]}},
        {"customerid_account": {"name": "Fabrikam"}, "parentcontactid": {"lastname": "X"}, "nosuchnav": {"a": 1}},
        {"customerid_account": {"name": "Fabrikam", "contact_customer_accounts": {"lastname": "not an array"}}},
        {"customerid_account": {"name": "Fabrikam"}, "customerid_account@odata.bind": "/accounts(x)"},
        {"ownerid": {"fullname": "A user cannot be deep-inserted"}},
    ],
)
def test_a_refused_deep_insert_leaves_nothing_behind(emu: DataverseEmulator, nested: dict[str, Any]) -> None:
    response = _post(emu, "opportunities", {"name": "Deep", **nested})
    assert response.status_code == 400, response.text
    assert emu.table("opportunities") == [] and emu.table("accounts") == [] and emu.table("contacts") == []


def test_a_deep_insert_under_a_taken_alternate_key_creates_none_of_its_rows(emu: DataverseEmulator) -> None:
    key = _opportunity().referral_id
    column = default_mapping().column("referral_id")
    assert _post(emu, "opportunities", {"name": "First", column: key}).status_code == 201
    again = _post(emu, "opportunities", {"name": "Second", column: key, "parentcontactid": {"lastname": "Nested"}})
    assert again.status_code == 412
    assert [o["name"] for o in emu.table("opportunities")] == ["First"] and emu.table("contacts") == []


# -- Salesforce: one composite call ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sf_server() -> Iterator[SalesforceEmulator]:
    emulator = SalesforceEmulator(clock=CLOCK)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def sf_emu(sf_server: SalesforceEmulator) -> Iterator[SalesforceEmulator]:
    sf_server.reset()
    sf_server.upsert_update_status = 200
    yield sf_server
    sf_server.network_faults.clear()


@pytest.fixture
def sf(sf_emu: SalesforceEmulator) -> SalesforceCrm:
    adapter = from_settings(settings(sf_emu), sleep=_no_sleep, today=lambda: TODAY)
    adapter.create_opportunity(full_opportunity("ref-warm", customer_name=None, customer_contacts=()))
    return adapter  # the org's currencies are learned: not what a record costs


def _roles(emu: SalesforceEmulator, crm_id: str) -> list[tuple[str, bool]]:
    emails = {c["Id"]: c["Email"] for c in emu.records("Contact")}
    roles = [r for r in emu.records("OpportunityContactRole") if r["OpportunityId"] == crm_id]
    return sorted((emails[r["ContactId"]], bool(r["IsPrimary"])) for r in roles)


@pytest.mark.parametrize("known", [False, True], ids=["new customer", "known customer"])
def test_salesforce_creates_customer_opportunity_and_roles_in_one_call(
    sf_emu: SalesforceEmulator, sf: SalesforceCrm, known: bool
) -> None:
    if known:
        sf.create_opportunity(full_opportunity("ref-first"))
    calls = Calls(sf_emu)
    created = sf.create_opportunity(full_opportunity())
    # Before: the account and each contact created on their own, the upsert, the roles, a read-back (8 and 5); then
    # the engine's lookup, a query for the account and one for the contacts, and the composite create (4). Now the
    # lookup and both queries are one composite call of queries, counted once.
    assert calls() == ["POST composite", "POST composite"]
    assert calls.charged() == 2
    assert len(sf_emu.records("Account")) == 1 and len(sf_emu.records("Contact")) == 2
    assert _roles(sf_emu, created.crm_id or "") == [("ann@contoso.example", True), ("bo@contoso.example", False)]
    assert created == sf.get_opportunity(created.crm_id or "")


@pytest.mark.parametrize("mode", ["drop", "502"])
def test_a_lost_answer_to_the_one_call_create_makes_one_of_each(
    sf_emu: SalesforceEmulator, sf: SalesforceCrm, mode: str
) -> None:

    def lose_the_next_answer() -> None:
        sf_emu.network_faults.add("lose_answer", method="POST", path=r"/composite$", mode=mode, count=1)

    made_meanwhile(sf, lose_the_next_answer)  # the create's answer is lost, not the lookup's
    calls = Calls(sf_emu)
    created = sf.create_opportunity(full_opportunity())
    assert sf_emu.network_faults.stats()["pendingRules"] == 0
    # The lost answer costs one read: the referral id finds the whole create (all or none).
    assert calls() == ["POST composite", "POST composite", "GET query Opportunity"] and calls.charged() == 3
    opportunities = [r for r in sf_emu.records("Opportunity") if r["Id"] != created.crm_id]
    assert len(opportunities) == 1  # the warm-up record only
    assert len(sf_emu.records("Account")) == 1 and len(sf_emu.records("Contact")) == 2
    assert _roles(sf_emu, created.crm_id or "") == [("ann@contoso.example", True), ("bo@contoso.example", False)]
    assert created == sf.get_opportunity(created.crm_id or "")


def test_a_record_made_by_hand_between_the_lookup_and_the_create_gets_its_roles_once(
    sf_emu: SalesforceEmulator, sf: SalesforceCrm
) -> None:
    other = from_settings(settings(sf_emu), sleep=_no_sleep, today=lambda: TODAY)  # as if made by a seller
    made_meanwhile(sf, lambda: other.create_opportunity(full_opportunity("ref-0001")))
    again = sf.create_opportunity(full_opportunity("ref-0001"))
    assert _roles(sf_emu, again.crm_id or "") == [("ann@contoso.example", True), ("bo@contoso.example", False)]
    assert len([r for r in sf_emu.records("Opportunity") if r["Id"] == again.crm_id]) == 1
    assert again == sf.get_opportunity(again.crm_id or "")
