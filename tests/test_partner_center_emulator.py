"""The Partner Center emulator over real HTTP: Referrals API, Webhooks API, signed dispatch, control API."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from cryptography import x509

from emulators.partner_center import PartnerCenterEmulator
from emulators.partner_center.receiver import WebhookReceiver
from emulators.partner_center.samples import cosell_referral, lead_referral, outgoing_cosell_body

AUTH = {"Authorization": "Bearer test-token"}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def emu() -> Iterator[PartnerCenterEmulator]:
    emulator = PartnerCenterEmulator(retry_delay=0.01).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


@pytest.fixture(autouse=True)
def fresh(emu: PartnerCenterEmulator, receiver: WebhookReceiver) -> None:
    emu.reset()
    emu.page_size, emu.required_token, emu.dispatch_mode, emu.delivery_attempts = 100, None, "async", 10
    receiver.clear()


def api(emu: PartnerCenterEmulator, method: str, path: str = "", **kwargs) -> requests.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return requests.request(method, f"{emu.url}/v1.0/engagements/referrals{path}", headers=headers, timeout=5, **kwargs)


def register(emu: PartnerCenterEmulator, url: str, ms_header: bool = False, events: list[str] | None = None) -> None:
    body = {
        "WebhookUrl": url,
        "SignatureTokenToMsSignatureHeader": ms_header,
        "WebhookEvents": events
        or [
            "test-created",
            "referral-created",
            "referral-updated",
            "related-referral-created",
            "related-referral-updated",
        ],
    }
    response = requests.put(f"{emu.url}/webhooks/v1/registration", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text


# -- authentication ---------------------------------------------------------------------------------------
def test_requests_without_a_bearer_token_are_refused(emu):
    response = requests.get(f"{emu.url}/v1.0/engagements/referrals", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert requests.get(f"{emu.url}/webhooks/v1/registration/events", timeout=5).status_code == 401


def test_only_the_configured_token_is_accepted_when_one_is_required(emu):
    emu.required_token = "s3cret"
    assert api(emu, "GET").status_code == 401
    assert api(emu, "GET", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# -- create / get -----------------------------------------------------------------------------------------
def test_create_assigns_identity_and_starts_outgoing_deals_accepted(emu):
    response = api(emu, "POST", json=outgoing_cosell_body(name="Northwind"))
    assert response.status_code == 201
    body = response.json()
    assert GUID.match(body["id"]) and GUID.match(body["engagementId"])
    assert re.fullmatch(r'"[0-9a-f-]{36}"', body["eTag"]) and response.headers["ETag"] == body["eTag"]
    assert (body["status"], body["substatus"], body["direction"]) == ("Active", "Accepted", "Outgoing")
    assert body["organizationId"] == emu.organization_id and body["organizationName"] == emu.organization_name
    assert body["createdDateTime"] == body["updatedDateTime"] == body["acceptedDateTime"]
    assert body["links"]["self"]["uri"].endswith(f"/v1.0/engagements/referrals/{body['id']}")
    assert body["engagementId"] in body["links"]["relatedReferrals"]["uri"]
    assert api(emu, "GET", f"/{body['id']}").json()["name"] == "Northwind"


def test_the_microsoft_referral_of_a_cosell_keeps_the_supplied_engagement(emu):
    first = api(emu, "POST", json=outgoing_cosell_body()).json()
    microsoft = outgoing_cosell_body(
        engagementId=first["engagementId"], target=[{"type": "BusinessProfileLocation", "id": "msft"}]
    )
    second = api(emu, "POST", json=microsoft).json()
    assert second["engagementId"] == first["engagementId"] and second["id"] != first["id"]


@pytest.mark.parametrize("missing", ["type", "customerProfile", "consent", "details"])
def test_create_requires_the_documented_fields(emu, missing):
    response = api(emu, "POST", json=outgoing_cosell_body(**{missing: None}))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalidRequest" and missing in response.json()["error"]["message"]
    assert emu.referrals() == []


def test_get_unknown_referral_is_item_not_found(emu):
    response = api(emu, "GET", "/6f1c0000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and response.json()["error"]["code"] == "itemNotFound"


# -- list, filters, paging ------------------------------------------------------------------------------
def test_paging_follows_opaque_next_links_through_every_referral(emu):
    seeded = {emu.seed_referral(name=f"Deal {i}", raise_event=False)["id"] for i in range(230)}
    seen: list[str] = []
    url: str | None = f"{emu.url}/v1.0/engagements/referrals"
    pages = []
    while url:
        body = requests.get(url, headers=AUTH, timeout=5).json()
        assert body["@odata.count"] == 230 and "@odata.context" in body
        pages.append(len(body["value"]))
        seen += [r["id"] for r in body["value"]]
        url = body.get("@odata.nextLink")
        assert url is None or "$skiptoken=" in url
    assert pages == [100, 100, 30]
    assert len(seen) == len(set(seen)) and set(seen) == seeded


def test_page_size_is_configurable_and_a_filter_survives_paging(emu):
    emu.page_size = 3
    for i in range(8):
        emu.seed_referral(
            name=f"Deal {i}",
            status="Active" if i % 2 else "New",
            substatus="Accepted" if i % 2 else "Pending",
            raise_event=False,
        )
    first = api(emu, "GET", params={"$filter": "status eq 'Active'"}).json()
    second = requests.get(first["@odata.nextLink"], headers=AUTH, timeout=5).json()
    assert [r["status"] for r in first["value"] + second["value"]] == ["Active"] * 4
    assert "@odata.nextLink" not in second


@pytest.mark.parametrize(
    ("odata_filter", "expected"),
    [
        ("status eq 'New'", {"cosell-us", "lead"}),
        ("status eq 'New' and qualification eq 'SalesQualified'", {"cosell-us"}),
        ("customerProfile/address/country eq 'US' and direction eq 'Incoming'", {"cosell-us", "lead"}),
        ("(type eq 'Shared' and direction eq 'Incoming') or status eq 'Active'", {"cosell-us", "cosell-de"}),
        ("not (status eq 'New')", {"cosell-de"}),
        ("substatus ne 'Pending'", {"cosell-de"}),
        ("externalReferenceId eq 'CRM-42'", {"cosell-de"}),
        ("team/any(t:t/email eq 'jordan.reyes@partner.example') and type eq 'Independent'", {"lead"}),
    ],
)
def test_filters(emu, odata_filter, expected):
    emu.seed_referral(name="cosell-us", raise_event=False)
    emu.seed_referral(lead_referral(name="lead"), raise_event=False)
    emu.seed_referral(
        name="cosell-de",
        status="Active",
        substatus="Accepted",
        externalReferenceId="CRM-42",
        customerProfile={"address": {"country": "DE"}},
        raise_event=False,
    )
    response = api(emu, "GET", params={"$filter": odata_filter})
    assert response.status_code == 200, response.text
    assert {r["name"] for r in response.json()["value"]} == expected


def test_filter_by_update_time_and_by_engagement_link(emu):
    old = emu.seed_referral(name="old", raise_event=False)
    mark = old["updatedDateTime"]
    new = emu.seed_referral(name="new", raise_event=False)
    after = api(emu, "GET", params={"$filter": f"updatedDateTime gt '{mark}'"}).json()["value"]
    assert [r["name"] for r in after] == ["new"]
    unquoted = api(emu, "GET", params={"$filter": f"updatedDateTime ge {mark}"}).json()["value"]
    assert {r["name"] for r in unquoted} == {"old", "new"}
    related = requests.get(new["links"]["relatedReferrals"]["uri"], headers=AUTH, timeout=5).json()["value"]
    assert [r["id"] for r in related] == [new["id"]]
    emu.seed_referral(name="ancient", createdDateTime="2020-01-01T00:00:00Z", raise_event=False)
    before = api(emu, "GET", params={"$filter": "updatedDateTime lt '2021-01-01T00:00:00Z'"}).json()["value"]
    assert [r["name"] for r in before] == ["ancient"]


@pytest.mark.parametrize(
    "odata_filter",
    [
        "details/dealValue gt 5",
        "status eq",
        "status like 'New'",
        "status eq 'New' and",
        "contains(name,'x')",
    ],
)
def test_unsupported_filters_are_invalid_requests(emu, odata_filter):
    response = api(emu, "GET", params={"$filter": odata_filter})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalidRequest"


def test_orderby_and_top(emu):
    a = emu.seed_referral(name="a", raise_event=False)
    emu.seed_referral(name="b", raise_event=False)
    emu.portal_update(a["id"], {"details": {"notes": "touched"}}, raise_event=False)
    newest_first = api(emu, "GET", params={"$orderby": "updatedDateTime desc"}).json()["value"]
    assert [r["name"] for r in newest_first] == ["a", "b"]
    by_creation = api(emu, "GET", params={"$orderby": "createdDateTime asc", "$top": "1"}).json()
    assert [r["name"] for r in by_creation["value"]] == ["a"] and "@odata.nextLink" not in by_creation
    assert api(emu, "GET", params={"$orderby": "name"}).status_code == 400
    assert api(emu, "GET", params={"$top": "0"}).status_code == 400


# -- PATCH / PUT --------------------------------------------------------------------------------------------
def test_patch_replace_and_add_with_representation(emu):
    referral = emu.seed_referral(raise_event=False)
    operations = [
        {"op": "replace", "path": "/details/dealValue", "value": 999.5},
        {"op": "add", "path": "/team/-", "value": {"firstName": "Sam", "email": "sam@partner.example"}},
        {"op": "replace", "path": "/status", "value": "Active"},
        {"op": "replace", "path": "/substatus", "value": "Accepted"},
    ]
    response = api(
        emu,
        "PATCH",
        f"/{referral['id']}",
        json=operations,
        headers={"Prefer": "return=representation", "If-Match": referral["eTag"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["details"]["dealValue"] == 999.5 and body["details"]["currency"] == "USD"
    assert body["team"][-1]["firstName"] == "Sam" and len(body["team"]) == len(referral["team"]) + 1
    assert body["eTag"] != referral["eTag"] and response.headers["ETag"] == body["eTag"]
    assert body["updatedDateTime"] > referral["updatedDateTime"] and body["status"] == "Active"


def test_patch_without_prefer_returns_no_content_but_still_writes(emu):
    referral = emu.seed_referral(raise_event=False)
    response = api(emu, "PATCH", f"/{referral['id']}", json=[{"op": "replace", "path": "/name", "value": "X"}])
    assert response.status_code == 204 and response.content == b""
    assert emu.referral(referral["id"])["name"] == "X" and emu.referral(referral["id"])["eTag"] != referral["eTag"]


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "remove", "path": "/details/notes"},
        {"op": "replace", "path": "/id", "value": "x"},
        {"op": "replace", "path": "/eTag", "value": "x"},
        {"op": "replace", "path": "/team/99", "value": {}},
        {"op": "replace", "path": "details", "value": {}},
    ],
)
def test_unsupported_patch_operations_are_rejected_without_writing(emu, operation):
    referral = emu.seed_referral(raise_event=False)
    response = api(emu, "PATCH", f"/{referral['id']}", json=[operation])
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalidRequest"
    assert emu.referral(referral["id"])["eTag"] == referral["eTag"]


def test_stale_if_match_is_precondition_failed(emu):
    referral = emu.seed_referral(raise_event=False)
    emu.portal_update(referral["id"], {"name": "changed in the portal"}, raise_event=False)
    patch = api(
        emu,
        "PATCH",
        f"/{referral['id']}",
        json=[{"op": "replace", "path": "/name", "value": "mine"}],
        headers={"If-Match": referral["eTag"]},
    )
    assert patch.status_code == 412 and patch.json()["error"]["code"] == "preconditionFailed"
    put = api(
        emu, "PUT", f"/{referral['id']}", json={**referral, "name": "mine"}, headers={"If-Match": referral["eTag"]}
    )
    assert put.status_code == 412
    assert emu.referral(referral["id"])["name"] == "changed in the portal"


def test_put_requires_if_match_and_replaces_the_whole_referral(emu):
    referral = emu.seed_referral(raise_event=False)
    body = {k: v for k, v in referral.items() if k != "links"}
    body["name"] = "Renamed"
    assert api(emu, "PUT", f"/{referral['id']}", json=body).status_code in (400, 428)
    response = api(emu, "PUT", f"/{referral['id']}", json=body, headers={"If-Match": referral["eTag"]})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Renamed" and response.json()["id"] == referral["id"]
    assert response.json()["createdDateTime"] == referral["createdDateTime"]


@pytest.mark.parametrize(
    ("start", "change"),
    [
        (("Active", "Accepted"), ("New", "Pending")),
        (("New", "Pending"), ("Active", "Won")),
        (("New", "Pending"), ("Closed", "Accepted")),
        (("New", "Pending"), ("Pending", "Pending")),
    ],
)
def test_invalid_transitions_are_rejected(emu, start, change):
    referral = emu.seed_referral(status=start[0], substatus=start[1], raise_event=False)
    operations = [
        {"op": "replace", "path": "/status", "value": change[0]},
        {"op": "replace", "path": "/substatus", "value": change[1]},
    ]
    response = api(emu, "PATCH", f"/{referral['id']}", json=operations)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalidRequest"
    assert emu.referral(referral["id"])["status"] == start[0]


def test_a_closed_referral_cannot_be_changed(emu):
    referral = emu.seed_referral(raise_event=False)
    won = [
        {"op": "replace", "path": "/status", "value": "Closed"},
        {"op": "replace", "path": "/substatus", "value": "Won"},
    ]
    closed = api(emu, "PATCH", f"/{referral['id']}", json=won, headers={"Prefer": "return=representation"}).json()
    assert closed["status"] == "Closed" and "closedDateTime" in closed
    response = api(emu, "PATCH", f"/{referral['id']}", json=[{"op": "replace", "path": "/details/notes", "value": "x"}])
    assert response.status_code == 400 and "closed" in response.json()["error"]["message"]


# -- faults and counters ------------------------------------------------------------------------------------
def test_throttling_fault_answers_429_with_retry_after_then_recovers(emu):
    emu.add_fault(status=429, count=2, retry_after=7, method="GET")
    assert api(emu, "POST", json=outgoing_cosell_body()).status_code == 201  # other methods are not throttled
    for _ in range(2):
        response = api(emu, "GET")
        assert response.status_code == 429 and response.headers["Retry-After"] == "7"
        assert response.json() == {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 7 seconds."}
    assert api(emu, "GET").status_code == 200
    assert emu.counters()["throttled"] == 2


def test_unavailable_fault_for_a_path(emu):
    referral = emu.seed_referral(raise_event=False)
    emu.add_fault(status=503, count=1, retry_after=2, path=referral["id"])
    assert api(emu, "GET").status_code == 200
    response = api(emu, "GET", f"/{referral['id']}")
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert api(emu, "GET", f"/{referral['id']}").status_code == 200


def test_counters_separate_reads_from_writes(emu):
    referral = emu.seed_referral(raise_event=False)
    api(emu, "GET")
    api(emu, "GET", f"/{referral['id']}")
    assert emu.writes == 0 and emu.reads == 2
    api(emu, "PATCH", f"/{referral['id']}", json=[{"op": "replace", "path": "/name", "value": "n"}])
    api(emu, "POST", json=outgoing_cosell_body())
    counters = emu.counters()
    observed = (counters["list"], counters["get"], counters["patch"], counters["create"], counters["writes"])
    assert observed == (1, 1, 1, 1, 2)


# -- webhooks API -------------------------------------------------------------------------------------------
def test_registration_lifecycle(emu, receiver):
    base = f"{emu.url}/webhooks/v1/registration"
    events = requests.get(f"{base}/events", headers=AUTH, timeout=5).json()
    assert set(events) == {
        "test-created",
        "referral-created",
        "referral-updated",
        "related-referral-created",
        "related-referral-updated",
    }
    assert requests.get(base, headers=AUTH, timeout=5).status_code == 404
    body = {"WebhookUrl": receiver.hook_url, "WebhookEvents": ["referral-created"]}
    created = requests.post(base, json=body, headers=AUTH, timeout=5)
    assert created.status_code == 201 and created.json()["WebhookUrl"] == receiver.hook_url
    again = requests.post(base, json=body, headers=AUTH, timeout=5)
    assert again.status_code == 409 and "use the PUT method" in again.json()["error"]["message"]
    updated = requests.put(base, json={**body, "WebhookEvents": ["referral-updated"]}, headers=AUTH, timeout=5)
    assert updated.status_code == 200 and updated.json()["WebhookEvents"] == ["referral-updated"]
    assert "SubscriberId" in updated.json()
    bad = requests.put(base, json={**body, "WebhookEvents": ["nope"]}, headers=AUTH, timeout=5)
    assert bad.status_code == 400


def test_validation_events_are_delivered_and_rate_limited(emu, receiver):
    register(emu, receiver.hook_url)
    base = f"{emu.url}/webhooks/v1/registration/validationEvents"
    correlation_id = requests.post(base, headers=AUTH, timeout=5).json()["correlationId"]
    callback = receiver.wait_for(1)[0]
    payload = json.loads(callback.body)
    assert payload["EventName"] == "test-created" and payload["ResourceName"] == "test"
    assert payload["ResourceUri"].endswith(f"/webhooks/v1/registration/validationEvents/{correlation_id}")
    emu.wait_for_deliveries(1)
    status = requests.get(f"{base}/{correlation_id}", headers=AUTH, timeout=5).json()
    assert status["status"] == "completed" and status["callbackUrl"] == receiver.hook_url
    assert status["results"][0]["responseCode"] == 200
    assert requests.post(base, headers=AUTH, timeout=5).status_code == 200
    third = requests.post(base, headers=AUTH, timeout=5)
    assert third.status_code == 429 and "Retry-After" in third.headers


# -- signed dispatch ----------------------------------------------------------------------------------------
def test_referral_events_are_signed_callbacks_sent_after_the_api_returns(emu, receiver):
    register(emu, receiver.hook_url)
    receiver.gate = threading.Event()
    started = time.monotonic()
    created = api(emu, "POST", json=outgoing_cosell_body())
    assert created.status_code == 201 and time.monotonic() - started < 2  # not waiting for the receiver
    assert receiver.received == []
    receiver.gate.set()
    callback = receiver.wait_for(1)[0]
    payload = json.loads(callback.body)
    assert payload["EventName"] == "referral-created" and payload["ResourceName"] == "referral"
    assert payload["ResourceUri"] == f"{emu.url}/engagements/v1/referrals/{created.json()['id']}"
    assert payload["AuditUri"] is None and payload["ResourceChangeUtcDate"].endswith("+00:00")
    assert callback.header("content-type") == "application/json"
    assert callback.header("authorization").startswith("Signature ")
    assert callback.header("x-ms-certificate-url") == emu.certificate_url()
    assert callback.header("x-ms-signature-algorithm") == "rsa-sha256"


def test_signature_goes_to_x_ms_signature_when_registered_so(emu, receiver):
    emu.dispatch_mode = "sync"
    register(emu, receiver.hook_url, ms_header=True)
    referral = emu.seed_referral()
    emu.portal_update(referral["id"], {"details": {"dealValue": 1.0}})
    first, second = receiver.wait_for(2)
    assert [json.loads(c.body)["EventName"] for c in (first, second)] == ["referral-created", "referral-updated"]
    assert second.header("authorization") is None and second.header("x-ms-signature").startswith("Signature ")


def test_redelivery_duplicates_and_corrupted_signatures(emu, receiver):
    emu.dispatch_mode = "sync"
    register(emu, receiver.hook_url)
    referral = emu.seed_referral()
    emu.redeliver(referral["id"])
    emu.send_event(referral["id"], redeliver=True, corrupt_signature=True)
    emu.send_event(referral["id"], certificate_url="https://elsewhere.example/cert.cer")
    original, duplicate, corrupted, moved = receiver.wait_for(4)
    assert duplicate.body == original.body and duplicate.header("authorization") == original.header("authorization")
    assert corrupted.body == original.body and corrupted.header("authorization") != original.header("authorization")
    assert moved.header("x-ms-certificate-url") == "https://elsewhere.example/cert.cer"


def test_failed_deliveries_are_retried_and_recorded(emu, receiver):
    emu.dispatch_mode, emu.delivery_attempts = "async", 3
    receiver.status = 500
    register(emu, receiver.hook_url)
    emu.seed_referral()
    delivery = emu.wait_for_deliveries(1)[0]
    assert delivery.status == "failed" and [a["responseCode"] for a in delivery.attempts] == [500, 500, 500]
    listed = requests.get(f"{emu.url}/_emulator/deliveries", timeout=5).json()["value"]
    assert listed[0]["status"] == "failed" and len(listed[0]["attempts"]) == 3

    receiver.status = 200
    emu.seed_referral()
    emu.wait_for_deliveries(2)
    sent_again = requests.get(f"{emu.url}/_emulator/deliveries", params={"minAttempts": 2}, timeout=5).json()["value"]
    assert [len(d["attempts"]) for d in sent_again] == [3]  # the one delivered at the first attempt is left out


def test_changes_to_another_partys_copy_raise_related_events(emu, receiver):
    emu.dispatch_mode = "sync"
    register(emu, receiver.hook_url)
    ours = emu.seed_referral(raise_event=False)
    theirs = emu.seed_referral(
        cosell_referral(engagementId=ours["engagementId"], organizationId="msft"), raise_event=False
    )
    emu.portal_update(theirs["id"], {"status": "Active", "substatus": "Accepted"})
    payload = json.loads(receiver.wait_for(1)[0].body)
    assert payload["EventName"] == "related-referral-updated"
    assert payload["ResourceUri"].endswith(ours["id"])


def test_no_callbacks_without_a_registration_for_the_event(emu, receiver):
    emu.dispatch_mode = "sync"
    register(emu, receiver.hook_url, events=["referral-updated"])
    emu.seed_referral()
    assert receiver.received == [] and emu.deliveries() == []


# -- certificates and control API ---------------------------------------------------------------------------
def test_signing_certificates_are_served(emu, tmp_path):
    leaf = x509.load_der_x509_certificate(requests.get(emu.certificate_url(), timeout=5).content)
    assert leaf.subject.rfc4514_string().startswith("CN=pcnotifications-dispatch.microsoft.com")
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    intermediate_url = aia[0].access_location.value
    intermediate = x509.load_der_x509_certificate(requests.get(intermediate_url, timeout=5).content)
    assert leaf.issuer == intermediate.subject
    root = x509.load_pem_x509_certificate(requests.get(f"{emu.url}/_emulator/ca.pem", timeout=5).content)
    assert intermediate.issuer == root.subject
    bundle = emu.write_ca_bundle(tmp_path / "ca.pem")
    assert x509.load_pem_x509_certificate(bundle.read_bytes()) == root


def test_control_api_over_http(emu, receiver):
    control = f"{emu.url}/_emulator"
    seeded = requests.post(f"{control}/referrals", json={"kind": "lead", "overrides": {"name": "Lead 1"}}, timeout=5)
    assert seeded.status_code == 201
    lead = seeded.json()
    assert lead["type"] == "Independent" and lead["inviteContext"]["invitedBy"]["organizationId"] == "msft"
    updated = requests.patch(
        f"{control}/referrals/{lead['id']}", json={"details": {"notes": "from the portal"}}, timeout=5
    ).json()
    assert updated["details"]["notes"] == "from the portal" and updated["eTag"] != lead["eTag"]
    assert updated["details"]["currency"] == "USD"
    assert requests.post(f"{control}/faults", json={"status": 429, "count": 1, "retryAfter": 3}, timeout=5).ok
    assert api(emu, "GET").status_code == 429
    assert requests.get(f"{control}/counters", timeout=5).json()["throttled"] == 1
    config = requests.post(f"{control}/config", json={"pageSize": 5, "dispatchMode": "sync"}, timeout=5).json()
    assert config["pageSize"] == 5 and emu.page_size == 5 and emu.dispatch_mode == "sync"
    register(emu, receiver.hook_url)
    sent = requests.post(f"{control}/deliveries", json={"referralId": lead["id"], "corruptSignature": True}, timeout=5)
    assert sent.status_code == 202 and receiver.wait_for(1)
    assert requests.post(f"{control}/reset", timeout=5).status_code == 204
    assert requests.get(f"{control}/referrals", timeout=5).json()["value"] == []


def test_samples_carry_every_mapped_field():
    sample = cosell_referral()
    assert sample["details"]["requirements"]["solutions"][0]["id"].startswith("SOL-")
    assert len(sample["customerProfile"]["address"]["country"]) == 2
    assert sample["inviteContext"]["assistanceRequestCode"] == "CustomerTechnicalArchitecture"
    assert sample["customerProfile"]["team"][0]["email"]
    assert cosell_referral(details={"notes": None})["details"].get("notes") is None
