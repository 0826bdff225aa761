"""The Salesforce adapter against the Salesforce emulator over real HTTP."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulators.salesforce.emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SalesforceEmulator
from shared import wiring
from shared.crm.mapping import Override
from shared.crm.salesforce import SalesforceConfig, SalesforceCrm
from shared.crm.salesforce.api import DuplicateReferralId, QuotaExhausted, SalesforceRecordError
from shared.crm.salesforce.auth import ClientCredentials, JwtBearer, OAuthToken, StaticToken
from shared.crm.salesforce.mapping import SalesforceMapping, load_mapping
from shared.domain.errors import AuthenticationError, PreconditionFailed, TransientError, ValidationFailed
from shared.domain.mapping import mapped_values
from shared.domain.opportunity import Contact, CustomerAddress, Opportunity
from shared.settings import Settings, SettingsError, load_settings

REF = "Referral_Identfier__c"
SYNC = "Sync_with_Partner_Center__c"
TODAY = date(2025, 3, 1)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode("ascii")
PUBLIC_PEM = (
    KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode("ascii")
)


class Clock:
    """Real time plus an offset the tests can push forward (If-Unmodified-Since works in whole seconds)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


CLOCK = Clock()


SALESFORCE_EMULATOR_OPTIONS = {"clock": CLOCK}


@pytest.fixture
def emu(salesforce_server: SalesforceEmulator) -> SalesforceEmulator:
    server = salesforce_server
    server.reset()
    server.upsert_update_status = 200
    return server


def settings(emu: SalesforceEmulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "crm_provider": "salesforce",
        "azure_webjobs_storage": "UseDevelopmentStorage=true",
        "partner_center_access_token": "pc-token",
        "salesforce_auth_flow": "client_credentials",
        "salesforce_login_url": emu.url,
        "salesforce_token_url": None,
        "salesforce_client_id": DEFAULT_CLIENT_ID,
        "salesforce_client_secret": DEFAULT_CLIENT_SECRET,
        "salesforce_instance_url": None,
        "salesforce_access_token": None,
    }
    values.update(overrides)
    return load_settings(**values)


def _no_sleep(seconds: float) -> None:
    return None


def from_settings(settings: Settings, **collaborators: Any) -> SalesforceCrm:
    """The adapter as the app builds it from its settings."""
    config = wiring.salesforce_config(settings, wiring.load_crm_mapping(settings).mapping)
    return SalesforceCrm(config, wiring.salesforce_auth(settings), **collaborators)


def static(emu: SalesforceEmulator, mapping: SalesforceMapping | None = None) -> SalesforceCrm:
    """An adapter with a session issued by the emulator (no token request)."""
    config = SalesforceConfig(mapping=mapping) if mapping else SalesforceConfig()
    return SalesforceCrm(config, StaticToken(emu.issue_token(), emu.url), sleep=_no_sleep)


def mapping_with(**changes: Any) -> SalesforceMapping:
    """The shipped mapping with entries replaced, given as dotted paths with "__" for the dots."""
    overrides = [Override(tuple(path.split("__")), value, "test") for path, value in changes.items()]
    return load_mapping(None, overrides).mapping


@pytest.fixture
def crm(emu: SalesforceEmulator) -> SalesforceCrm:
    return from_settings(settings(emu), sleep=_no_sleep, today=lambda: TODAY)


def _requests(emu: SalesforceEmulator, fragment: str = "/services/data/") -> int:
    return sum(1 for _, path in emu.request_log if fragment in path)


