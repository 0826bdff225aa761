"""Creates whose answer is lost make exactly one record, on Partner Center and on both CRMs.

A create reaches the service and takes effect, then its answer is lost: the connection drops, or a
gateway answers 502/504 (the emulators' ``lose_answer`` network fault). Sending it again blind made a
second referral, account or contact. Each create below is resolved by the key chosen for it instead:
the referral by ``externalReferenceId`` (Microsoft's by engagement and target), Dataverse rows by the id
the connector gives them, Salesforce records by the matching rule, contact roles by reading them again,
and a Win/Lose by the opportunity's state. The adapter then returns the one record that exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import requests

from emulators._server import Emulator
from emulators.dataverse import DataverseEmulator
from emulators.partner_center import PartnerCenterEmulator
from emulators.salesforce import SalesforceEmulator
from shared.crm.dynamics import DataverseConfig, DataverseCrm
from shared.crm.salesforce import SalesforceConfig, SalesforceCrm
from shared.crm.salesforce.auth import StaticToken as SalesforceSession
from shared.domain.classification import MICROSOFT_ORG_ID
from shared.domain.errors import PreconditionFailed
from shared.domain.opportunity import Contact, CustomerAddress, Opportunity
from shared.domain.referral import Referral
from shared.domain.referral_rules import is_microsoft_copy
from shared.partner_center.auth import StaticToken
from shared.partner_center.bodies import partner_referral_body
from shared.partner_center.client import PartnerCenterClient, PartnerCenterConfig
from shared.sync.referral_creation import ReferralCreator
from tests.e2e_stack import CRMS

MODES = ("drop", "502", "504")
REFERRAL_CREATE = r"^/v1\.0/engagements/referrals$"
DV_API = "/api/data/v9.2"
SF_API = "/services/data/v62.0"
SOLUTION = "SOL-34104-EBB"

Lose = Callable[..., None]


def _no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def lose() -> Iterator[Lose]:
    """``lose(emulator, method, path, mode, count=1)``: the next matching requests take effect and their
    answers are lost. Rules are cleared afterwards: the emulators outlive the test."""
    used: list[Emulator] = []

    def add(emulator: Emulator, method: str, path: str, mode: str, count: int = 1, skip: int = 0) -> None:
        used.append(emulator)
        emulator.network_faults.add("lose_answer", method=method, path=path, mode=mode, count=count, skip=skip)

    yield add
    for emulator in used:
        emulator.network_faults.clear()


def _all_lost(emulator: Emulator, expected: int) -> None:
    """Every rule fired: the test really lost that many answers."""
    stats = emulator.network_faults.stats()
    assert stats["pendingRules"] == 0
    assert sum(n for kind, n in stats["injected"].items() if kind.startswith("lose_answer")) == expected


def _opportunity(**changes: Any) -> Opportunity:
    values: dict[str, Any] = {
        "name": "Contoso cloud migration",
        "deal_value": Decimal("125000.50"),
        "currency": "USD",
        "close_date": date(2027, 9, 30),
        "notes": "Customer wants a proof of concept first.",
        "customer_name": "Contoso Ltd",
        "customer_address": CustomerAddress(
            line1="1 Main St", city="Redmond", state="WA", postal_code="98052", country="US"
        ),
        "customer_contacts": (
            Contact(first_name="Ada", last_name="Lovelace", email="ada@contoso.example", title="CTO"),
            Contact(first_name="Grace", last_name="Hopper", email="grace@contoso.example"),
        ),
        "help_code": "ProofOfConceptOrDemo",
        "solution_ids": (SOLUTION,),
        "status": "Active",
        "substatus": "Accepted",
        "referral_id": "0b5e3a6c-1111-4c1e-9d1a-000000000001",
        "sync_enabled": True,
        "audit": "created",
    }
    values.update(changes)
    return Opportunity(**values)


# -- Partner Center: the partner's referral and Microsoft's -----------------------------------------------------
@pytest.fixture(scope="module")
def pc_server() -> Iterator[PartnerCenterEmulator]:
    emulator = PartnerCenterEmulator(dispatch_mode="off").start()
    yield emulator
    emulator.stop()


@pytest.fixture
def pc_emu(pc_server: PartnerCenterEmulator) -> PartnerCenterEmulator:
    pc_server.reset()
    pc_server.required_token = None
    return pc_server


def _creator(emu: PartnerCenterEmulator) -> ReferralCreator:
    return ReferralCreator(
        PartnerCenterClient(PartnerCenterConfig(emu.url, timeout=5), StaticToken("t"), sleep=_no_sleep)
    )


def _split(referrals: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the partner's referrals, Microsoft's referrals)."""
    microsoft = [r for r in referrals if is_microsoft_copy(Referral.model_validate(r).target)]
    return [r for r in referrals if r not in microsoft], microsoft


