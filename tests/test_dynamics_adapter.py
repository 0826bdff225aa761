"""The Dynamics 365 adapter against the Dataverse emulator over real HTTP."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import requests

from emulators.dataverse import DataverseEmulator
from shared import wiring
from shared.crm.dynamics import DataverseConfig, DataverseCrm
from shared.crm.dynamics.auth import AzureIdentityToken
from shared.domain.errors import AuthenticationError, PreconditionFailed, ValidationFailed
from shared.domain.mapping import mapped_values
from shared.domain.opportunity import Contact, CustomerAddress, Opportunity
from shared.settings import Settings

TOKEN = "adapter-test-token"


@pytest.fixture
def emu(dataverse_emu: DataverseEmulator) -> DataverseEmulator:
    return dataverse_emu


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def crm(emu: DataverseEmulator, sleeps: list[float]) -> DataverseCrm:
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    return DataverseCrm(DataverseConfig(emu.url), lambda: TOKEN, sleep=sleep)


def _opportunity(referral_id: str = "0b5e3a6c-1111-4c1e-9d1a-000000000001", **changes: Any) -> Opportunity:
    values: dict[str, Any] = dict(
        name="Contoso cloud migration",
        deal_value=Decimal("125000.50"),
        currency="EUR",
        close_date=date(2025, 9, 30),
        notes="Customer wants a proof of concept first.",
        customer_name="Contoso Ltd",
        customer_address=CustomerAddress(
            line1="1 Main St", line2="Floor 2", city="Redmond", state="WA", postal_code="98052", country="US"
        ),
        customer_contacts=(
            Contact(first_name="Ada", last_name="Lovelace", email="ada@contoso.com", phone="+1 555 0100", title="CTO"),
        ),
        help_code="ProofOfConceptOrDemo",
        solution_ids=("sol-1", "sol-2"),
        status="Active",
        substatus="Accepted",
        referral_id=referral_id,
        referral_link=f"https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{referral_id}",
        sync_enabled=True,
        audit="2025-01-01 created",
    )
    values.update(changes)
    return Opportunity(**values)


def _opportunity_writes(emu: DataverseEmulator) -> list[dict[str, Any]]:
    return [w for w in emu.writes() if w["table"] == "opportunities"]


def test_round_trip_of_every_mapped_field(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    desired = _opportunity()
    created = crm.create_opportunity(desired)
    assert mapped_values(created) == mapped_values(desired)
    assert (created.sync_enabled, created.audit) == (True, desired.audit)
    row = emu.record("opportunities", created.crm_id or "")
    assert row is not None and created.etag == row["@odata.etag"]
    assert row["new_howcanmicrosofthelp"] == 100000002 and row["new_products"] == "sol-1, sol-2"
    assert row["estimatedclosedate"] == "2025-09-30" and row["statuscode"] == 1
    found = crm.find_by_referral_id(desired.referral_id or "")
    fetched = crm.get_opportunity(created.crm_id or "")
    assert found == created and fetched == created
    account = emu.table("accounts")[0]
    assert (account["address1_country"], account["address1_stateorprovince"]) == ("US", "WA")
    assert emu.table("contacts")[0]["_parentcustomerid_value"] == account["accountid"]


@pytest.mark.parametrize(
    ("status", "substatus", "state", "read_back"),
    [
        ("New", "Pending", (0, 2), ("New", "Pending")),
        ("Closed", "Won", (1, 3), ("Closed", "Won")),
        ("Closed", "Lost", (2, 5), ("Closed", "Lost")),
        ("Closed", "Expired", (2, 4), ("Closed", "Declined")),
    ],
)
def test_create_maps_status_to_state(
    emu: DataverseEmulator,
    crm: DataverseCrm,
    status: str,
    substatus: str,
    state: tuple[int, int],
    read_back: tuple[str, str],
) -> None:
    created = crm.create_opportunity(_opportunity(status=status, substatus=substatus))
    row = emu.record("opportunities", created.crm_id or "")
    assert row is not None and (row["statecode"], row["statuscode"]) == state
    assert (created.status, created.substatus) == read_back
    assert created.etag == row["@odata.etag"]


def test_create_is_idempotent(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    desired = _opportunity(
        customer_contacts=(
            Contact(first_name="Ada", last_name="Lovelace", email="ada@contoso.com"),
            Contact(first_name="Grace", last_name="Hopper", email="grace@contoso.com"),
        )
    )
    first = crm.create_opportunity(desired)
    seller_edit = {"description": "edited by a seller"}
    requests.patch(
        f"{emu.url}/api/data/v9.2/opportunities({first.crm_id})",
        json=seller_edit,
        headers={"Authorization": "Bearer x"},
        timeout=5,
    )
    with pytest.raises(PreconditionFailed):  # a new worker: the key is taken; the engine reads it and merges
        DataverseCrm(DataverseConfig(emu.url), lambda: TOKEN).create_opportunity(desired)
    row = emu.record("opportunities", first.crm_id or "")
    assert row is not None and row["description"] == "edited by a seller"  # the retry did not overwrite it
    assert emu.counters()["tables"]["opportunities"]["updates"] == 1
    assert len(emu.table("opportunities")) == 1
    assert len(emu.table("accounts")) == 1
    assert sorted(c["emailaddress1"] for c in emu.table("contacts")) == ["ada@contoso.com", "grace@contoso.com"]
    assert emu.counters()["tables"]["opportunities"]["creates"] == 1
    primary = emu.record("opportunities", first.crm_id or "")
    ada = next(c for c in emu.table("contacts") if c["firstname"] == "Ada")
    assert primary is not None and primary["_parentcontactid_value"] == ada["contactid"]


def test_existing_account_and_contact_are_reused(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    account = emu.seed("accounts", {"name": "CONTOSO LTD", "address1_postalcode": "98052"})[0]
    emu.seed("contacts", {"firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ADA@contoso.com"})
    created = crm.create_opportunity(_opportunity())
    assert len(emu.table("accounts")) == 1 and len(emu.table("contacts")) == 1
    assert emu.record("opportunities", created.crm_id or "")["_customerid_value"] == account["accountid"]
    filled = emu.record("accounts", account["accountid"])
    assert filled is not None and filled["address1_city"] == "Redmond" and filled["name"] == "CONTOSO LTD"


def test_unknown_currency_fails_validation_before_any_write(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    with pytest.raises(ValidationFailed) as caught:
        crm.create_opportunity(_opportunity(currency="XYZ"))
    assert caught.value.reasons[0].startswith("Currency 'XYZ' is not enabled in Dynamics 365")
    assert emu.writes() == []


def test_update_sends_only_changed_columns(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    current = crm.create_opportunity(_opportunity())
    before = len(emu.writes())
    desired = current.model_copy(update={"name": "Renamed deal", "notes": "New notes"})
    updated = crm.update_opportunity(current, desired, ["name", "notes"])
    writes = emu.writes()[before:]
    assert len(writes) == 1
    assert writes[0]["columns"] == ["description", "name"]
    assert writes[0]["if_match"] == current.etag
    assert (updated.name, updated.notes) == ("Renamed deal", "New notes")
    assert updated.etag != current.etag
    assert mapped_values(updated) == mapped_values(desired)


def test_update_of_customer_and_contacts_touches_only_what_changed(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    current = crm.create_opportunity(_opportunity())
    before = len(emu.writes())
    same = crm.update_opportunity(current, current, ["customer_name", "customer_address", "customer_contacts"])
    assert emu.writes()[before:] == [] and same.etag == current.etag
    moved = current.model_copy(
        update={
            "customer_name": "Fabrikam",
            "currency": "GBP",
            "customer_contacts": (Contact(first_name="Lin", last_name="Yu", email="lin@fabrikam.com"),),
        }
    )
    updated = crm.update_opportunity(current, moved, ["customer_name", "customer_contacts", "currency"])
    assert mapped_values(updated) == mapped_values(moved)
    opportunity_write = _opportunity_writes(emu)[-1]
    assert opportunity_write["columns"] == [
        "customerid_account@odata.bind",
        "parentcontactid@odata.bind",
        "transactioncurrencyid@odata.bind",
    ]


def test_update_with_stale_etag_raises_precondition_failed(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    current = crm.create_opportunity(_opportunity())
    requests.patch(
        f"{emu.url}/api/data/v9.2/opportunities({current.crm_id})",
        json={"description": "seller edit"},
        headers={"Authorization": "Bearer x"},
        timeout=5,
    )
    before = len(emu.writes())
    with pytest.raises(PreconditionFailed):
        crm.update_opportunity(current, current.model_copy(update={"name": "Mine"}), ["name"])
    with pytest.raises(PreconditionFailed):
        crm.set_sync_outcome(current, "Mine", "audit")
    assert emu.writes()[before:] == []
    assert emu.record("opportunities", current.crm_id or "")["description"] == "seller edit"


def test_status_changes_use_the_close_actions(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    current = crm.create_opportunity(_opportunity())
    won = crm.update_opportunity(
        current, current.model_copy(update={"status": "Closed", "substatus": "Won"}), ["status", "substatus"]
    )
    assert (won.status, won.substatus) == ("Closed", "Won")
    assert emu.counters()["actions"]["WinOpportunity"] == 1
    lost = crm.update_opportunity(
        won, won.model_copy(update={"substatus": "Lost", "notes": "Went elsewhere"}), ["substatus", "notes"]
    )
    assert (lost.status, lost.substatus, lost.notes) == ("Closed", "Lost", "Went elsewhere")
    row = emu.record("opportunities", lost.crm_id or "")
    assert row is not None and (row["statecode"], row["statuscode"]) == (2, 5)
    reopened = crm.update_opportunity(
        lost, lost.model_copy(update={"status": "New", "substatus": "Pending"}), ["status", "substatus"]
    )
    assert (reopened.status, reopened.substatus) == ("New", "Pending")
    assert emu.counters()["actions"] == {"WinOpportunity": 1, "LoseOpportunity": 1}
    assert reopened.etag == emu.record("opportunities", lost.crm_id or "")["@odata.etag"]


def test_a_job_reads_a_record_in_one_request_and_updates_it_in_one_more(
    emu: DataverseEmulator, crm: DataverseCrm
) -> None:
    created = crm.create_opportunity(_opportunity())
    before = len(emu.request_log)
    current = crm.get_opportunity(created.crm_id or "")
    assert current is not None and current.customer_name == "Contoso Ltd" and current.customer_contacts
    updated = crm.update_opportunity(current, current.model_copy(update={"notes": "Changed"}), ["notes"])
    assert [method for method, _ in emu.request_log[before:]] == ["GET", "PATCH"]  # no state GET, no re-read
    row = emu.record("opportunities", created.crm_id or "")
    assert updated.etag == row["@odata.etag"] and updated.notes == "Changed" == row["description"]
    assert updated == crm.get_opportunity(created.crm_id or "")  # the write's answer is the record as it reads


def test_creating_for_a_new_customer_reads_nothing_back(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    # The first create also loads the currencies, once per adapter; the second is what every record costs.
    crm.create_opportunity(
        _opportunity("0b5e3a6c-1111-4c1e-9d1a-000000000099", customer_name="Fabrikam", customer_contacts=())
    )
    before = len(emu.request_log)
    created = crm.create_opportunity(_opportunity())
    calls = [(method, path.split("?")[0].split("(")[0].rsplit("/", 1)[-1]) for method, path in emu.request_log[before:]]
    # The account and its contact are found first (one read each, none found) and made inside the opportunity's
    # own deep insert.
    assert calls == [("GET", "accounts"), ("GET", "contacts"), ("POST", "opportunities")]
    assert created == crm.get_opportunity(created.crm_id or "")  # what a read gives, without the read


def test_set_sync_outcome_writes_only_name_and_audit(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    current = crm.create_opportunity(_opportunity())
    before = len(emu.writes())
    result = crm.set_sync_outcome(current, "Contoso cloud migration \u2716", "failed: bad data")
    writes = emu.writes()[before:]
    assert [(w["operation"], w["columns"], w["if_match"]) for w in writes] == [
        ("update", ["name", "new_audit"], current.etag)
    ]
    row = emu.record("opportunities", current.crm_id or "")
    assert row is not None and result.etag == row["@odata.etag"]
    assert (row["name"], row["new_audit"]) == ("Contoso cloud migration \u2716", "failed: bad data")
    audit_only = crm.set_sync_outcome(result, None, "second")
    assert _opportunity_writes(emu)[-1]["columns"] == ["new_audit"] and audit_only.name == result.name
    before = len(emu.writes())
    assert crm.set_sync_outcome(audit_only, None, "second") == audit_only  # nothing changed: nothing sent
    assert emu.writes()[before:] == []


def test_set_sync_outcome_leaves_a_closed_opportunity_as_the_seller_closed_it(
    emu: DataverseEmulator, crm: DataverseCrm
) -> None:
    won = crm.create_opportunity(_opportunity(status="Closed", substatus="Won"))
    before = len(emu.writes())
    assert crm.set_sync_outcome(won, "Done \u2714", "synced") == won
    assert emu.writes()[before:] == []  # not reopened: no second close activity
    row = emu.record("opportunities", won.crm_id or "")
    assert row is not None and (row["statecode"], row["statuscode"]) == (1, 3)
    assert emu.counters()["actions"]["WinOpportunity"] == 1


def test_throttled_request_waits_retry_after_then_succeeds(
    emu: DataverseEmulator, crm: DataverseCrm, sleeps: list[float]
) -> None:
    created = crm.create_opportunity(_opportunity())
    emu.inject_fault(429, count=1, retry_after=1, method="GET", path=r"/opportunities\(")
    started = time.monotonic()
    fetched = crm.get_opportunity(created.crm_id or "")
    assert fetched == created
    assert sleeps == [1.0] and time.monotonic() - started >= 1.0
    assert emu.counters()["faults"] == 1
    gets = [path for method, path in emu.request_log if method == "GET" and f"opportunities({created.crm_id})" in path]
    assert len(gets) == 2


def test_missing_or_rejected_token_raises_authentication_error(emu: DataverseEmulator) -> None:
    with pytest.raises(AuthenticationError):
        DataverseCrm(DataverseConfig(emu.url), None).get_opportunity(str(uuid.uuid4()))
    emu.set_required_token("the-real-token")
    with pytest.raises(AuthenticationError) as caught:
        DataverseCrm(DataverseConfig(emu.url), lambda: "a-leaked-secret").find_by_referral_id("ref-1")
    assert "a-leaked-secret" not in str(caught.value) and "the-real-token" not in str(caught.value)


def test_find_by_referral_id(emu: DataverseEmulator, crm: DataverseCrm) -> None:
    assert crm.find_by_referral_id("no-such-referral") is None
    created = crm.create_opportunity(_opportunity(referral_id="it's ref 1"))
    found = crm.find_by_referral_id("it's ref 1")
    assert found is not None and found.crm_id == created.crm_id
    before = len(emu.request_log)
    with pytest.raises(ValidationFailed):
        crm.find_by_referral_id("a/b")
    assert len(emu.request_log) == before
    assert crm.get_opportunity(str(uuid.uuid4())) is None


def test_changes_since_pages_in_modified_order_reading_only_ids_and_versions(
    emu: DataverseEmulator, crm: DataverseCrm
) -> None:
    emu.seed(
        "opportunities",
        [
            {
                "name": f"opp {i}",
                "new_syncwithpartnercenter": flagged,
                "modifiedon": f"2025-0{month}-01T00:00:00Z",
                "new_referralidentifier": f"ref-{i}",
            }
            for i, (flagged, month) in enumerate([(True, 3), (True, 1), (False, 4), (True, 5), (True, 2), (True, 4)])
        ],
    )
    by_name = {row["name"]: row for row in emu.table("opportunities")}
    since = datetime(2025, 2, 1, 0, 0, 0, 900000, tzinfo=UTC)
    changes = list(crm.changes_since(since, page_size=2))
    assert [c.record_id for c in changes] == [by_name[f"opp {i}"]["opportunityid"] for i in (4, 0, 5, 3)]
    assert changes[0].version == emu.record("opportunities", changes[0].record_id)["@odata.etag"]
    assert changes[0].changed_at == datetime(2025, 2, 1, tzinfo=UTC)
    gets = [path for method, path in emu.request_log if method == "GET"]
    assert len(gets) == 2 and "skiptoken" in gets[1]  # two pages and no read per row
    assert "select=opportunityid%2Cmodifiedon" in gets[0].replace(",", "%2C")
    assert len(list(crm.changes_since(None))) == 5


def test_constructed_from_settings(emu: DataverseEmulator) -> None:
    settings = Settings(
        dataverse_url=emu.url,
        dataverse_access_token=TOKEN,
        azure_webjobs_storage="UseDevelopmentStorage=true",
        partner_center_access_token="pc",
    )
    crm = wiring.build_crm(settings, wiring.load_crm_mapping(settings).mapping)
    created = crm.create_opportunity(_opportunity(help_code=None, solution_ids=()))
    row = emu.record("opportunities", created.crm_id or "")
    assert row is not None and row["new_howcanmicrosofthelp"] is None and row["new_products"] is None
    assert created.help_code is None and created.solution_ids == ()


class _FakeToken:
    def __init__(self, token: str, expires_on: float) -> None:
        self.token, self.expires_on = token, expires_on


def test_azure_identity_token_is_cached_until_near_expiry() -> None:
    now = [1000.0]
    calls: list[str] = []

    class Credential:
        def get_token(self, scope: str) -> _FakeToken:
            calls.append(scope)
            return _FakeToken(f"token-{len(calls)}", now[0] + 3600)

    provider = AzureIdentityToken("https://org.crm.dynamics.com/.default", Credential, clock=lambda: now[0])
    assert provider() == "token-1" and provider() == "token-1"
    now[0] += 3600 - 200  # inside the refresh margin
    assert provider() == "token-2"
    assert calls == ["https://org.crm.dynamics.com/.default"] * 2


def test_azure_identity_failure_is_an_authentication_error() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    class Credential:
        def get_token(self, scope: str) -> _FakeToken:
            raise ClientAuthenticationError("client secret s3cr3t was rejected")

    with pytest.raises(AuthenticationError) as caught:
        AzureIdentityToken("https://org.crm.dynamics.com/.default", Credential)()
    assert "s3cr3t" not in str(caught.value)


def test_app_registration_credentials_are_used_when_configured(monkeypatch):
    from shared.settings import load_settings

    settings = load_settings(
        DATAVERSE_URL="https://org.crm.dynamics.com",
        AzureWebJobsStorage="UseDevelopmentStorage=true",
        PARTNER_CENTER_ACCESS_TOKEN="t",
        DATAVERSE_CLIENT_ID="app",
        DATAVERSE_CLIENT_SECRET="s3cret",
        DATAVERSE_TENANT_ID="tenant",
    )
    made = {}

    class FakeClientSecretCredential:  # the Entra token service cannot run here
        def __init__(self, tenant, client_id, secret):
            made.update(tenant=tenant, client_id=client_id, secret=secret)

        def get_token(self, scope):
            made["scope"] = scope
            return type("T", (), {"token": "tok", "expires_on": 9_999_999_999})()

    monkeypatch.setattr("azure.identity.ClientSecretCredential", FakeClientSecretCredential)
    assert wiring.dataverse_token(settings)() == "tok"
    assert made == {
        "tenant": "tenant",
        "client_id": "app",
        "secret": "s3cret",
        "scope": "https://org.crm.dynamics.com/.default",
    }
    assert settings.credential_modes()["crm"] == "app registration (client secret)"