def full_opportunity(referral_id: str = "ref-0001", **changes: Any) -> Opportunity:
    values: dict[str, Any] = {
        "name": "Contoso Azure migration",
        "deal_value": Decimal("125000.50"),
        "currency": "EUR",
        "close_date": date(2025, 9, 30),
        "notes": "Customer wants to move 40 VMs.\nSecond line.",
        "customer_name": "Contoso Ltd",
        "customer_address": CustomerAddress(
            line1="1 Main Street",
            line2="Building 4",
            city="Redmond",
            state="WA",
            postal_code="98052",
            country="US",
        ),
        "customer_contacts": (
            Contact(first_name="Ann", last_name="Lee", email="ann@contoso.example", phone="+1 555 0100", title="CIO"),
            Contact(first_name="Bo", email="bo@contoso.example"),
            Contact(first_name="Ann", last_name="Lee", email="ANN@contoso.example"),  # the same person again
            Contact(first_name="Nobody"),  # cannot be found again: skipped
        ),
        "help_code": "ProofOfConceptOrDemo",
        "solution_ids": ("sol-1", "sol-2"),
        "status": "Active",
        "substatus": "Engaged",
        "referral_id": referral_id,
        "referral_link": f"https://partner.microsoft.com/referrals/{referral_id}",
        "sync_enabled": True,
        "audit": "created",
    }
    values.update(changes)
    return Opportunity(**values)


# -- authentication ---------------------------------------------------------------------------------------------------
def test_client_credentials_flow_from_settings_and_bad_secret_refused(emu: SalesforceEmulator) -> None:
    crm = from_settings(settings(emu), sleep=_no_sleep)
    assert isinstance(crm.auth, OAuthToken)
    assert crm.find_by_referral_id("nothing") is None
    assert crm.get_opportunity("0065g00000AAAAAAAA") is None
    assert emu.counters()["tokenRequests"]["client_credentials"] == 1  # cached between calls

    wrong = from_settings(settings(emu, salesforce_client_secret="not-the-secret"), sleep=_no_sleep)
    with pytest.raises(AuthenticationError) as refused:
        wrong.find_by_referral_id("x")
    assert "invalid client credentials" in str(refused.value)
    assert "not-the-secret" not in str(refused.value)
    # Refused at start-up now (tests/test_settings.py); the adapter still refuses a generic host it is given.
    with pytest.raises(SettingsError, match=r"SALESFORCE_LOGIN_URL: login\.salesforce\.com cannot be used.*My Domain"):
        from_settings(settings(emu, salesforce_login_url="https://login.salesforce.com"))
    with pytest.raises(ValueError, match="My Domain"):
        ClientCredentials("https://login.salesforce.com/services/oauth2/token", DEFAULT_CLIENT_ID, "s")


def test_jwt_bearer_flow_signs_with_the_private_key(emu: SalesforceEmulator) -> None:
    emu.register_jwt_key("jwt-consumer", PUBLIC_PEM, ["sync@contoso.example"])
    jwt_settings = {
        "salesforce_auth_flow": "jwt_bearer",
        "salesforce_client_id": "jwt-consumer",
        "salesforce_client_secret": None,
        "salesforce_username": "sync@contoso.example",
        # App settings often hold the PEM on one line with literal \n.
        "salesforce_private_key": PRIVATE_PEM.replace("\n", "\\n"),
    }
    crm = from_settings(settings(emu, **jwt_settings), sleep=_no_sleep)
    assert isinstance(crm.auth, JwtBearer) and crm.auth.audience == emu.url
    assert crm.find_by_referral_id("nothing") is None
    assert emu.counters()["tokenRequests"] == {"client_credentials": 0, "jwt_bearer": 1, "refused": 0}

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    bad = from_settings(settings(emu, **{**jwt_settings, "salesforce_private_key": forged}), sleep=_no_sleep)
    with pytest.raises(AuthenticationError, match="invalid assertion"):
        bad.find_by_referral_id("x")
    with pytest.raises(ValueError, match="PEM private key"):
        from_settings(settings(emu, **{**jwt_settings, "salesforce_private_key": "not a key"}))


