"""PartnerCenterClient and the token providers, against the emulator and a fake token endpoint."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr

from emulators._server import Emulator, Request, Response
from emulators.partner_center import PartnerCenterEmulator
from emulators.partner_center.samples import outgoing_cosell_body
from shared import wiring
from shared.domain.errors import (
    AuthenticationError,
    NotFound,
    PermanentError,
    PreconditionFailed,
    Throttled,
    TransientError,
)
from shared.domain.mapping import referral_to_opportunity
from shared.domain.referral import Referral
from shared.partner_center.auth import (
    REFERRALS_SCOPE,
    WEBHOOKS_SCOPE,
    PartnerCenterCredentials,
    RefreshTokenProvider,
    StaticToken,
    partner_center_token_provider,
)
from shared.partner_center.client import PartnerCenterClient, PartnerCenterConfig, referral_id_from_resource_uri
from shared.settings import load_settings

REFERRAL_ID = "8b0c7d52-3f0e-4f1a-9a55-2b8f1f6a2c11"


@pytest.fixture(scope="module")
def emu() -> Iterator[PartnerCenterEmulator]:
    emulator = PartnerCenterEmulator(dispatch_mode="off").start()
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def fresh(emu: PartnerCenterEmulator) -> None:
    emu.reset()
    emu.required_token = None


class SleepRecorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def client(emu: PartnerCenterEmulator, sleeps: SleepRecorder) -> PartnerCenterClient:
    return PartnerCenterClient(PartnerCenterConfig(emu.url, max_inline_wait=5), StaticToken("test-token"), sleep=sleeps)


# -- reads ----------------------------------------------------------------------------------------------------
def test_get_referral_returns_the_model_with_its_etag(emu, client):
    seeded = emu.seed_referral(raise_event=False)
    referral = client.get(seeded["id"])
    assert isinstance(referral, Referral)
    assert referral.id == seeded["id"] and referral.e_tag == seeded["eTag"]
    assert referral.details.requirements.solutions[0].id == "SOL-34104-EBB"
    assert referral.model_extra.get("links")  # fields the model does not name are kept


def test_get_unknown_referral_raises_not_found(client):
    with pytest.raises(NotFound):
        client.get(REFERRAL_ID)


@pytest.mark.parametrize("bad_id", ["", "../referrals", "a/b", "x" * 100])
def test_get_refuses_ids_that_could_change_the_path(emu, client, bad_id):
    with pytest.raises(ValueError):
        client.get(bad_id)
    assert emu.reads == 0


def test_list_follows_next_links_through_more_than_one_page(emu, client):
    ids = {emu.seed_referral(name=f"Deal {i}", raise_event=False)["id"] for i in range(230)}
    listed = [r.id for r in client.list_referrals()]
    assert len(listed) == 230 and set(listed) == ids
    assert emu.counters()["list"] == 3


def test_list_passes_filter_orderby_and_top(emu, client):
    for i in range(6):
        emu.seed_referral(name=f"Deal {i}", raise_event=False)
    emu.seed_referral(name="Active one", status="Active", substatus="Accepted", raise_event=False)
    newest = list(client.list_referrals(odata_filter="status eq 'New'", orderby="createdDateTime desc", top=2))
    assert [r.name for r in newest] == ["Deal 5", "Deal 4"]
    assert emu.counters()["list"] == 1


def test_list_stops_at_top_across_pages(emu, client):
    emu.page_size = 3
    try:
        for i in range(10):
            emu.seed_referral(name=f"Deal {i}", raise_event=False)
        assert len(list(client.list_referrals(top=4))) == 4
        assert emu.counters()["list"] == 2
    finally:
        emu.page_size = 100


def test_unsupported_filter_is_a_permanent_error(client):
    with pytest.raises(PermanentError):
        list(client.list_referrals(odata_filter="details/dealValue gt 1"))


def test_next_links_are_always_sent_to_the_configured_base(client, emu):
    rebased = client._next_url("http://api.partner.microsoft.com/v1.0/referrals?$skiptoken=abc")
    assert rebased == f"{emu.url}/v1.0/referrals?$skiptoken=abc"


# -- the port: referrals in the domain's terms ----------------------------------------------------------------
def test_lookups_by_external_reference_and_by_engagement_quote_their_keys(emu, client):
    mine = emu.seed_referral(externalReferenceId="O'Brien-1", raise_event=False)
    emu.seed_referral(externalReferenceId="O'Brien-2", raise_event=False)
    assert [r.id for r in client.by_external_reference("O'Brien-1")] == [mine["id"]]
    assert [r.id for r in client.by_engagement(mine["engagementId"])] == [mine["id"]]


def test_changed_since_reads_from_the_whole_second_oldest_first(emu, client):
    first = emu.seed_referral(name="First", raise_event=False)
    second = emu.seed_referral(name="Second", raise_event=False)
    since = datetime.fromisoformat(first["updatedDateTime"].replace("Z", "+00:00"))
    assert [r.id for r in client.changed_since(since.replace(microsecond=999_999))] == [first["id"], second["id"]]
    assert [r.id for r in client.changed_since(None)] == [first["id"], second["id"]]
    assert list(client.changed_since(since + timedelta(days=1))) == []


def test_update_writes_only_the_fields_asked_for_and_only_over_the_version_read(emu, client):
    referral = client.get(emu.seed_referral(raise_event=False)["id"])
    edited = referral_to_opportunity(referral).model_copy(update={"notes": "New notes", "name": "Another name"})
    updated = client.update(referral, edited, ["notes"])
    assert updated.details is not None and updated.details.notes == "New notes"
    assert updated.name == referral.name and updated.e_tag != referral.e_tag
    with pytest.raises(PreconditionFailed):
        client.update(referral, edited, ["name"])  # the eTag read first is stale now
    assert client.get(referral.id or "").name == referral.name


# -- writes ---------------------------------------------------------------------------------------------------
def test_create_referral(emu, client):
    created = client.create_referral(outgoing_cosell_body(name="From the CRM"))
    assert created.id and created.e_tag and created.status == "Active" and created.substatus == "Accepted"
    assert emu.referral(created.id)["name"] == "From the CRM"


def test_patch_replace_and_add_with_etag(emu, client):
    seeded = emu.seed_referral(raise_event=False)
    patched = client.patch_referral(
        seeded["id"],
        [
            {"op": "replace", "path": "/details/dealValue", "value": 1234},
            {"op": "add", "path": "/details/requirements/solutions/-", "value": {"id": "SOL-99999-XYZ"}},
        ],
        etag=seeded["eTag"],
    )
    assert patched.details.deal_value == 1234
    assert [s.id for s in patched.details.requirements.solutions] == ["SOL-34104-EBB", "SOL-99999-XYZ"]
    assert patched.e_tag != seeded["eTag"]


def test_patch_with_a_stale_etag_raises_precondition_failed(emu, client):
    seeded = emu.seed_referral(raise_event=False)
    emu.portal_update(seeded["id"], {"name": "edited meanwhile"}, raise_event=False)
    with pytest.raises(PreconditionFailed):
        client.patch_referral(seeded["id"], [{"op": "replace", "path": "/name", "value": "mine"}], etag=seeded["eTag"])
    assert emu.referral(seeded["id"])["name"] == "edited meanwhile"


def test_patch_with_an_invalid_transition_is_permanent(emu, client):
    seeded = emu.seed_referral(status="Active", substatus="Accepted", raise_event=False)
    with pytest.raises(PermanentError) as raised:
        client.patch_referral(seeded["id"], [{"op": "replace", "path": "/status", "value": "New"}])
    assert raised.value.status == 400 and raised.value.code == "invalidRequest"


def test_patch_refuses_unsupported_operations_before_sending(emu, client):
    seeded = emu.seed_referral(raise_event=False)
    with pytest.raises(ValueError):
        client.patch_referral(seeded["id"], [{"op": "remove", "path": "/details/notes"}])
    with pytest.raises(ValueError):
        client.patch_referral(seeded["id"], [])
    assert emu.writes == 0


# -- throttling and auth -----------------------------------------------------------------------------------------
def test_short_retry_after_is_honoured_inline(emu, client, sleeps):
    seeded = emu.seed_referral(raise_event=False)
    emu.add_fault(status=429, count=1, retry_after=0.2)
    assert client.get(seeded["id"]).id == seeded["id"]
    assert sleeps.waits == [0.2]
    assert emu.counters()["throttled"] == 1 and emu.counters()["get"] == 1


def test_long_retry_after_raises_throttled_without_waiting(emu, client, sleeps):
    emu.add_fault(status=429, count=1, retry_after=120)
    with pytest.raises(Throttled) as raised:
        list(client.list_referrals())
    assert raised.value.retry_after == 120 and sleeps.waits == []
    assert emu.reads == 0


def test_unavailable_with_retry_after_is_retried(emu, client, sleeps):
    seeded = emu.seed_referral(raise_event=False)
    emu.add_fault(status=503, count=1, retry_after=1)
    assert client.get(seeded["id"]).id == seeded["id"]
    assert sleeps.waits == [1.0]


def test_refused_token_raises_authentication_error(emu, client):
    emu.required_token = "another-token"
    with pytest.raises(AuthenticationError) as raised:
        client.get(REFERRAL_ID)
    assert "test-token" not in str(raised.value)


# -- resource URIs --------------------------------------------------------------------------------------------------
def test_referral_id_from_resource_uri():
    uri = f"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{REFERRAL_ID}"
    assert referral_id_from_resource_uri(uri) == REFERRAL_ID


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "not a uri",
        "https://api.partnercenter.microsoft.com/engagements/v1/referrals/",
        "https://api.partnercenter.microsoft.com/engagements/v1/referrals/not-a-guid",
        f"https://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/{REFERRAL_ID}",
        f"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{REFERRAL_ID}/../../x",
        f"file:///engagements/v1/referrals/{REFERRAL_ID}",
    ],
)
def test_referral_id_from_resource_uri_rejects_anything_else(uri):
    with pytest.raises(ValueError):
        referral_id_from_resource_uri(uri)


# -- token providers ----------------------------------------------------------------------------------------------
class FakeTokenEndpoint(Emulator):
    """Issues numbered access tokens and rotates the refresh token on every exchange."""

    name = "token-endpoint"

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self.valid_refresh_token = "refresh-0"
        self.answer: int | None = None
        self.route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", self._token)

    def _token(self, request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs(request.body.decode()).items()}
        self.forms.append(form)
        if self.answer is not None:
            return Response(self.answer, {"error": "temporarily_unavailable"})
        if form.get("refresh_token") != self.valid_refresh_token:
            description = f"AADSTS70008: The refresh token has expired. Token: {form.get('refresh_token')}"
            return Response(400, {"error": "invalid_grant", "error_description": description})
        number = len(self.forms)
        self.valid_refresh_token = f"refresh-{number}"
        return Response(
            200,
            {
                "token_type": "Bearer",
                "access_token": f"access-{number}",
                "expires_in": 3600,
                "refresh_token": self.valid_refresh_token,
                "scope": form.get("scope"),
            },
        )


@pytest.fixture(scope="module")
def token_server() -> Iterator[FakeTokenEndpoint]:
    server = FakeTokenEndpoint()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def endpoint(token_server: FakeTokenEndpoint) -> FakeTokenEndpoint:
    token_server.forms, token_server.valid_refresh_token, token_server.answer = [], "refresh-0", None
    return token_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refresh_token_exchange_is_cached_until_close_to_expiry(endpoint):
    clock = Clock()
    provider = RefreshTokenProvider(
        endpoint.url, "tenant-1", "client-1", "refresh-0", client_secret="app-secret", clock=clock
    )
    assert provider() == "access-1" and provider() == "access-1"
    assert len(endpoint.forms) == 1
    form = endpoint.forms[0]
    assert form["grant_type"] == "refresh_token" and form["client_id"] == "client-1"
    assert form["client_secret"] == "app-secret"
    assert form["scope"] == "https://api.partner.microsoft.com/.default offline_access"
    clock.now += 3600 - 301
    assert provider() == "access-1"
    clock.now += 2
    assert provider() == "access-2"
    assert endpoint.forms[1]["refresh_token"] == "refresh-1"  # the rotated token was kept


def test_providers_for_other_scopes_share_the_rotated_refresh_token(endpoint):
    referrals = RefreshTokenProvider(endpoint.url, "tenant-1", "client-1", SecretStr("refresh-0"))
    webhooks = referrals.with_scope(WEBHOOKS_SCOPE)
    assert referrals() == "access-1"
    assert webhooks() == "access-2"
    assert endpoint.forms[1]["scope"] == WEBHOOKS_SCOPE and endpoint.forms[1]["refresh_token"] == "refresh-1"


def test_refused_refresh_raises_a_readable_error_without_secrets(endpoint):
    provider = RefreshTokenProvider(endpoint.url, "tenant-1", "client-1", "stolen-refresh", client_secret="app-secret")
    with pytest.raises(AuthenticationError) as raised:
        provider()
    message = str(raised.value)
    assert "invalid_grant" in message and "AADSTS70008" in message and "login" in message
    assert "stolen-refresh" not in message and "app-secret" not in message
    assert "stolen-refresh" not in repr(provider) and "app-secret" not in repr(provider)


def test_token_endpoint_outage_is_transient(endpoint):
    endpoint.answer = 503
    with pytest.raises(TransientError):
        RefreshTokenProvider(endpoint.url, "tenant-1", "client-1", "refresh-0")()


def test_token_provider_factory_chooses_static_or_refresh(caplog):
    caplog.set_level(logging.INFO, logger="shared.wiring")
    settings = load_settings(partner_center_only=True, PARTNER_CENTER_ACCESS_TOKEN="emulator-token")
    static = wiring.partner_center_token(settings, REFERRALS_SCOPE)
    assert isinstance(static, StaticToken) and static() == "emulator-token"
    assert "emulator-token" not in caplog.text and "static" in caplog.text
    refreshing = partner_center_token_provider(
        PartnerCenterCredentials(
            tenant_id="contoso.onmicrosoft.com",
            client_id="app",
            refresh_token=SecretStr("r"),
            client_secret=SecretStr("s"),
            timeout=5.0,
        )
    )
    assert isinstance(refreshing, RefreshTokenProvider)
    assert refreshing.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    with pytest.raises(AuthenticationError):
        partner_center_token_provider(PartnerCenterCredentials())