@pytest.mark.parametrize("mode", MODES)
def test_lost_answer_to_the_partner_referral_create_makes_one_referral(
    pc_emu: PartnerCenterEmulator, lose: Lose, mode: str
) -> None:
    lose(pc_emu, "POST", REFERRAL_CREATE, mode)
    record = _opportunity(crm_id="crm-opportunity-1", help_code=None)
    created = _creator(pc_emu).ensure(record)
    _all_lost(pc_emu, 1)
    partner, microsoft = _split(pc_emu.referrals())
    assert [r["id"] for r in partner] == [created.referral.id]
    assert partner[0]["externalReferenceId"] == "crm-opportunity-1"
    assert microsoft == [] and created.microsoft_referral_id is None


@pytest.mark.parametrize("mode", MODES)
def test_lost_answers_to_both_cosell_creates_make_one_referral_each(
    pc_emu: PartnerCenterEmulator, lose: Lose, mode: str
) -> None:
    lose(pc_emu, "POST", REFERRAL_CREATE, mode, count=2)
    created = _creator(pc_emu).ensure(_opportunity(crm_id="crm-opportunity-2"))
    _all_lost(pc_emu, 2)
    partner, microsoft = _split(pc_emu.referrals())
    assert [r["id"] for r in partner] == [created.referral.id]
    assert [r["id"] for r in microsoft] == [created.microsoft_referral_id]
    assert microsoft[0]["engagementId"] == partner[0]["engagementId"]


def test_a_create_dropped_before_it_was_handled_is_sent_again_once_nothing_is_found(
    pc_emu: PartnerCenterEmulator,
) -> None:
    pc_emu.network_faults.add("reset", method="POST", path=REFERRAL_CREATE)
    try:
        created = _creator(pc_emu).ensure(_opportunity(crm_id="crm-opportunity-3", help_code=None))
    finally:
        pc_emu.network_faults.clear()
    assert [r["id"] for r in pc_emu.referrals()] == [created.referral.id]


def test_a_microsoft_referral_with_the_same_reference_is_not_taken_for_ours(
    pc_emu: PartnerCenterEmulator, lose: Lose
) -> None:
    # A referral for Microsoft carrying the same external reference (copied in the portal) is not ours.
    stray_body = partner_referral_body(_opportunity(crm_id="crm-opportunity-4", help_code=None))
    stray_body["target"] = [{"type": "BusinessProfileLocation", "id": MICROSOFT_ORG_ID}]
    stray = _creator(pc_emu).pc.create_referral(stray_body)
    lose(pc_emu, "POST", REFERRAL_CREATE, "502")
    created = _creator(pc_emu).ensure(_opportunity(crm_id="crm-opportunity-4", help_code=None))
    assert created.referral.id != stray.id
    partner, _ = _split(pc_emu.referrals())
    assert [r["id"] for r in partner] == [created.referral.id]


# -- Dataverse: accounts, contacts, the opportunity upsert and Win/Lose -----------------------------------------
@pytest.fixture
def dv_emu(dataverse_emu: DataverseEmulator) -> DataverseEmulator:
    return dataverse_emu