def test_session_expired_mid_run_reauthenticates_exactly_once(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    crm.create_opportunity(full_opportunity())
    assert emu.counters()["tokenRequests"]["client_credentials"] == 1
    emu.expire_sessions()
    found = crm.find_by_referral_id("ref-0001")
    assert found is not None and found.name == "Contoso Azure migration"
    counters = emu.counters()
    assert counters["tokenRequests"]["client_credentials"] == 2
    assert counters["sessionRefusals"] == 1
    assert crm.auth.token_requests == 2


def test_second_401_is_an_authentication_error(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    crm.find_by_referral_id("warm-up")
    emu.inject_fault(401, count=2)
    with pytest.raises(AuthenticationError) as refused:
        crm.find_by_referral_id("x")
    assert refused.value.code == "INVALID_SESSION_ID"
    assert emu.counters()["tokenRequests"]["client_credentials"] == 2  # one re-authentication, no more

    fixed = static(emu)
    assert isinstance(fixed.auth, StaticToken)
    assert fixed.find_by_referral_id("x") is None
    emu.expire_sessions()
    before = _requests(emu)
    with pytest.raises(AuthenticationError):
        fixed.find_by_referral_id("x")
    assert _requests(emu) == before + 1  # a static token cannot be renewed: no second try


# -- limits -----------------------------------------------------------------------------------------------------------
def test_quota_exhausted_raises_at_once_without_retries(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    crm.find_by_referral_id("warm-up")
    assert crm.api_usage == emu.api_usage()
    _, maximum = emu.api_usage()
    emu.set_quota(used=maximum)  # the rolling 24-hour allocation is used up
    before = _requests(emu)
    with pytest.raises(QuotaExhausted) as stop:
        crm.create_opportunity(full_opportunity())
    assert isinstance(stop.value, TransientError)
    assert stop.value.retry_after == 900 and stop.value.status == 403
    assert _requests(emu) == before + 1
    assert emu.counters()["quotaRefusals"] == 1
    assert crm.api_usage == (maximum, maximum)
    emu.restore_quota()
    assert crm.create_opportunity(full_opportunity()).crm_id
    assert crm.api_usage is not None and crm.api_usage == emu.api_usage()


def test_transient_503_is_retried_inline(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    emu.inject_fault(503, count=2)
    assert crm.find_by_referral_id("x") is None
    assert emu.counters()["faults"] == 2


# -- round trips ------------------------------------------------------------------------------------------------------
def test_full_round_trip_of_every_mapped_field(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    desired = full_opportunity()
    created = crm.create_opportunity(desired)
    assert mapped_values(created) == mapped_values(crm.stored_form(desired))
    assert created.sync_enabled is True and created.audit == "created"
    assert created.etag and created.modified_at is not None and created.modified_at.tzinfo is not None
    assert crm.get_opportunity(created.crm_id or "") == created
    assert crm.find_by_referral_id("REF-0001") == created  # external ids match case-insensitively

    record = emu.record("Opportunity", created.crm_id or "")
    assert record is not None
    assert record["StageName"] == "Qualification" and record["CurrencyIsoCode"] == "EUR"
    assert record["How_can_Microsoft_help__c"] == "Proof of concept or demo"
    assert record["Products__c"] == "sol-1, sol-2" and record[REF] == "ref-0001" and record[SYNC] is True
    assert record["SystemModstamp"] == created.etag
    account = emu.records("Account")[0]
    assert account["BillingStreet"] == "1 Main Street\nBuilding 4" and account["BillingPostalCode"] == "98052"
    contacts = {c["Email"]: c for c in emu.records("Contact")}
    assert set(contacts) == {"ann@contoso.example", "bo@contoso.example"}
    assert contacts["bo@contoso.example"]["LastName"] == "[not provided]"
    roles = emu.records("OpportunityContactRole")
    assert [(r["ContactId"], r["IsPrimary"]) for r in roles] == [
        (contacts["ann@contoso.example"]["Id"], True),
        (contacts["bo@contoso.example"]["Id"], False),
    ]


@pytest.mark.parametrize(
    ("status", "substatus", "stage", "read_back"),
    [
        ("New", None, "Prospecting", ("New", "Pending")),
        ("Active", "Accepted", "Qualification", ("Active", "Accepted")),
        ("Closed", "Won", "Closed Won", ("Closed", "Won")),
        ("Closed", "Lost", "Closed Lost", ("Closed", "Lost")),
        ("Closed", "Declined", "Closed Lost", ("Closed", "Lost")),
        ("Closed", "Expired", "Closed Lost", ("Closed", "Lost")),
    ],
)
def test_status_maps_to_stage_and_reads_back_from_is_closed_is_won(
    emu: SalesforceEmulator,
    crm: SalesforceCrm,
    status: str,
    substatus: str | None,
    stage: str,
    read_back: tuple[str, str],
) -> None:
    desired = full_opportunity(status=status, substatus=substatus)
    created = crm.create_opportunity(desired)
    record = emu.record("Opportunity", created.crm_id or "")
    assert record is not None and record["StageName"] == stage
    assert (created.status, created.substatus) == read_back
    assert (crm.stored_form(desired).status, crm.stored_form(desired).substatus) == read_back


def test_other_open_stages_read_as_active_and_configured_stage_names(emu: SalesforceEmulator) -> None:
    emu.seed("Opportunity", {"Name": "x", "StageName": "Needs Analysis", "CloseDate": "2025-01-01", REF: "r1"})
    crm = static(emu)
    found = crm.find_by_referral_id("r1")
    assert found is not None and (found.status, found.substatus) == ("Active", "Accepted")
    custom = mapping_with(status__stages__New="Needs Analysis", status__stages__Active="Value Proposition")
    renamed = static(emu, custom)
    again = renamed.find_by_referral_id("r1")
    assert again is not None and (again.status, again.substatus) == ("New", "Pending")
    created = renamed.create_opportunity(full_opportunity("r2", status="Active"))
    assert emu.record("Opportunity", created.crm_id or "")["StageName"] == "Value Proposition"  # type: ignore[index]


def test_create_is_idempotent(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    crm.create_opportunity(full_opportunity())
    with pytest.raises(PreconditionFailed):  # a retried job: the record is found; the engine merges with it
        crm.create_opportunity(full_opportunity())
    assert len(emu.records("Opportunity")) == 1
    assert len(emu.records("Account")) == 1
    assert len(emu.records("Contact")) == 2
    assert len(emu.records("OpportunityContactRole")) == 2
    counters = emu.counters()["objects"]
    assert counters["Opportunity"]["creates"] == 1 and counters["Account"]["creates"] == 1
    assert counters["Contact"]["creates"] == 2 and counters["OpportunityContactRole"]["creates"] == 2


def test_create_without_close_date_uses_today_plus_30_days(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    created = crm.create_opportunity(full_opportunity(close_date=None, customer_name=None, customer_contacts=()))
    assert created.close_date == TODAY + timedelta(days=30)
    assert emu.records("Account") == []
    update = crm.update_opportunity(created, created.model_copy(update={"close_date": None}), ["close_date", "name"])
    assert update.close_date == TODAY + timedelta(days=30)  # an empty date never clears the required field


def test_update_sends_only_the_requested_fields_conditionally(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    current = crm.create_opportunity(full_opportunity())
    before = len(emu.writes())
    desired = current.model_copy(update={"deal_value": Decimal("99.95"), "audit": "updated", "notes": "ignored"})
    updated = crm.update_opportunity(current, desired, ["deal_value", "audit"])
    writes = emu.writes()[before:]
    assert len(writes) == 1
    assert writes[0]["object"] == "Opportunity" and writes[0]["fields"] == ["Amount", "Audit__c"]
    assert writes[0]["ifUnmodifiedSince"].endswith("GMT")
    assert updated.deal_value == Decimal("99.95") and updated.notes == current.notes
    assert updated.modified_at is not None and current.modified_at is not None
    assert updated.modified_at > current.modified_at and updated.etag != current.etag

    closed = crm.update_opportunity(
        updated, updated.model_copy(update={"status": "Closed", "substatus": "Won"}), ["status", "substatus"]
    )
    assert emu.writes()[-1]["fields"] == ["StageName"]
    assert (closed.status, closed.substatus) == ("Closed", "Won")


def test_update_of_customer_and_contacts(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    current = crm.create_opportunity(full_opportunity())
    new_contacts = (Contact(first_name="Cy", last_name="Ng", email="cy@contoso.example"), current.customer_contacts[0])
    desired = current.model_copy(
        update={
            "customer_name": "Contoso Holdings",
            "customer_address": CustomerAddress(city="Seattle", postal_code="98101", country="US"),
            "customer_contacts": new_contacts,
        }
    )
    updated = crm.update_opportunity(current, desired, ["customer_name", "customer_address", "customer_contacts"])
    assert mapped_values(updated) == mapped_values(crm.stored_form(desired))
    assert len(emu.records("Account")) == 2 and len(emu.records("Contact")) == 3
    assert [c.email for c in updated.customer_contacts] == ["cy@contoso.example", "ann@contoso.example"]
    assert len(emu.records("OpportunityContactRole")) == 2
    writes_before = len(emu.writes())
    assert crm.update_opportunity(updated, updated, ["customer_contacts"]) == updated  # already in place
    assert emu.writes()[writes_before:] == []


def test_if_unmodified_since_conflict_is_precondition_failed(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    current = crm.create_opportunity(full_opportunity())
    CLOCK.advance(2)
    emu.update_record("Opportunity", current.crm_id or "", {"Description": "a seller's edit"})
    with pytest.raises(PreconditionFailed):
        crm.update_opportunity(current, current.model_copy(update={"name": "mine"}), ["name"])
    with pytest.raises(PreconditionFailed):
        crm.set_sync_outcome(current, "✔ mine", "audit")
    record = emu.record("Opportunity", current.crm_id or "")
    assert record is not None and record["Name"] == "Contoso Azure migration"
    fresh = crm.get_opportunity(current.crm_id or "")
    assert fresh is not None
    assert crm.update_opportunity(fresh, fresh.model_copy(update={"name": "mine"}), ["name"]).name == "mine"


def test_set_sync_outcome_writes_only_name_and_audit(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    current = crm.create_opportunity(full_opportunity())
    before = len(emu.writes())
    marked = crm.set_sync_outcome(current, "✔ Contoso Azure migration", "x" * 30000)
    writes = emu.writes()[before:]
    assert [w["fields"] for w in writes] == [["Audit__c", "Name"]] and "ifUnmodifiedSince" in writes[0]
    assert marked.name == "✔ Contoso Azure migration" and marked.audit == "x" * 20000
    assert marked.etag == emu.record("Opportunity", current.crm_id or "")["SystemModstamp"]  # type: ignore[index]
    assert crm.set_sync_outcome(marked, marked.name, marked.audit or "") is marked  # nothing to write
    assert len(emu.writes()) == before + 1


# -- typed errors -----------------------------------------------------------------------------------------------------
def test_salesforce_errors_become_typed_errors(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    with pytest.raises(ValidationFailed, match="Currency 'XYZ' is not active"):
        crm.create_opportunity(full_opportunity(currency="XYZ"))
    with pytest.raises(ValidationFailed, match="SALESFORCE_HELP_PICKLIST_VALUES"):
        crm.create_opportunity(full_opportunity(help_code="SomethingNew"))
    assert emu.writes() == []  # refused before anything was written

    mislabelled = mapping_with(fields__help_code__values={"ProofOfConceptOrDemo": "POC please"})
    other = static(emu, mislabelled)
    with pytest.raises(SalesforceRecordError) as picklist:
        other.create_opportunity(full_opportunity())
    assert picklist.value.code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert "POC please" in str(picklist.value)

    current = crm.create_opportunity(full_opportunity("ref-2"))
    with pytest.raises(SalesforceRecordError) as required:
        crm.update_opportunity(current, current.model_copy(update={"name": None}), ["name"])
    assert required.value.code == "REQUIRED_FIELD_MISSING" and isinstance(required.value, ValidationFailed)
    with pytest.raises(ValidationFailed):
        crm.update_opportunity(current.model_copy(update={"crm_id": "not-an-id"}), current, ["name"])


def test_duplicate_referral_ids_are_named_and_nothing_is_written(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    twins = emu.seed(
        "Opportunity",
        [
            {"Name": "one", "StageName": "Prospecting", "CloseDate": "2025-01-01", REF: "dup-1"},
            {"Name": "two", "StageName": "Prospecting", "CloseDate": "2025-01-01", REF: "DUP-1"},
        ],
    )
    with pytest.raises(DuplicateReferralId) as duplicates:
        crm.create_opportunity(full_opportunity("dup-1", customer_name=None, customer_contacts=()))
    assert sorted(duplicates.value.record_ids) == sorted(t["Id"] for t in twins)
    assert all(t["Id"] in str(duplicates.value) for t in twins)
    assert emu.counters()["objects"]["Opportunity"]["updates"] == 0
    with pytest.raises(DuplicateReferralId):
        crm.find_by_referral_id("dup-1")


def test_upsert_update_answered_with_204_is_accepted(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    made = []
    lookup = crm._customers.plan

    def plan(*args: Any, **kwargs: Any) -> Any:
        # Someone else makes the record after the create's lookup found none: the upsert then finds it.
        answer = lookup(*args, **kwargs)
        made.append(from_settings(settings(emu), sleep=_no_sleep).create_opportunity(full_opportunity()))
        emu.upsert_update_status = 204
        return answer

    crm._customers.plan = plan  # type: ignore[method-assign]
    again = crm.create_opportunity(full_opportunity())
    assert again.crm_id == made[0].crm_id and len(emu.records("Opportunity")) == 1


# -- polling ----------------------------------------------------------------------------------------------------------
def test_changes_since_watermark_semantics(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    def seed(name: str, stamp: str, flagged: bool = True, referral: str | None = None) -> str:
        record = {"Name": name, "StageName": "Prospecting", "CloseDate": "2025-01-01", SYNC: flagged, REF: referral}
        return str(emu.seed("Opportunity", {**record, "SystemModstamp": stamp})[0]["Id"])

    # Inserted out of order, so only ORDER BY SystemModstamp, Id gives the expected sequence.
    latest = seed("latest", "2024-05-01T11:00:00.000+0000", referral="ref-latest")
    later = seed("later", "2024-05-01T10:00:00.700+0000")
    tie_a = seed("tie a", "2024-05-01T10:00:00.000+0000")
    seed("unflagged", "2024-05-01T10:00:01.000+0000", flagged=False)
    tie_b = seed("tie b", "2024-05-01T10:00:00.000+0000")
    seed("before", "2024-05-01T09:59:59.999+0000")

    since = datetime(2024, 5, 1, 10, 0, 0, 400000, tzinfo=UTC)  # sub-second watermarks round down
    changed = list(crm.changes_since(since))
    assert [c.record_id for c in changed] == [*sorted([tie_a, tie_b]), later, latest]
    assert changed[0].changed_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert changed[2].version == "2024-05-01T10:00:00.700+0000"
    assert changed[2].changed_at == datetime(2024, 5, 1, 10, 0, 0, 700000, tzinfo=UTC)
    assert [c.record_id for c in crm.changes_since(changed[-1].changed_at)] == [latest]
    assert len(list(crm.changes_since(None))) == 5
    query = next(path for _, path in emu.request_log if "/query?" in path)
    assert "SystemModstamp+%3E%3D+2024-05-01T10%3A00%3A00Z" in query  # unquoted, whole seconds
    # The id, the version and the referral id the record names (the job's hint to read its link first), nothing else.
    assert f"SELECT+Id%2C+SystemModstamp%2C+{REF}+FROM" in query or f"SELECT+Id,+SystemModstamp,+{REF}+FROM" in query
    assert [c.referral_hint for c in changed] == [None, None, None, "ref-latest"]


def test_changes_since_pages_with_next_records_url_and_no_read_per_row(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    rows = [
        {"Name": f"Opp {i:03d}", "StageName": "Prospecting", "CloseDate": "2025-01-01", SYNC: True} for i in range(450)
    ]
    emu.seed("Opportunity", rows)
    listed = list(crm.changes_since(None, page_size=200))
    assert len(listed) == 450 and len({c.record_id for c in listed}) == 450
    stamps = [c.changed_at for c in listed]
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    assert sum(1 for _, path in emu.request_log if "/query/01g" in path) == 2  # three pages
    assert [m for m, path in emu.request_log if "/query" in path] == ["GET"] * 3  # the pages, nothing per row


def test_query_iterator_and_foreign_ids(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    emu.seed("Account", [{"Name": f"Account {i}"} for i in range(3)])
    names = [row["Name"] for row in crm.query("SELECT Name FROM Account ORDER BY Name DESC")]
    assert names == ["Account 2", "Account 1", "Account 0"]
    before = _requests(emu)
    assert crm.get_opportunity("3fa85f64-5717-4562-b3fc-2c963f66afa6") is None  # a Dataverse id
    assert crm.get_opportunity("0015g00000AAAAAAAA") is None  # an account id
    assert crm.find_by_referral_id("") is None
    assert _requests(emu) == before


def test_an_edit_saved_in_the_second_of_the_version_read_is_not_overwritten(emu: SalesforceEmulator) -> None:
    # Found by make chaos (seed 16) and the 50-record Salesforce chaos test: If-Unmodified-Since has whole seconds,
    # so a seller's edit saved after our read but in the same second as the version read passed the condition,
    # and our write (the ✔ mark, or Partner Center's older value) overwrote it.
    import time

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        CLOCK.advance(seconds)

    crm = from_settings(settings(emu), sleep=sleep, today=lambda: TODAY, now=CLOCK)
    time.sleep(1.01 - CLOCK().microsecond / 1e6)  # early in a second: the create and the edit share it
    current = crm.create_opportunity(full_opportunity())
    emu.update_record("Opportunity", current.crm_id or "", {"Amount": 777})
    with pytest.raises(PreconditionFailed):
        crm.set_sync_outcome(current, "Contoso Azure migration ✔", "audit")
    with pytest.raises(PreconditionFailed):
        crm.update_opportunity(current, current.model_copy(update={"notes": "ours"}), ["notes"])
    record = emu.record("Opportunity", current.crm_id or "")
    assert record is not None and record["Amount"] == 777 and record["Name"] == "Contoso Azure migration"
    assert waits and all(0 < w <= 2.0 for w in waits)
    # Read again, the record is written; a version older than a job takes from read to write costs nothing more.
    fresh = crm.get_opportunity(current.crm_id or "")
    assert fresh is not None
    CLOCK.advance(6)
    before, waited = _requests(emu), len(waits)
    assert crm.set_sync_outcome(fresh, "Contoso Azure migration ✔", "audit").name == "Contoso Azure migration ✔"
    assert len(waits) == waited and _requests(emu) == before + 1


def test_a_sellers_lead_edit_saved_in_the_second_of_the_version_read_is_not_overwritten(
    emu: SalesforceEmulator,
) -> None:
    # The same whole-second gap as for opportunities, on the leads Partner Center's leads become: a seller's edit
    # saved after our read, in the second of the version read, passed If-Unmodified-Since and was overwritten by
    # Partner Center's older value.
    import time

    from shared.domain.leads import Lead

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        CLOCK.advance(seconds)

    leads = from_settings(settings(emu), sleep=sleep, today=lambda: TODAY, now=CLOCK).lead_records()
    time.sleep(1.01 - CLOCK().microsecond / 1e6)  # early in a second: the create and the edit share it
    current = leads.create_lead(Lead(referral_id="ref-lead-1", company="Fabrikam Inc.", notes="from Partner Center"))
    assert current.crm_id is not None
    emu.update_record("Lead", current.crm_id, {"Description": "the seller's note"})
    with pytest.raises(PreconditionFailed):
        leads.update_lead(current, current.model_copy(update={"notes": "Partner Center's later note"}), ["notes"], None)
    record = emu.record("Lead", current.crm_id)
    assert record is not None and record["Description"] == "the seller's note"
    assert waits and all(0 < w <= 2.0 for w in waits)
    # Read again once the job's read-to-write time is over, the lead is written at the cost of the write alone.
    fresh = leads.get_lead(current.crm_id)
    assert fresh is not None
    CLOCK.advance(6)
    waited = len(waits)
    written = leads.update_lead(
        fresh, fresh.model_copy(update={"notes": "Partner Center's later note"}), ["notes"], None
    )
    assert written.notes == "Partner Center's later note" and len(waits) == waited
