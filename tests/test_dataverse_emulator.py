"""The Dataverse emulator over real HTTP: OData querying, paging, write semantics, actions and faults."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from emulators.dataverse import DataverseEmulator

HEADERS = {
    "Authorization": "Bearer test-token",
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}


@pytest.fixture
def emu(dataverse_emu: DataverseEmulator) -> DataverseEmulator:
    return dataverse_emu


class Api:
    def __init__(self, emulator: DataverseEmulator) -> None:
        self.base = f"{emulator.url}/api/data/v9.2"

    def call(
        self, method: str, path: str, *, prefer: str | None = None, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        sent = dict(HEADERS)
        if prefer:
            sent["Prefer"] = prefer
        sent.update(headers or {})
        url = path if path.startswith("http") else f"{self.base}/{path}"
        return requests.request(method, url, headers=sent, timeout=5, **kwargs)


@pytest.fixture
def api(emu: DataverseEmulator) -> Api:
    return Api(emu)


def _error(response: requests.Response) -> dict[str, str]:
    return response.json()["error"]


def test_missing_or_wrong_bearer_token_gets_401(emu: DataverseEmulator, api: Api) -> None:
    response = requests.get(f"{api.base}/opportunities", timeout=5)
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert "message" in _error(response)
    emu.set_required_token("the-right-one")
    assert api.call("GET", "opportunities").status_code == 401
    assert api.call("GET", "opportunities", headers={"Authorization": "Bearer the-right-one"}).status_code == 200


def test_paging_follows_nextlink_with_maxpagesize(emu: DataverseEmulator, api: Api) -> None:
    emu.seed("accounts", [{"name": f"Account {i:02d}"} for i in range(7)])
    names: list[str] = []
    url: str | None = "accounts?$select=name&$orderby=name desc"
    pages = 0
    while url:
        response = api.call("GET", url, prefer="odata.maxpagesize=3")
        assert response.status_code == 200
        assert response.headers["Preference-Applied"] == "odata.maxpagesize=3"
        body = response.json()
        assert len(body["value"]) <= 3
        assert all(set(row) == {"@odata.etag", "name", "accountid"} for row in body["value"])
        names += [row["name"] for row in body["value"]]
        url = body.get("@odata.nextLink")
        if url:
            assert "$skiptoken=" in url and "$orderby=name" in url.replace("%24", "$")
        pages += 1
    assert pages == 3
    assert names == [f"Account {i:02d}" for i in reversed(range(7))]


def test_maxpagesize_is_capped_and_top_is_ignored_with_it(emu: DataverseEmulator, api: Api) -> None:
    emu.seed("accounts", [{"name": f"A{i}"} for i in range(4)])
    response = api.call("GET", "accounts?$top=1", prefer="odata.maxpagesize=9000")
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=5000"
    assert len(response.json()["value"]) == 4
    top = api.call("GET", "accounts?$top=2&$orderby=name").json()
    assert [row["name"] for row in top["value"]] == ["A0", "A1"] and "@odata.nextLink" not in top
    assert api.call("GET", "accounts?$skip=1").status_code == 400


def test_filter_with_unquoted_datetimes_and_operators(emu: DataverseEmulator, api: Api) -> None:
    account = emu.seed("accounts", {"name": "O'Brien Ltd"})[0]
    emu.seed(
        "opportunities",
        [
            {
                "name": "old",
                "modifiedon": "2024-12-31T23:59:59Z",
                "new_syncwithpartnercenter": True,
                "estimatedvalue": 10.5,
            },
            {
                "name": "edge",
                "modifiedon": "2025-01-01T00:00:00Z",
                "new_syncwithpartnercenter": True,
                "estimatedvalue": 100,
                "_customerid_value": account["accountid"],
            },
            {"name": "new unflagged", "modifiedon": "2025-03-01T12:00:00Z", "new_syncwithpartnercenter": False},
            {
                "name": "New flagged",
                "modifiedon": "2025-03-01T12:00:00Z",
                "new_syncwithpartnercenter": True,
                "description": "needs help",
            },
        ],
    )

    def names(odata_filter: str) -> list[str]:
        response = api.call("GET", "opportunities", params={"$filter": odata_filter, "$orderby": "name"})
        assert response.status_code == 200, response.text
        return [row["name"] for row in response.json()["value"]]

    assert names("modifiedon ge 2025-01-01T00:00:00Z and new_syncwithpartnercenter eq true") == ["edge", "New flagged"]
    assert names("modifiedon gt 2025-01-01T01:00:00+01:00") == ["New flagged", "new unflagged"]
    assert names("modifiedon lt 2025-01-01T00:00:00Z or estimatedvalue ge 100") == ["edge", "old"]
    assert names("startswith(name,'new') and not (new_syncwithpartnercenter eq false)") == ["New flagged"]
    assert names("contains(description,'HELP')") == ["New flagged"]
    assert names("description eq null and estimatedvalue le 10.5") == ["old"]
    assert names(f"_customerid_value eq {account['accountid']}") == ["edge"]
    assert names("new_syncwithpartnercenter ne true") == ["new unflagged"]
    quoted = api.call("GET", "accounts", params={"$filter": "name eq 'o''brien ltd'"}).json()["value"]
    assert [row["accountid"] for row in quoted] == [account["accountid"]]
    # A quoted datetime is a string: the service rejects the comparison instead of guessing.
    bad = api.call("GET", "opportunities", params={"$filter": "modifiedon ge '2025-01-01T00:00:00Z'"})
    assert bad.status_code == 400 and "incompatible types" in _error(bad)["message"]
    unknown = api.call("GET", "opportunities", params={"$filter": "nosuchcolumn eq 1"})
    assert unknown.status_code == 400 and "nosuchcolumn" in _error(unknown)["message"]
    assert api.call("GET", "opportunities", params={"$filter": "name eq"}).status_code == 400


def test_count_route_and_count_option(emu: DataverseEmulator, api: Api) -> None:
    emu.seed("contacts", [{"lastname": "A"}, {"lastname": "B"}, {"lastname": "B"}])
    response = api.call("GET", "contacts/$count", params={"$filter": "lastname eq 'b'"})
    assert response.status_code == 200 and response.text == "2"
    body = api.call("GET", "contacts?$count=true&$select=fullname").json()
    assert body["@odata.count"] == 3 and {row["fullname"] for row in body["value"]} == {"A", "B"}


def test_create_returns_204_with_entity_id_or_201_with_representation(emu: DataverseEmulator, api: Api) -> None:
    plain = api.call("POST", "accounts", json={"name": "Contoso"})
    assert plain.status_code == 204 and plain.content == b""
    entity_id = plain.headers["OData-EntityId"]
    assert entity_id.startswith(f"{api.base}/accounts(")
    record_id = entity_id.rsplit("(", 1)[1].rstrip(")")
    assert emu.record("accounts", record_id)["name"] == "Contoso"
    rich = api.call("POST", "accounts?$select=name", json={"name": "Fabrikam"}, prefer="return=representation")
    assert rich.status_code == 201 and "OData-EntityId" not in rich.headers
    body = rich.json()
    assert body["name"] == "Fabrikam" and body["@odata.etag"].startswith('W/"')
    assert body["@odata.context"].endswith("$metadata#accounts/$entity")
    assert emu.counters()["tables"]["accounts"]["creates"] == 2


def test_upsert_by_alternate_key(emu: DataverseEmulator, api: Api) -> None:
    key_url = "opportunities(new_referralidentifier='REF-1')"
    created = api.call("PATCH", key_url, json={"name": "First", "new_referralidentifier": "ignored"})
    assert created.status_code == 204 and "OData-EntityId" in created.headers
    updated = api.call("PATCH", key_url, json={"name": "Second"})
    assert updated.status_code == 204
    rows = emu.table("opportunities")
    assert len(rows) == 1 and rows[0]["name"] == "Second"
    assert rows[0]["new_referralidentifier"] == "REF-1"  # the key comes from the URL, the body's is dropped
    counters = emu.counters()["tables"]["opportunities"]
    assert (counters["creates"], counters["updates"]) == (1, 1)

    exists = api.call("PATCH", key_url, json={"name": "Third"}, headers={"If-None-Match": "*"})
    assert exists.status_code == 412
    assert _error(exists)["message"] == "A record with matching key values already exists."
    missing = api.call(
        "PATCH", "opportunities(new_referralidentifier='REF-2')", json={"name": "x"}, headers={"If-Match": "*"}
    )
    assert missing.status_code == 404 and _error(missing)["code"] == "0x80040217"
    assert len(emu.table("opportunities")) == 1

    rep_create = api.call(
        "PATCH", "opportunities(new_referralidentifier='REF-3')", json={"name": "Rep"}, prefer="return=representation"
    )
    assert rep_create.status_code == 201 and rep_create.json()["new_referralidentifier"] == "REF-3"
    rep_update = api.call(
        "PATCH", "opportunities(new_referralidentifier='ref-3')", json={"name": "Rep 2"}, prefer="return=representation"
    )
    assert rep_update.status_code == 200 and rep_update.json()["name"] == "Rep 2"
    assert rep_update.headers["ETag"] == rep_update.json()["@odata.etag"]


def test_get_by_id_and_by_alternate_key(emu: DataverseEmulator, api: Api) -> None:
    row = emu.seed("opportunities", {"name": "Quoted", "new_referralidentifier": "it's 1"})[0]
    by_key = api.call("GET", "opportunities(new_referralidentifier='it%27%27s%201')?$select=name")
    assert by_key.status_code == 200 and by_key.json()["opportunityid"] == row["opportunityid"]
    assert set(by_key.json()) == {"@odata.context", "@odata.etag", "name", "opportunityid"}
    by_id = api.call("GET", f"opportunities({row['opportunityid']})")
    assert by_id.status_code == 200 and by_id.json()["name"] == "Quoted"
    unchanged = api.call("GET", f"opportunities({row['opportunityid']})", headers={"If-None-Match": row["@odata.etag"]})
    assert unchanged.status_code == 304
    missing = api.call("GET", f"opportunities({uuid.uuid4()})")
    assert missing.status_code == 404 and _error(missing)["code"] == "0x80040217"
    missing_key = api.call("GET", "opportunities(new_referralidentifier='nope')")
    assert missing_key.status_code == 404 and _error(missing_key)["code"] == "0x80040217"
    not_a_key = api.call("GET", "opportunities(name='Quoted')")
    assert not_a_key.status_code == 400 and "key in the request URI is not valid" in _error(not_a_key)["message"]


def test_expand_reads_the_account_and_contact_in_the_same_request(emu: DataverseEmulator, api: Api) -> None:
    account = emu.seed("accounts", {"name": "Contoso", "address1_city": "Redmond"})[0]
    contact = emu.seed("contacts", {"firstname": "Ada", "lastname": "Lovelace"})[0]
    row = emu.seed(
        "opportunities",
        {"name": "Deal", "_customerid_value": account["accountid"], "_parentcontactid_value": contact["contactid"]},
    )[0]
    path = f"opportunities({row['opportunityid']})?$select=name"
    expanded = api.call(
        "GET", path + "&$expand=customerid_account($select=name,address1_city),parentcontactid($select=lastname)"
    ).json()
    assert {k: v for k, v in expanded["customerid_account"].items() if not k.startswith("@")} == {
        "accountid": account["accountid"],
        "name": "Contoso",
        "address1_city": "Redmond",
    }
    assert expanded["parentcontactid"]["lastname"] == "Lovelace"
    # A customer that is a contact is not an account: that navigation property expands to null.
    by_contact = emu.seed("opportunities", {"name": "Deal 2", "_customerid_value": contact["contactid"]})[0]
    other = api.call("GET", f"opportunities({by_contact['opportunityid']})?$expand=customerid_account($select=name)")
    assert other.json()["customerid_account"] is None
    unknown = api.call("GET", path + "&$expand=nosuchnav")
    assert unknown.status_code == 400 and "nosuchnav" in _error(unknown)["message"]
    nested = api.call("GET", path + "&$expand=customerid_account($filter=name eq 'x')")
    assert nested.status_code == 400 and "$filter" in _error(nested)["message"]


def test_if_match_etag_mismatch_gives_412_and_versions_increase(emu: DataverseEmulator, api: Api) -> None:
    first = api.call("POST", "accounts", json={"name": "A"}, prefer="return=representation").json()
    second = api.call("POST", "contacts", json={"lastname": "B"}, prefer="return=representation").json()
    assert second["versionnumber"] > first["versionnumber"]
    assert first["@odata.etag"] == f'W/"{first["versionnumber"]}"'
    path = f"accounts({first['accountid']})"
    ok = api.call("PATCH", path, json={"name": "A2"}, headers={"If-Match": first["@odata.etag"]})
    assert ok.status_code == 204
    stale = api.call("PATCH", path, json={"name": "A3"}, headers={"If-Match": first["@odata.etag"]})
    assert stale.status_code == 412
    assert _error(stale)["message"] == (
        "The version of the existing record doesn't match the RowVersion property provided."
    )
    assert emu.record("accounts", first["accountid"])["name"] == "A2"
    row = emu.record("accounts", first["accountid"])
    assert row["versionnumber"] > second["versionnumber"] and row["modifiedon"].endswith("Z")


def test_bind_resolution_and_missing_target(emu: DataverseEmulator, api: Api) -> None:
    account = emu.seed("accounts", {"name": "Contoso"})[0]
    contact = emu.seed("contacts", {"firstname": "Ada", "lastname": "Lovelace"})[0]
    eur = next(c for c in emu.table("transactioncurrencies") if c["isocurrencycode"] == "EUR")
    body = {
        "name": "Deal",
        "customerid_account@odata.bind": f"/accounts({account['accountid']})",
        "parentaccountid@odata.bind": f"accounts({account['accountid']})",
        "parentcontactid@odata.bind": f"/contacts({contact['contactid']})",
        "transactioncurrencyid@odata.bind": f"/transactioncurrencies({eur['transactioncurrencyid']})",
    }
    created = api.call(
        "POST", "opportunities", json=body, prefer='return=representation,odata.include-annotations="*"'
    ).json()
    assert created["_customerid_value"] == account["accountid"]
    assert created["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    assert created["_parentaccountid_value"] == account["accountid"]
    assert created["_parentcontactid_value"] == contact["contactid"]
    assert created["_transactioncurrencyid_value"] == eur["transactioncurrencyid"]
    path = f"opportunities({created['opportunityid']})"
    switched = api.call(
        "PATCH",
        path,
        json={"customerid_contact@odata.bind": f"/contacts({contact['contactid']})"},
        prefer='return=representation,odata.include-annotations="*"',
    ).json()
    assert switched["_customerid_value"] == contact["contactid"]
    assert switched["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    parent = f"/accounts({account['accountid']})"
    linked = api.call(
        "POST",
        "contacts",
        prefer="return=representation",
        json={"lastname": "Hopper", "parentcustomerid_account@odata.bind": parent},
    )
    assert linked.json()["_parentcustomerid_value"] == account["accountid"]

    missing = api.call("PATCH", path, json={"parentaccountid@odata.bind": f"/accounts({uuid.uuid4()})"})
    assert missing.status_code == 400 and "Does Not Exist" in _error(missing)["message"]
    direct = api.call("PATCH", path, json={"_parentaccountid_value": account["accountid"]})
    assert direct.status_code == 400
    cleared = api.call("PATCH", path, json={"parentaccountid@odata.bind": None}, prefer="return=representation")
    assert cleared.json()["_parentaccountid_value"] is None


def test_schema_validation(emu: DataverseEmulator, api: Api) -> None:
    assert api.call("POST", "opportunities", json={"nosuch": 1}).status_code == 400
    assert api.call("POST", "opportunities", json={"new_howcanmicrosofthelp": 7}).status_code == 400
    assert api.call("POST", "opportunities", json={"new_howcanmicrosofthelp": 100000002}).status_code == 204
    assert api.call("POST", "opportunities", json={"estimatedclosedate": "2025-06-30T00:00:00Z"}).status_code == 400
    assert api.call("POST", "opportunities", json={"estimatedvalue": "12"}).status_code == 400
    assert (
        api.call("POST", "opportunities", data=b"{not json", headers={"Content-Type": "application/json"}).status_code
        == 400
    )


def test_win_lose_and_closed_rows_are_read_only(emu: DataverseEmulator, api: Api) -> None:
    opportunity = emu.seed("opportunities", {"name": "Deal", "estimatedvalue": 5000})[0]
    opp_id = opportunity["opportunityid"]
    path = f"opportunities({opp_id})"
    assert emu.record("opportunities", opp_id)["statuscode"] == 1
    direct = api.call("PATCH", path, json={"statecode": 1, "statuscode": 3})
    assert direct.status_code == 400 and "WinOpportunity" in _error(direct)["message"]
    assert api.call("PATCH", path, json={"statuscode": 3}).status_code == 400  # not valid while open
    assert api.call("PATCH", path, json={"statuscode": 2}).status_code == 204
    close = {"subject": "Won", "opportunityid@odata.bind": f"/opportunities({opp_id})"}
    assert api.call("POST", "WinOpportunity", json={"Status": 4, "OpportunityClose": close}).status_code == 400
    won = api.call("POST", "WinOpportunity", json={"Status": 3, "OpportunityClose": close})
    assert won.status_code == 204
    row = emu.record("opportunities", opp_id)
    assert (row["statecode"], row["statuscode"], row["actualvalue"]) == (1, 3, 5000.0)
    assert row["actualclosedate"] is not None
    assert emu.table("opportunitycloses")[0]["_opportunityid_value"] == opp_id

    read_only = api.call("PATCH", path, json={"name": "Renamed"})
    assert read_only.status_code == 400 and "read-only" in _error(read_only)["message"]
    assert api.call("POST", "LoseOpportunity", json={"Status": 5, "OpportunityClose": close}).status_code == 400
    assert api.call("PATCH", path, json={"statecode": 0, "statuscode": 1}).status_code == 204
    assert api.call("PATCH", path, json={"name": "Renamed"}).status_code == 204
    lost = api.call("POST", "LoseOpportunity", json={"Status": 5, "OpportunityClose": close})
    assert lost.status_code == 204
    assert (emu.record("opportunities", opp_id)["statecode"], emu.record("opportunities", opp_id)["statuscode"]) == (
        2,
        5,
    )
    missing = {"subject": "x", "opportunityid@odata.bind": f"/opportunities({uuid.uuid4()})"}
    assert api.call("POST", "LoseOpportunity", json={"Status": 4, "OpportunityClose": missing}).status_code == 400
    counters = emu.counters()
    assert counters["actions"] == {"WinOpportunity": 1, "LoseOpportunity": 1}
    assert counters["tables"]["opportunities"]["actions"] == 2


def test_the_request_limit_refusal_names_the_limit_and_its_window(emu: DataverseEmulator, api: Api) -> None:
    emu.set_request_limit(2, 30.0)
    try:
        assert [api.call("GET", "accounts").status_code for _ in range(2)] == [200, 200]
        refused = api.call("GET", "accounts")
    finally:
        emu.set_request_limit(None)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 30
    assert _error(refused)["code"] == "0x80072322"
    assert _error(refused)["message"] == "Number of requests exceeded the limit of 2 over time window of 30 seconds."


def test_fault_injection_429_and_503(emu: DataverseEmulator, api: Api) -> None:
    emu.inject_fault(429, count=2, retry_after=7, method="GET", path=r"/accounts")
    assert api.call("GET", "contacts").status_code == 200  # path does not match
    assert api.call("POST", "accounts", json={"name": "x"}).status_code == 204  # method does not match
    for _ in range(2):
        throttled = api.call("GET", "accounts")
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
        assert _error(throttled)["code"] == "0x80072321"
        assert "Combined execution time" in _error(throttled)["message"]
    assert api.call("GET", "accounts").status_code == 200
    emu.inject_fault(503, retry_after=3)
    unavailable = api.call("GET", "accounts")
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "3"
    assert emu.counters()["faults"] == 3


def test_control_routes_over_http(emu: DataverseEmulator) -> None:
    base = f"{emu.url}/_emulator"
    seeded = requests.post(f"{base}/seed/accounts", json=[{"name": "One"}, {"name": "Two"}], timeout=5)
    assert seeded.status_code == 201 and len(seeded.json()["value"]) == 2
    assert [r["name"] for r in requests.get(f"{base}/tables/accounts", timeout=5).json()["value"]].count("One") == 1
    assert requests.post(f"{base}/faults", json={"status": 503, "retryAfter": 1}, timeout=5).status_code == 204
    assert Api(emu).call("GET", "accounts").status_code == 503
    Api(emu).call(
        "PATCH",
        "accounts(" + seeded.json()["value"][0]["accountid"] + ")",
        json={"name": "Uno"},
        headers={"If-Match": "*"},
    )
    writes = requests.get(f"{base}/writes", timeout=5).json()["value"]
    assert writes[-1]["operation"] == "update" and writes[-1]["columns"] == ["name"]
    assert writes[-1]["if_match"] == "*"
    counters = requests.get(f"{base}/counters", timeout=5).json()
    assert counters["tables"]["accounts"]["updates"] == 1 and counters["faults"] == 1
    assert requests.post(f"{base}/reset", timeout=5).status_code == 204
    assert requests.get(f"{base}/tables/accounts", timeout=5).json()["value"] == []
    assert len(requests.get(f"{base}/tables/transactioncurrencies", timeout=5).json()["value"]) == 6