def _dataverse(emu: DataverseEmulator, session: requests.Session | None = None) -> DataverseCrm:
    return DataverseCrm(DataverseConfig(emu.url), lambda: "dv-token", sleep=_no_sleep, session=session)


@pytest.mark.parametrize("mode", MODES)
def test_dataverse_account_and_contact_creates_whose_answers_are_lost_make_one_of_each(
    dv_emu: DataverseEmulator, lose: Lose, mode: str
) -> None:
    # The account and its contacts are nested in the opportunity's deep insert; its lost answer is resolved by the
    # referral id (all or nothing: the row found is the whole create).
    lose(dv_emu, "POST", rf"{DV_API}/opportunities$", mode)
    created = _dataverse(dv_emu).create_opportunity(_opportunity())
    _all_lost(dv_emu, 1)
    accounts, contacts = dv_emu.table("accounts"), dv_emu.table("contacts")
    assert len(accounts) == 1
    assert sorted(c["emailaddress1"] for c in contacts) == ["ada@contoso.example", "grace@contoso.example"]
    row = dv_emu.record("opportunities", created.crm_id or "")
    assert row is not None and row["_customerid_value"] == accounts[0]["accountid"]
    ada = next(c for c in contacts if c["firstname"] == "Ada")
    assert row["_parentcontactid_value"] == ada["contactid"]
    assert all(c["_parentcustomerid_value"] == accounts[0]["accountid"] for c in contacts)
    assert created.customer_name == "Contoso Ltd" and created.customer_contacts[0].email == "ada@contoso.example"


@pytest.mark.parametrize("mode", MODES)
def test_dataverse_opportunity_upsert_whose_answer_is_lost_makes_one(
    dv_emu: DataverseEmulator, lose: Lose, mode: str
) -> None:
    lose(dv_emu, "POST", rf"{DV_API}/opportunities$", mode)
    created = _dataverse(dv_emu).create_opportunity(_opportunity())
    _all_lost(dv_emu, 1)
    rows = dv_emu.table("opportunities")
    assert [r["opportunityid"] for r in rows] == [created.crm_id]
    assert created.referral_id == _opportunity().referral_id and created.name == "Contoso cloud migration"


@pytest.mark.parametrize("mode", MODES)
def test_a_won_referral_whose_opportunity_create_answer_is_lost_is_created_once_and_won(
    dv_emu: DataverseEmulator, lose: Lose, mode: str
) -> None:
    lose(dv_emu, "POST", rf"{DV_API}/opportunities$", mode)
    created = _dataverse(dv_emu).create_opportunity(_opportunity(status="Closed", substatus="Won"))
    rows = dv_emu.table("opportunities")
    assert [r["opportunityid"] for r in rows] == [created.crm_id]
    assert (rows[0]["statecode"], rows[0]["statuscode"]) == (1, 3)
    assert (created.status, created.substatus) == ("Closed", "Won")
    assert len(dv_emu.table("opportunitycloses")) == 1


@pytest.mark.parametrize("mode", MODES)
def test_dataverse_win_whose_answer_is_lost_closes_once(dv_emu: DataverseEmulator, lose: Lose, mode: str) -> None:
    lose(dv_emu, "POST", rf"{DV_API}/WinOpportunity$", mode)
    created = _dataverse(dv_emu).create_opportunity(_opportunity(status="Closed", substatus="Won"))
    _all_lost(dv_emu, 1)
    row = dv_emu.record("opportunities", created.crm_id or "")
    assert row is not None and (row["statecode"], row["statuscode"]) == (1, 3)
    assert (created.status, created.substatus) == ("Closed", "Won")
    assert len(dv_emu.table("opportunitycloses")) == 1
    assert dv_emu.counters()["actions"]["WinOpportunity"] == 1


class _CloseRace(requests.Session):
    """Runs ``before`` just ahead of the adapter's first Win/Lose action: a seller's close landing between
    the adapter's read and its action, an interleaving the network alone cannot be made to produce."""

    def __init__(self, before: Callable[[], None]) -> None:
        super().__init__()
        self._before: Callable[[], None] | None = before

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if method == "POST" and str(url).endswith(("WinOpportunity", "LoseOpportunity")) and self._before:
            before, self._before = self._before, None
            before()
        return super().request(method, url, *args, **kwargs)


def _seller_closes(emu: DataverseEmulator, crm_id: str, action: str, status: int) -> Callable[[], None]:
    def close() -> None:
        body = {"Status": status, "OpportunityClose": {"opportunityid@odata.bind": f"/opportunities({crm_id})"}}
        response = requests.post(
            f"{emu.url}{DV_API}/{action}", json=body, headers={"Authorization": "Bearer seller"}, timeout=5
        )
        assert response.status_code == 204, response.text

    return close


def test_the_service_says_already_closed_as_it_does(dv_emu: DataverseEmulator) -> None:
    created = _dataverse(dv_emu).create_opportunity(_opportunity(status="Closed", substatus="Won"))
    again = requests.post(
        f"{dv_emu.url}{DV_API}/LoseOpportunity",
        json={"Status": 5, "OpportunityClose": {"opportunityid@odata.bind": f"/opportunities({created.crm_id})"}},
        headers={"Authorization": "Bearer seller"},
        timeout=5,
    )
    assert again.status_code == 400
    assert again.json()["error"] == {"code": "0x80040515", "message": "The opportunity is already closed."}


def test_a_win_that_finds_the_opportunity_already_won_counts_as_done(dv_emu: DataverseEmulator) -> None:
    current = _dataverse(dv_emu).create_opportunity(_opportunity())
    crm_id = current.crm_id or ""
    racing = _dataverse(dv_emu, _CloseRace(_seller_closes(dv_emu, crm_id, "WinOpportunity", 3)))
    won = racing.update_opportunity(
        current, current.model_copy(update={"status": "Closed", "substatus": "Won"}), ["status", "substatus"]
    )
    assert (won.status, won.substatus) == ("Closed", "Won")
    row = dv_emu.record("opportunities", crm_id)
    assert row is not None and (row["statecode"], row["statuscode"]) == (1, 3)
    assert len(dv_emu.table("opportunitycloses")) == 1  # the seller's; ours was refused, not repeated


def test_a_win_that_finds_the_opportunity_lost_meanwhile_re_decides(dv_emu: DataverseEmulator) -> None:
    current = _dataverse(dv_emu).create_opportunity(_opportunity())
    crm_id = current.crm_id or ""
    racing = _dataverse(dv_emu, _CloseRace(_seller_closes(dv_emu, crm_id, "LoseOpportunity", 5)))
    with pytest.raises(PreconditionFailed):
        racing.update_opportunity(
            current, current.model_copy(update={"status": "Closed", "substatus": "Won"}), ["status", "substatus"]
        )
    row = dv_emu.record("opportunities", crm_id)
    assert row is not None and (row["statecode"], row["statuscode"]) == (2, 5)  # the seller's close stands


# -- Salesforce: account, contacts, contact roles, the opportunity upsert ---------------------------------------
@pytest.fixture(scope="module")
def sf_server() -> Iterator[SalesforceEmulator]:
    emulator = SalesforceEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def sf_emu(sf_server: SalesforceEmulator) -> SalesforceEmulator:
    sf_server.reset()
    sf_server.upsert_update_status = 200
    return sf_server


def _salesforce(emu: SalesforceEmulator) -> SalesforceCrm:
    return SalesforceCrm(SalesforceConfig(), SalesforceSession(emu.issue_token(), emu.url), sleep=_no_sleep)


def _step_by_step(emu: SalesforceEmulator) -> None:
    """The next create goes the step-by-step way: its one-call composite create (the second composite call, after
    the lookup's) is cut off before the org handles it, so the lookup of the referral id finds nothing and each
    record is then created, found or upserted by a request of its own."""
    emu.network_faults.add("reset", method="POST", path=rf"{SF_API}/composite$", skip=1)


def _roles(emu: SalesforceEmulator, crm_id: str) -> list[tuple[str, bool]]:
    """(contact email, primary) of the opportunity's contact roles."""
    emails = {c["Id"]: c["Email"] for c in emu.records("Contact")}
    roles = [r for r in emu.records("OpportunityContactRole") if r["OpportunityId"] == crm_id]
    return sorted((emails[r["ContactId"]], bool(r["IsPrimary"])) for r in roles)


@pytest.mark.parametrize("mode", MODES)
def test_salesforce_account_and_contact_creates_whose_answers_are_lost_make_one_of_each(
    sf_emu: SalesforceEmulator, lose: Lose, mode: str
) -> None:
    _step_by_step(sf_emu)
    lose(sf_emu, "POST", rf"{SF_API}/sobjects/Account$", mode)
    lose(sf_emu, "POST", rf"{SF_API}/sobjects/Contact$", mode, count=2)
    created = _salesforce(sf_emu).create_opportunity(_opportunity())
    _all_lost(sf_emu, 3)
    accounts = sf_emu.records("Account")
    assert len(accounts) == 1
    assert sorted(c["Email"] for c in sf_emu.records("Contact")) == ["ada@contoso.example", "grace@contoso.example"]
    record = sf_emu.record("Opportunity", created.crm_id or "")
    assert record is not None and record["AccountId"] == accounts[0]["Id"]
    assert all(c["AccountId"] == accounts[0]["Id"] for c in sf_emu.records("Contact"))
    assert _roles(sf_emu, created.crm_id or "") == [("ada@contoso.example", True), ("grace@contoso.example", False)]


def test_salesforce_contact_without_email_is_found_by_name_at_its_account(
    sf_emu: SalesforceEmulator, lose: Lose
) -> None:
    _step_by_step(sf_emu)
    lose(sf_emu, "POST", rf"{SF_API}/sobjects/Contact$", "504")
    nameless = (Contact(first_name="Ada", last_name="Lovelace", title="CTO"),)
    created = _salesforce(sf_emu).create_opportunity(_opportunity(customer_contacts=nameless))
    _all_lost(sf_emu, 1)
    contacts = sf_emu.records("Contact")
    assert [(c["FirstName"], c["LastName"]) for c in contacts] == [("Ada", "Lovelace")]
    assert created.customer_contacts[0].last_name == "Lovelace"


@pytest.mark.parametrize("mode", MODES)
def test_salesforce_contact_role_create_whose_answer_is_lost_makes_each_role_once(
    sf_emu: SalesforceEmulator, lose: Lose, mode: str
) -> None:
    _step_by_step(sf_emu)
    lose(sf_emu, "POST", rf"{SF_API}/composite/sobjects$", mode)
    created = _salesforce(sf_emu).create_opportunity(_opportunity())
    _all_lost(sf_emu, 1)
    assert _roles(sf_emu, created.crm_id or "") == [("ada@contoso.example", True), ("grace@contoso.example", False)]
    assert [c.email for c in created.customer_contacts] == ["ada@contoso.example", "grace@contoso.example"]
    assert sf_emu.counters()["objects"]["OpportunityContactRole"]["creates"] == 2


def test_salesforce_contact_role_delete_whose_answer_is_lost_still_rewrites_the_roles(
    sf_emu: SalesforceEmulator, lose: Lose
) -> None:
    crm = _salesforce(sf_emu)
    current = crm.create_opportunity(_opportunity())
    grace_only = current.model_copy(update={"customer_contacts": current.customer_contacts[1:]})
    lose(sf_emu, "DELETE", rf"{SF_API}/composite/sobjects$", "502")
    updated = crm.update_opportunity(current, grace_only, ["customer_contacts"])
    _all_lost(sf_emu, 1)
    assert _roles(sf_emu, current.crm_id or "") == [("grace@contoso.example", True)]
    assert [c.email for c in updated.customer_contacts] == ["grace@contoso.example"]


@pytest.mark.parametrize("mode", MODES)
def test_salesforce_opportunity_upsert_whose_answer_is_lost_makes_one(
    sf_emu: SalesforceEmulator, lose: Lose, mode: str
) -> None:
    _step_by_step(sf_emu)
    lose(sf_emu, "PATCH", rf"{SF_API}/sobjects/Opportunity/\w+__c/", mode)
    created = _salesforce(sf_emu).create_opportunity(_opportunity())
    _all_lost(sf_emu, 1)
    assert [r["Id"] for r in sf_emu.records("Opportunity")] == [created.crm_id]
    assert created.referral_id == _opportunity().referral_id


# -- end to end: the real engine, both CRMs ---------------------------------------------------------------------
def _crm_creates(crm: str) -> list[tuple[str, str, int, int]]:
    """(method, path, how many, how many alike pass first) of the requests that create the customer's records and
    the opportunity."""
    if crm == "dynamics":
        # One deep insert: the opportunity with the account, and both contacts in it, nested.
        return [("POST", rf"{DV_API}/opportunities$", 1, 0)]
    # One composite call creates the account, both contacts, the opportunity and its roles (the composite call
    # before it is the lookup's); its lost answer is resolved by looking the referral id up.
    return [("POST", rf"{SF_API}/composite$", 1, 1)]


@pytest.mark.parametrize("crm", CRMS)
@pytest.mark.parametrize("mode", MODES)
def test_flagged_opportunity_whose_referral_creates_are_lost_makes_one_referral_each(
    make_stack: Callable[..., Any], lose: Lose, crm: str, mode: str
) -> None:
    stack = make_stack(crm)
    crm_id = stack.seller().create_flagged()
    lose(stack.pc, "POST", REFERRAL_CREATE, mode, count=2)
    stack.poll()
    run = stack.host.drain()
    assert (run.failed, run.errors) == (0, [])
    _all_lost(stack.pc, 2)

    partner, microsoft = _split(stack.pc.referrals())
    assert [r["externalReferenceId"] for r in partner] == [crm_id]
    assert len(microsoft) == 1 and microsoft[0]["engagementId"] == partner[0]["engagementId"]
    row = stack.opportunity(crm_id)
    assert row["referral_id"] == partner[0]["id"]
    assert "Co-sell referral created in Partner Center with a request for Microsoft's help" in row["audit"]
    assert stack.audit_actions(partner[0]["id"]).count("created") == 1  # the rest are our writes' echoes


@pytest.mark.parametrize("crm", CRMS)
@pytest.mark.parametrize("mode", MODES)
def test_referral_for_a_new_customer_whose_crm_creates_are_lost_makes_one_of_each(
    make_stack: Callable[..., Any], lose: Lose, crm: str, mode: str
) -> None:
    stack = make_stack(crm)
    emulator = stack.view.emulator
    creates = _crm_creates(crm)
    for method, path, count, skip in creates:
        lose(emulator, method, path, mode, count=count, skip=skip)
    team = [
        {"firstName": "Avery", "lastName": "Howard", "email": "avery.howard@contoso.example", "title": "CIO"},
        {"firstName": "Blake", "lastName": "Reyes", "email": "blake.reyes@contoso.example"},
    ]
    referral = stack.pc.seed_referral(kind="cosell", customerProfile={"team": team})
    stack.pc.wait_for_deliveries(1, timeout=10)
    run = stack.host.drain()
    assert (run.failed, run.errors) == (0, [])
    _all_lost(emulator, sum(count for _, _, count, _ in creates))

    rows = stack.opportunities()
    assert [r["referral_id"] for r in rows] == [referral["id"]]
    accounts = stack.view.accounts()
    assert [a["name"] for a in accounts] == [referral["customerProfile"]["name"]]
    assert rows[0]["account_id"] == accounts[0]["id"]
    assert sorted(stack.view.contact_emails()) == ["avery.howard@contoso.example", "blake.reyes@contoso.example"]
    assert stack.audit_actions(referral["id"]) == ["created"]
    if crm == "salesforce":
        assert _roles(emulator, rows[0]["id"]) == [
            ("avery.howard@contoso.example", True),
            ("blake.reyes@contoso.example", False),
        ]
