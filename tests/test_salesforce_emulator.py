"""The Salesforce emulator over real HTTP: OAuth grants, SOQL, sObject rows, upsert, collections, limits."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from emulators.salesforce.emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SalesforceEmulator

V = "v62.0"
REF = "Referral_Identfier__c"
HELP = "How_can_Microsoft_help__c"
SYNC = "Sync_with_Partner_Center__c"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cosell-connector")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@pytest.fixture
def emu(salesforce_server: SalesforceEmulator) -> SalesforceEmulator:
    server = salesforce_server
    server.reset()
    server.upsert_update_status = 200
    server.query_batch_size, server.min_batch_size = 2000, 200
    return server


class Api:
    def __init__(self, emulator: SalesforceEmulator) -> None:
        self.emulator = emulator
        self.base = f"{emulator.url}/services/data/{V}"
        self.token = emulator.issue_token()

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        url = path if path.startswith("http") else f"{self.emulator.url}{path}" if path.startswith("/") else None
        return requests.request(method, url or f"{self.base}/{path}", headers=sent, timeout=5, **kwargs)

    def query(self, soql: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.call("GET", "query", headers=headers, params={"q": soql})

    def names(self, soql: str) -> list[str]:
        response = self.query(soql)
        assert response.status_code == 200, response.text
        return [record["Name"] for record in response.json()["records"]]


@pytest.fixture
def api(emu: SalesforceEmulator) -> Api:
    return Api(emu)


def _opportunity(name: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "StageName": "Prospecting", "CloseDate": "2025-06-30", **extra}


def _error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, list) and len(body) == 1, body
    return body[0]


# -- OAuth ------------------------------------------------------------------------------------------------------------
def test_client_credentials_grant_with_form_or_basic_auth_and_bad_secrets_refused(emu: SalesforceEmulator) -> None:
    url = f"{emu.url}/services/oauth2/token"
    form = {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    response = requests.post(url, data=form, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert {"access_token", "instance_url", "id", "token_type", "issued_at", "scope"} <= set(body)
    assert body["instance_url"] == emu.url and body["token_type"] == "Bearer"
    api_call = requests.get(
        f"{emu.url}/services/data/{V}/limits", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=5
    )
    assert api_call.status_code == 200

    basic = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    response = requests.post(
        url, data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}, timeout=5
    )
    assert response.status_code == 200

    refused = requests.post(url, data={**form, "client_secret": "wrong"}, timeout=5)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_client"
    unknown = requests.post(url, data={**form, "client_id": "nobody"}, timeout=5)
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_client_id"
    grant = requests.post(url, data={**form, "grant_type": "password"}, timeout=5)
    assert grant.json()["error"] == "unsupported_grant_type"
    assert requests.post(url, json=form, timeout=5).json()["error"] == "invalid_request"
    assert emu.counters()["tokenRequests"] == {"client_credentials": 2, "jwt_bearer": 0, "refused": 4}


def _assertion(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    payload = {"iss": "jwt-app", "sub": "sync@contoso.example", "aud": "https://login.salesforce.com"}
    payload["exp"] = int(time.time()) + 180
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256")


def test_jwt_bearer_grant_checks_signature_issuer_audience_subject_and_expiry(emu: SalesforceEmulator) -> None:
    emu.register_jwt_key("jwt-app", _certificate(KEY), ["sync@contoso.example"])
    url = f"{emu.url}/services/oauth2/token"

    def post(assertion: str) -> requests.Response:
        data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        return requests.post(url, data=data, timeout=5)

    ok = post(_assertion(KEY))
    assert ok.status_code == 200, ok.text
    assert ok.json()["instance_url"] == emu.url and "signature" not in ok.json()
    assert post(_assertion(KEY, aud=emu.url)).status_code == 200  # the emulator's own host is an audience too

    refusals = {
        "bad signature": (_assertion(OTHER_KEY), "invalid assertion"),
        "unknown issuer": (_assertion(KEY, iss="other-app"), "client identifier invalid"),
        "wrong audience": (_assertion(KEY, aud="https://example.com"), "audience is invalid"),
        "not pre-authorised": (_assertion(KEY, sub="intruder@contoso.example"), "user hasn't approved this consumer"),
        "expired": (_assertion(KEY, exp=int(time.time()) - 60), "expired assertion"),
        "no exp": (_assertion(KEY, exp=None), "invalid assertion"),
        "HS256": (jwt.encode({"iss": "jwt-app"}, "k" * 32, algorithm="HS256"), "invalid assertion: the signing"),
        "garbage": ("not-a-jwt", "invalid assertion"),
    }
    for case, (assertion, description) in refusals.items():
        response = post(assertion)
        assert response.status_code == 400, case
        assert response.json()["error_description"].startswith(description), case
    emu.register_jwt_key(
        "jwt-app",
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        ["sync@contoso.example"],
    )
    assert post(_assertion(KEY)).status_code == 200  # a bare public key works as well as a certificate
    assert emu.counters()["tokenRequests"]["jwt_bearer"] == 3


def test_forced_session_expiry_answers_invalid_session_id(emu: SalesforceEmulator, api: Api) -> None:
    assert api.call("GET", "limits").status_code == 200
    emu.expire_sessions()
    response = api.call("GET", "limits")
    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}
    ]
    assert "Sforce-Limit-Info" not in response.headers
    assert requests.get(f"{api.base}/limits", timeout=5).status_code == 401  # no token at all
    assert emu.counters()["sessionRefusals"] == 2


# -- SOQL -------------------------------------------------------------------------------------------------------------
def test_soql_pages_with_next_records_url_and_batch_size(emu: SalesforceEmulator, api: Api) -> None:
    emu.seed("Opportunity", [_opportunity(f"Opp {i:03d}") for i in range(450)])
    headers = {"Sforce-Query-Options": "batchSize=200"}
    response = api.query("SELECT Id, Name FROM Opportunity ORDER BY Name", headers)
    names, pages = [], 0
    while True:
        assert response.status_code == 200
        body = response.json()
        assert body["totalSize"] == 450
        names += [r["Name"] for r in body["records"]]
        pages += 1
        if body["done"]:
            assert "nextRecordsUrl" not in body
            break
        assert body["nextRecordsUrl"].startswith(f"/services/data/{V}/query/01g")
        assert body["nextRecordsUrl"].endswith(f"-{200 * pages}")
        response = api.call("GET", body["nextRecordsUrl"], headers)
    assert pages == 3 and names == [f"Opp {i:03d}" for i in range(450)]
    assert api.query("SELECT Id FROM Opportunity").json()["done"] is True  # default batch 2000
    small = api.query("SELECT Id FROM Opportunity", {"Sforce-Query-Options": "batchSize=5"}).json()
    assert len(small["records"]) == 200  # sizes below 200 are raised to the minimum
    emu.query_batch_size = 100
    assert len(api.query("SELECT Id FROM Opportunity").json()["records"]) == 100
    assert api.call("GET", f"/services/data/{V}/query/01gdoesnotexist-200").status_code == 400


def test_soql_datetime_and_date_literals_are_unquoted(emu: SalesforceEmulator, api: Api) -> None:
    emu.seed(
        "Opportunity",
        [
            _opportunity("early", SystemModstamp="2024-05-01T09:59:59.000+0000", CloseDate="2024-05-31"),
            _opportunity("edge", SystemModstamp="2024-05-01T10:00:00.000+0000", CloseDate="2024-06-01"),
            _opportunity("late", SystemModstamp="2024-05-01T10:00:00.500+0000", CloseDate="2024-07-01"),
        ],
    )
    assert api.names("SELECT Name FROM Opportunity WHERE SystemModstamp >= 2024-05-01T10:00:00Z ORDER BY Name") == [
        "edge",
        "late",
    ]
    assert api.names("SELECT Name FROM Opportunity WHERE SystemModstamp > 2024-05-01T12:00:00+02:00") == ["late"]
    assert api.names("SELECT Name FROM Opportunity WHERE CloseDate < 2024-06-01") == ["early"]
    stamp = api.query("SELECT SystemModstamp FROM Opportunity WHERE Name = 'late'").json()["records"][0]
    assert stamp["SystemModstamp"] == "2024-05-01T10:00:00.500+0000"
    for bad in (
        "SELECT Name FROM Opportunity WHERE SystemModstamp >= '2024-05-01T10:00:00Z'",
        "SELECT Name FROM Opportunity WHERE SystemModstamp >= 2024-05-01",
        "SELECT Name FROM Opportunity WHERE CloseDate = 2024-05-01T10:00:00Z",
    ):
        response = api.query(bad)
        assert response.status_code == 400 and _error(response)["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"


def test_soql_operators_relationships_ordering_and_errors(emu: SalesforceEmulator, api: Api) -> None:
    account = emu.seed("Account", {"Name": "Contoso", "BillingPostalCode": "98052"})[0]
    emu.seed(
        "Opportunity",
        [
            _opportunity("Alpha", Amount=100, AccountId=account["Id"], **{REF: "ref-1", SYNC: True}),
            _opportunity("Beta", Amount=200, **{REF: "ref-2"}),
            _opportunity("Gamma 50%", Amount=300, StageName="Closed Won", **{REF: "it's"}),
        ],
    )
    names = api.names
    assert names("SELECT Name FROM Opportunity WHERE Name = 'ALPHA'") == ["Alpha"]  # text ignores case
    assert names(f"SELECT Name FROM Opportunity WHERE {REF} = 'it\\'s'") == ["Gamma 50%"]
    assert names(f"SELECT Name FROM Opportunity WHERE {REF} IN ('ref-1', 'REF-2') ORDER BY Name DESC") == [
        "Beta",
        "Alpha",
    ]
    assert names(f"SELECT Name FROM Opportunity WHERE {REF} NOT IN ('ref-1', 'ref-2')") == ["Gamma 50%"]
    assert names("SELECT Name FROM Opportunity WHERE Name LIKE '%50\\%'") == ["Gamma 50%"]
    assert names("SELECT Name FROM Opportunity WHERE Name LIKE 'b_ta'") == ["Beta"]
    assert names("SELECT Name FROM Opportunity WHERE NOT Amount > 100") == ["Alpha"]
    assert names("SELECT Name FROM Opportunity WHERE (Amount <= 100 OR Amount >= 300) AND IsWon = false") == ["Alpha"]
    assert names(f"SELECT Name FROM Opportunity WHERE {SYNC} = true AND AccountId != null") == ["Alpha"]
    assert names("SELECT Name FROM Opportunity WHERE Account.Name = 'contoso'") == ["Alpha"]
    assert names("SELECT Name FROM Opportunity ORDER BY IsClosed DESC, Amount DESC LIMIT 2") == ["Gamma 50%", "Beta"]
    assert names("SELECT Name FROM Opportunity ORDER BY Amount LIMIT 1 OFFSET 1") == ["Beta"]
    # Nulls sort first ascending and last descending unless NULLS FIRST / LAST says otherwise.
    assert names("SELECT Name FROM Opportunity ORDER BY AccountId, Name")[0] == "Beta"
    assert names("SELECT Name FROM Opportunity ORDER BY AccountId DESC, Name")[0] == "Alpha"
    assert names("SELECT Name FROM Opportunity ORDER BY AccountId NULLS LAST, Name")[0] == "Alpha"
    rows = api.query("SELECT Name, Account.Name, Account.BillingPostalCode FROM Opportunity ORDER BY Name").json()
    assert rows["records"][0]["Account"]["Name"] == "Contoso"
    assert rows["records"][0]["Account"]["attributes"]["type"] == "Account"
    assert rows["records"][1]["Account"] is None
    assert set(rows["records"][0]) == {"attributes", "Name", "Account"}

    errors = {
        "SELECT Name FROM Opportunity WHERE Amount > 1 AND Amount < 5 OR Amount = 3": "MALFORMED_QUERY",
        "SELECT Name FROM Opportunity WHERE": "MALFORMED_QUERY",
        "SELECT Nope FROM Opportunity": "INVALID_FIELD",
        "SELECT Name FROM Nothing": "INVALID_TYPE",
        "SELECT Name FROM Opportunity WHERE Amount = 'x'": "INVALID_QUERY_FILTER_OPERATOR",
        "SELECT Name FROM Opportunity WHERE Audit__c = 'x'": "INVALID_FIELD",  # long text cannot be filtered
        "SELECT Name FROM Opportunity WHERE Name = 'unterminated": "MALFORMED_QUERY",
    }
    for soql, code in errors.items():
        response = api.query(soql)
        assert response.status_code == 400, soql
        assert _error(response)["errorCode"] == code, soql


# -- sObject rows -----------------------------------------------------------------------------------------------------
def test_sobject_crud_maintains_system_fields(emu: SalesforceEmulator, api: Api) -> None:
    created = api.call("POST", "sobjects/Opportunity", json=_opportunity("Deal", Amount=10.5))
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True and body["errors"] == []
    record_id = body["id"]
    assert record_id.startswith("006") and len(record_id) == 18
    first = api.call("GET", f"sobjects/Opportunity/{record_id}").json()
    assert first["attributes"] == {"type": "Opportunity", "url": f"/services/data/{V}/sobjects/Opportunity/{record_id}"}
    assert first["SystemModstamp"].endswith("+0000") and first["CreatedDate"] == first["SystemModstamp"]
    assert first["IsDeleted"] is False and first["CurrencyIsoCode"] == "USD" and first[SYNC] is False
    partial = api.call("GET", f"sobjects/Opportunity/{record_id[:15]}", params={"fields": "Name,amount"}).json()
    assert set(partial) == {"attributes", "Name", "Amount"}

    stamps = [first["SystemModstamp"]]
    for amount in (11, 12):
        assert api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"Amount": amount}).status_code == 204
        stamps.append(api.call("GET", f"sobjects/Opportunity/{record_id}").json()["SystemModstamp"])
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # strictly increasing
    after = api.call("GET", f"sobjects/Opportunity/{record_id}").json()
    assert after["CreatedDate"] == first["CreatedDate"] and after["LastModifiedDate"] == after["SystemModstamp"]

    assert api.call("DELETE", f"sobjects/Opportunity/{record_id}").status_code == 204
    missing = api.call("GET", f"sobjects/Opportunity/{record_id}")
    assert missing.status_code == 404 and _error(missing)["errorCode"] == "NOT_FOUND"
    assert api.query("SELECT Id FROM Opportunity").json()["totalSize"] == 0
    deleted = api.call("GET", "queryAll", params={"q": "SELECT Id, IsDeleted FROM Opportunity"}).json()
    assert deleted["records"][0]["IsDeleted"] is True
    counts = emu.counters()["objects"]["Opportunity"]
    assert (counts["creates"], counts["updates"], counts["deletes"]) == (1, 2, 1)
    assert [w["operation"] for w in emu.writes()] == ["create", "update", "update", "delete"]


def test_system_modstamp_is_strictly_increasing_even_when_the_clock_stands_still() -> None:
    frozen = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    with SalesforceEmulator(clock=lambda: frozen) as emulator:
        assert isinstance(emulator, SalesforceEmulator)
        api = Api(emulator)
        record_id = api.call("POST", "sobjects/Opportunity", json=_opportunity("x")).json()["id"]
        for amount in (1, 2):
            api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"Amount": amount})
        other = api.call("POST", "sobjects/Account", json={"Name": "A"}).json()["id"]
        stamps = [
            api.call("GET", f"sobjects/Opportunity/{record_id}").json()["CreatedDate"],
            api.call("GET", f"sobjects/Opportunity/{record_id}").json()["SystemModstamp"],
            api.call("GET", f"sobjects/Account/{other}").json()["SystemModstamp"],
        ]
        assert stamps == [
            "2024-05-01T10:00:00.000+0000",
            "2024-05-01T10:00:00.002+0000",
            "2024-05-01T10:00:00.003+0000",
        ]


def test_stage_table_derives_is_closed_and_is_won() -> None:
    stages = {"Open": (False, False), "Signed": (True, True), "Gone": (True, False)}
    with SalesforceEmulator(stages=stages) as emulator:
        assert isinstance(emulator, SalesforceEmulator)
        api = Api(emulator)
        record_id = api.call("POST", "sobjects/Opportunity", json=_opportunity("x", StageName="Open")).json()["id"]
        flags = []
        for stage in ("Signed", "Gone", "Open"):
            api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"StageName": stage})
            row = api.call("GET", f"sobjects/Opportunity/{record_id}").json()
            flags.append((row["IsClosed"], row["IsWon"]))
        assert flags == [(True, True), (True, False), (False, False)]
        refused = api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"StageName": "Closed Won"})
        assert _error(refused)["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        readonly = api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"IsWon": True})
        assert readonly.status_code == 400
        assert _error(readonly) | {"message": ""} == {
            "message": "",
            "errorCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
            "fields": ["IsWon"],
        }


def test_required_fields_and_restricted_picklists(emu: SalesforceEmulator, api: Api) -> None:
    missing = api.call("POST", "sobjects/Opportunity", json={"Name": "x"})
    assert missing.status_code == 400
    assert _error(missing)["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert _error(missing)["fields"] == ["StageName", "CloseDate"]
    cases = {
        "StageName": "Almost won",
        HELP: "Coffee",
        "CurrencyIsoCode": "XYZ",
    }
    for field, value in cases.items():
        response = api.call("POST", "sobjects/Opportunity", json=_opportunity("x", **{field: value}))
        assert response.status_code == 400, field
        assert _error(response)["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", field
        assert _error(response)["fields"] == [field]
    ok = _opportunity("x", **{HELP: "Proof of concept or demo", "CurrencyIsoCode": "EUR"})
    record_id = api.call("POST", "sobjects/Opportunity", json=ok).json()["id"]
    cleared = api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"CloseDate": None})
    assert _error(cleared)["errorCode"] == "REQUIRED_FIELD_MISSING"
    other = {
        "Bogus__c": "INVALID_FIELD",
        "Amount": "JSON_PARSER_ERROR",
        "CloseDate": "JSON_PARSER_ERROR",
        "AccountId": "MALFORMED_ID",
        "Name": "STRING_TOO_LONG",
    }
    values = {"Bogus__c": 1, "Amount": "lots", "CloseDate": "June", "AccountId": "nope", "Name": "n" * 121}
    for field, code in other.items():
        response = api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={field: values[field]})
        assert _error(response)["errorCode"] == code, field
    contact = api.call("POST", "sobjects/Contact", json={"FirstName": "Ann", "Email": "ann@contoso.example"})
    assert _error(contact)["errorCode"] == "REQUIRED_FIELD_MISSING"
    wrong_kind = api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"AccountId": record_id})
    assert _error(wrong_kind)["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    assert emu.counters()["objects"]["Opportunity"]["updates"] == 0


def test_upsert_by_external_id_answers_201_200_204_and_300(emu: SalesforceEmulator, api: Api) -> None:
    path = f"sobjects/Opportunity/{REF}/ref-1"
    created = api.call("PATCH", path, json=_opportunity("Deal"))
    assert created.status_code == 201
    assert created.json() == {"id": created.json()["id"], "success": True, "errors": [], "created": True}
    record_id = created.json()["id"]
    assert emu.record("Opportunity", record_id)[REF] == "ref-1"

    updated = api.call("PATCH", f"sobjects/Opportunity/{REF}/REF-1", json={"Amount": 5})  # case-insensitive match
    assert updated.status_code == 200
    assert updated.json() == {"id": record_id, "success": True, "errors": [], "created": False}
    emu.upsert_update_status = 204
    again = api.call("PATCH", path, json={"Amount": 6})
    assert again.status_code == 204 and again.content == b""
    assert emu.record("Opportunity", record_id)["Amount"] == 6
    assert api.call("GET", f"sobjects/Opportunity/{REF}/ref-1").json()["Id"] == record_id

    twin = emu.seed("Opportunity", _opportunity("Twin", **{REF: "Ref-1"}))[0]["Id"]
    before = emu.writes()
    duplicates = api.call("PATCH", path, json={"Amount": 7})
    assert duplicates.status_code == 300
    assert sorted(duplicates.json()) == sorted(
        f"/services/data/{V}/sobjects/Opportunity/{i}" for i in (record_id, twin)
    )
    assert emu.writes() == before and emu.record("Opportunity", record_id)["Amount"] == 6

    in_body = api.call("PATCH", f"sobjects/Opportunity/{REF}/ref-9", json={REF: "ref-9", "Name": "x"})
    assert in_body.status_code == 400 and _error(in_body)["errorCode"] == "INVALID_FIELD"
    with_id = api.call("PATCH", f"sobjects/Opportunity/{REF}/ref-9", json={"Id": record_id})
    assert with_id.status_code == 400
    for field in ("No_Such_Field__c", "Name"):
        bad_field = api.call("PATCH", f"sobjects/Opportunity/{field}/ref-9", json={"Amount": 1})
        assert bad_field.status_code == 404 and _error(bad_field)["errorCode"] == "NOT_FOUND"
    encoded = api.call("PATCH", f"sobjects/Opportunity/{REF}/a%2Fb%20c", json=_opportunity("Slash"))
    assert encoded.status_code == 201
    assert emu.record("Opportunity", encoded.json()["id"])[REF] == "a/b c"


def test_if_unmodified_since_guards_patch(emu: SalesforceEmulator, api: Api) -> None:
    record = emu.seed("Opportunity", _opportunity("Deal", SystemModstamp="2024-05-01T10:00:00.250+0000", **{REF: "r"}))
    record_id = record[0]["Id"]
    stale = {"If-Unmodified-Since": "Wed, 01 May 2024 09:59:59 GMT"}
    same_second = {"If-Unmodified-Since": "Wed, 01 May 2024 10:00:00 GMT"}
    refused = api.call("PATCH", f"sobjects/Opportunity/{record_id}", stale, json={"Amount": 1})
    assert refused.status_code == 412 and _error(refused)["errorCode"] == "PRECONDITION_FAILED"
    upsert_refused = api.call("PATCH", f"sobjects/Opportunity/{REF}/r", stale, json={"Amount": 1})
    assert upsert_refused.status_code == 412
    assert emu.counters()["objects"]["Opportunity"]["updates"] == 0
    assert api.call("PATCH", f"sobjects/Opportunity/{record_id}", same_second, json={"Amount": 2}).status_code == 204
    assert emu.writes()[-1]["ifUnmodifiedSince"] == same_second["If-Unmodified-Since"]
    invalid = api.call("PATCH", f"sobjects/Opportunity/{record_id}", {"If-Unmodified-Since": "yesterday"}, json={})
    assert invalid.status_code == 400
    modified = {"If-Modified-Since": "Tue, 01 Jan 2099 00:00:00 GMT"}
    assert api.call("GET", f"sobjects/Opportunity/{record_id}", modified).status_code == 304


# -- collections ------------------------------------------------------------------------------------------------------
def test_collections_create_update_and_all_or_none_rollback(emu: SalesforceEmulator, api: Api) -> None:
    def record(name: str, **extra: Any) -> dict[str, Any]:
        return {"attributes": {"type": "Opportunity"}, **_opportunity(name, **extra)}

    mixed = [record("one"), record("bad", StageName="Nope"), {"attributes": {"type": "Account"}, "Name": "Fabrikam"}]
    response = api.call("POST", "composite/sobjects", json={"allOrNone": False, "records": mixed})
    assert response.status_code == 200
    results = response.json()
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert results[1]["id"] is None
    assert len(emu.records("Opportunity")) == 1 and len(emu.records("Account")) == 1

    snapshot = emu.records("Opportunity")
    rolled = api.call("POST", "composite/sobjects", json={"allOrNone": True, "records": [record("two"), record("")]})
    assert [r["success"] for r in rolled.json()] == [False, False]
    assert rolled.json()[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled.json()[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert emu.records("Opportunity") == snapshot
    assert emu.counters()["objects"]["Opportunity"]["creates"] == 1  # rolled-back creates are not counted

    first_id = results[0]["id"]
    update = [
        {"attributes": {"type": "Opportunity"}, "id": first_id, "Amount": 42},
        {"attributes": {"type": "Opportunity"}, "id": first_id, "CloseDate": None},
    ]
    rolled_update = api.call("PATCH", "composite/sobjects", json={"allOrNone": True, "records": update}).json()
    assert rolled_update[0]["id"] == first_id and rolled_update[0]["success"] is False
    assert emu.record("Opportunity", first_id)["Amount"] is None
    partial = api.call("PATCH", "composite/sobjects", json={"allOrNone": False, "records": update}).json()
    assert [r["success"] for r in partial] == [True, False]
    assert emu.record("Opportunity", first_id)["Amount"] == 42

    too_many = api.call("POST", "composite/sobjects", json={"records": [record(f"r{i}") for i in range(201)]})
    assert too_many.status_code == 400 and _error(too_many)["errorCode"] == "EXCEEDED_ID_LIMIT"
    fetched = api.call("GET", "composite/sobjects/Opportunity", params={"ids": first_id, "fields": "Name"}).json()
    assert fetched[0]["Name"] == "one"
    deleted = api.call("DELETE", "composite/sobjects", params={"ids": first_id, "allOrNone": "false"}).json()
    assert deleted[0]["success"] is True and emu.records("Opportunity") == []


def test_collections_upsert_by_external_id(emu: SalesforceEmulator, api: Api) -> None:
    emu.seed("Opportunity", _opportunity("Existing", **{REF: "ref-1"}))

    def record(ref: str, **extra: Any) -> dict[str, Any]:
        return {"attributes": {"type": "Opportunity"}, REF: ref, **extra}

    records = [
        record("REF-1", Amount=10),
        record("ref-2", **_opportunity("New")),
        record("ref-2", Amount=3),
        record("ref-3", Name="incomplete"),
    ]
    response = api.call("PATCH", f"composite/sobjects/Opportunity/{REF}", json={"allOrNone": False, "records": records})
    results = response.json()
    outcomes = [(r["success"], r["created"]) for r in results]
    assert outcomes == [(True, False), (True, True), (False, False), (False, False)]
    assert results[2]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    assert results[3]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sorted(r["Name"] for r in emu.records("Opportunity")) == ["Existing", "New"]
    emu.seed("Opportunity", _opportunity("Twin", **{REF: "ref-2"}))
    twins = api.call(
        "PATCH", f"composite/sobjects/Opportunity/{REF}", json={"records": [record("ref-2", Amount=1)]}
    ).json()
    assert twins[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    bad_field = api.call("PATCH", "composite/sobjects/Opportunity/Name", json={"records": []})
    assert bad_field.status_code == 404


# -- limits, faults, control ------------------------------------------------------------------------------------------
def test_daily_quota_and_sforce_limit_info(emu: SalesforceEmulator, api: Api) -> None:
    emu.set_quota(maximum=3)
    first = api.call("GET", "limits")
    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/3"
    assert first.json()["DailyApiRequests"] == {"Max": 3, "Remaining": 2}
    versions = requests.get(f"{emu.url}/services/data/", timeout=5)
    assert versions.status_code == 200 and "Sforce-Limit-Info" not in versions.headers
    assert any(v["version"] == "62.0" for v in versions.json())
    assert api.query("SELECT Id FROM Opportunity").headers["Sforce-Limit-Info"] == "api-usage=2/3"
    assert api.call("GET", "sobjects/Opportunity/describe").headers["Sforce-Limit-Info"] == "api-usage=3/3"
    for _ in range(2):
        refused = api.call("GET", "limits")
        assert refused.status_code == 403
        assert refused.json() == [
            {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED", "fields": []}
        ]
        assert refused.headers["Sforce-Limit-Info"] == "api-usage=3/3"
    assert emu.counters()["quotaRefusals"] == 2
    emu.restore_quota()
    assert api.call("GET", "limits").status_code == 200
    assert emu.api_usage() == (1, 3)


def test_fault_injection_counters_and_http_control_api(emu: SalesforceEmulator, api: Api) -> None:
    control = f"{emu.url}/_emulator"
    assert requests.post(f"{control}/faults", json={"status": 503, "count": 1, "retryAfter": 2}, timeout=5).ok
    fault = api.call("GET", "limits")
    assert fault.status_code == 503 and fault.headers["Retry-After"] == "2"
    assert _error(fault)["errorCode"] == "SERVER_UNAVAILABLE"
    assert api.call("GET", "limits").status_code == 200

    seeded = requests.post(f"{control}/seed/Account", json=[{"Name": "A"}, {"Name": "B"}], timeout=5)
    assert seeded.status_code == 201 and len(seeded.json()["records"]) == 2
    listed = requests.get(f"{control}/records/Account", timeout=5).json()["records"]
    assert [r["Name"] for r in listed] == ["A", "B"]
    assert requests.post(f"{control}/quota", json={"max": 10, "used": 10}, timeout=5).status_code == 204
    assert requests.get(f"{control}/quota", timeout=5).json() == {"used": 10, "max": 10}
    assert api.call("GET", "limits").status_code == 403
    assert requests.post(f"{control}/quota/restore", timeout=5).status_code == 204
    issued = requests.post(f"{control}/sessions", json={}, timeout=5).json()
    headers = {"Authorization": f"Bearer {issued['access_token']}"}
    assert requests.get(f"{api.base}/limits", headers=headers, timeout=5).status_code == 200
    assert requests.post(f"{control}/sessions/expire", timeout=5).status_code == 204
    assert requests.get(f"{api.base}/limits", headers=headers, timeout=5).status_code == 401
    client = {"clientId": "app-2", "clientSecret": "s2"}
    assert requests.post(f"{control}/clients", json=client, timeout=5).status_code == 204
    token = requests.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "app-2", "client_secret": "s2"},
        timeout=5,
    )
    assert token.status_code == 200
    assert requests.post(f"{control}/config", json={"upsertUpdateStatus": 204}, timeout=5).status_code == 204
    assert emu.upsert_update_status == 204
    counters = requests.get(f"{control}/counters", timeout=5).json()
    assert counters["faults"] == 1 and counters["objects"]["Account"]["creates"] == 0  # seeds are not counted
    assert counters["tokenRequests"]["client_credentials"] == 1
    requests_seen = requests.get(f"{control}/requests", timeout=5).json()["requests"]
    assert ["GET", f"/services/data/{V}/limits"] in requests_seen
    assert requests.post(f"{control}/reset", timeout=5).status_code == 204
    assert emu.records("Account") == [] and emu.counters()["requests"] == 0


def test_contact_roles_keep_one_primary_per_opportunity(emu: SalesforceEmulator, api: Api) -> None:
    opportunity = emu.seed("Opportunity", _opportunity("Deal"))[0]["Id"]
    contacts = [api.call("POST", "sobjects/Contact", json={"LastName": n}).json()["id"] for n in ("A", "B")]
    for contact_id in contacts:
        role = {"OpportunityId": opportunity, "ContactId": contact_id, "IsPrimary": True}
        assert api.call("POST", "sobjects/OpportunityContactRole", json=role).status_code == 201
    primaries = api.query(
        "SELECT Contact.LastName FROM OpportunityContactRole WHERE IsPrimary = true AND OpportunityId = "
        f"'{opportunity}'"
    ).json()["records"]
    assert [r["Contact"]["LastName"] for r in primaries] == ["B"]
    dangling = api.call(
        "POST", "sobjects/OpportunityContactRole", json={"OpportunityId": opportunity, "ContactId": "003" + "0" * 15}
    )
    assert _error(dangling)["errorCode"] == "INVALID_CROSS_REFERENCE_KEY"
    api.call("DELETE", f"sobjects/Opportunity/{opportunity}")
    assert emu.records("OpportunityContactRole") == []  # roles go with their opportunity


# -- parent-to-child subqueries ---------------------------------------------------------------------------------------
ROLES_SUBQUERY = (
    "(SELECT ContactId, IsPrimary, Contact.LastName FROM OpportunityContactRoles ORDER BY IsPrimary DESC, CreatedDate)"
)


def _with_roles(emu: SalesforceEmulator, name: str, last_names: list[str], primary: int = 0) -> str:
    account = emu.seed("Account", {"Name": f"{name} Ltd", "BillingCountry": "US"})[0]["Id"]
    opportunity = emu.seed("Opportunity", _opportunity(name, AccountId=account))[0]["Id"]
    for index, last_name in enumerate(last_names):
        contact = emu.seed("Contact", {"LastName": last_name, "AccountId": account})[0]["Id"]
        role = {"OpportunityId": opportunity, "ContactId": contact, "IsPrimary": index == primary}
        emu.seed("OpportunityContactRole", role)
    return opportunity


def test_subquery_returns_each_rows_children_with_parent_fields_in_one_request(
    emu: SalesforceEmulator, api: Api
) -> None:
    with_roles = _with_roles(emu, "Deal", ["Ng", "Lee", "Bo"], primary=1)
    emu.seed("Opportunity", _opportunity("Lonely"))
    before = emu.counters()["apiRequests"]
    response = api.query(
        f"SELECT Name, Account.Name, Account.BillingCountry, {ROLES_SUBQUERY} FROM Opportunity ORDER BY Name"
    )
    assert response.status_code == 200, response.text
    assert emu.counters()["apiRequests"] == before + 1
    deal, lonely = response.json()["records"]
    assert deal["attributes"]["url"].endswith(with_roles)
    assert (deal["Account"]["Name"], deal["Account"]["BillingCountry"]) == ("Deal Ltd", "US")
    roles = deal["OpportunityContactRoles"]
    assert (roles["totalSize"], roles["done"]) == (3, True) and "nextRecordsUrl" not in roles
    assert [(r["Contact"]["LastName"], r["IsPrimary"]) for r in roles["records"]] == [
        ("Lee", True),  # the primary first, then in the order they were added
        ("Ng", False),
        ("Bo", False),
    ]
    assert roles["records"][0]["attributes"]["type"] == "OpportunityContactRole"
    assert set(roles["records"][0]) == {"attributes", "ContactId", "IsPrimary", "Contact"}
    assert lonely["OpportunityContactRoles"] is None and lonely["Account"] is None  # null, not an empty result

    filtered = api.query(
        "SELECT Name, (SELECT Contact.LastName FROM opportunitycontactroles WHERE IsPrimary = false "
        "ORDER BY Contact.LastName DESC LIMIT 1) FROM Opportunity WHERE Name = 'Deal'"
    ).json()["records"][0]["OpportunityContactRoles"]  # relationship names ignore case; the answer uses its own
    assert [r["Contact"]["LastName"] for r in filtered["records"]] == ["Ng"]
    contacts = api.query("SELECT Name, (SELECT LastName FROM Contacts ORDER BY LastName) FROM Account").json()
    assert [c["LastName"] for c in contacts["records"][0]["Contacts"]["records"]] == ["Bo", "Lee", "Ng"]
    describe = api.call("GET", "sobjects/Opportunity/describe").json()
    assert {
        "childSObject": "OpportunityContactRole",
        "field": "OpportunityId",
        "relationshipName": "OpportunityContactRoles",
    } in describe["childRelationships"]


def test_subquery_children_beyond_the_batch_size_come_with_their_own_next_records_url(
    emu: SalesforceEmulator, api: Api
) -> None:
    emu.configure(subquery_batch_size=2)
    try:
        _with_roles(emu, "Deal", ["A", "B", "C", "D", "E"])
        first = api.query(f"SELECT Name, {ROLES_SUBQUERY} FROM Opportunity").json()
        roles = first["done"], first["records"][0]["OpportunityContactRoles"]
        assert roles[0] is True  # the outer result is complete; the children are paged
        page = roles[1]
        names = [r["Contact"]["LastName"] for r in page["records"]]
        assert (page["totalSize"], page["done"], len(names)) == (5, False, 2)
        while not page["done"]:
            assert page["nextRecordsUrl"].startswith(f"/services/data/{V}/query/01g")
            page = api.call("GET", page["nextRecordsUrl"]).json()
            names += [r["Contact"]["LastName"] for r in page["records"]]
        assert names == ["A", "B", "C", "D", "E"]
    finally:
        emu.configure(subquery_batch_size=200)


def test_subqueries_are_refused_where_salesforce_refuses_them(emu: SalesforceEmulator, api: Api) -> None:
    errors = {
        # The FROM of a subquery names the child relationship (plural), not the object.
        "SELECT Name, (SELECT Id FROM OpportunityContactRole) FROM Opportunity": "INVALID_TYPE",
        "SELECT Name, (SELECT Id FROM Contacts) FROM Opportunity": "INVALID_TYPE",  # Account's, not Opportunity's
        "SELECT Name, (SELECT Nope FROM OpportunityContactRoles) FROM Opportunity": "INVALID_FIELD",
        "SELECT Name, (SELECT Contact.Nope FROM OpportunityContactRoles) FROM Opportunity": "INVALID_FIELD",
        "SELECT Name, (SELECT Id FROM OpportunityContactRoles WHERE Nope = 1) FROM Opportunity": "INVALID_FIELD",
        "SELECT Name, (SELECT Id, (SELECT Id FROM Contacts) FROM OpportunityContactRoles) FROM Opportunity": (
            "MALFORMED_QUERY"
        ),
        "SELECT Name, (SELECT Id FROM OpportunityContactRoles FROM Opportunity": "MALFORMED_QUERY",
        "SELECT Name, (SELECT Id FROM OpportunityContactRoles) FROM Opportunity WHERE (": "MALFORMED_QUERY",
    }
    for soql, code in errors.items():
        response = api.query(soql)
        assert response.status_code == 400, soql
        assert _error(response)["errorCode"] == code, soql


# -- composite --------------------------------------------------------------------------------------------------------
def _sub(method: str, path: str, ref: str, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"method": method, "url": f"/services/data/{V}/{path}", "referenceId": ref}
    if body is not None:
        item["body"] = body
    if headers:
        item["httpHeaders"] = headers
    return item


def _composite(api: Api, subrequests: list[dict[str, Any]], all_or_none: bool = True) -> requests.Response:
    body = {"allOrNone": all_or_none, "collateSubrequests": False, "compositeRequest": subrequests}
    return api.call("POST", "composite", json=body)


def test_composite_runs_subrequests_in_order_with_references_as_one_api_request(
    emu: SalesforceEmulator, api: Api
) -> None:
    before = emu.counters()
    response = _composite(
        api,
        [
            _sub("POST", "sobjects/Account", "account", {"Name": "Contoso"}),
            _sub("POST", "sobjects/Contact", "contact", {"LastName": "Lee", "AccountId": "@{account.id}"}),
            _sub("GET", "sobjects/Contact/@{contact.id}?fields=LastName,AccountId", "read"),
            _sub("GET", "query?q=SELECT+Name,+(SELECT+LastName+FROM+Contacts)+FROM+Account", "accounts"),
            _sub("PATCH", "sobjects/Account/@{account.id}", "rename", {"Name": "@{accounts.records[0].Name} Ltd"}),
        ],
    )
    assert response.status_code == 200
    assert response.headers["Sforce-Limit-Info"] == f"api-usage={before['apiRequests'] + 1}/15000"
    after = emu.counters()
    assert after["apiRequests"] == before["apiRequests"] + 1 and after["requests"] == before["requests"] + 1
    assert emu.api_usage()[0] == before["apiRequests"] + 1  # the daily allocation counts the call once
    results = response.json()["compositeResponse"]
    assert [r["referenceId"] for r in results] == ["account", "contact", "read", "accounts", "rename"]
    assert [r["httpStatusCode"] for r in results] == [201, 201, 200, 200, 204]
    account_id = results[0]["body"]["id"]
    assert results[1]["body"]["success"] is True and results[0]["body"]["errors"] == []
    assert results[2]["body"]["AccountId"] == account_id and results[2]["body"]["LastName"] == "Lee"
    assert results[2]["httpHeaders"]["Last-Modified"].endswith("GMT")
    assert "Content-Type" not in results[2]["httpHeaders"]
    assert results[3]["body"]["records"][0]["Contacts"]["records"][0]["LastName"] == "Lee"
    assert results[4]["body"] is None
    assert emu.record("Account", account_id)["Name"] == "Contoso Ltd"  # type: ignore[index]
    assert [(w["operation"], w["object"]) for w in emu.writes()] == [
        ("create", "Account"),
        ("create", "Contact"),
        ("update", "Account"),
    ]


def test_composite_all_or_none_rolls_back_everything_on_a_failed_condition(emu: SalesforceEmulator, api: Api) -> None:
    record = emu.seed("Opportunity", _opportunity("Deal", SystemModstamp="2024-05-01T10:00:00.250+0000"))[0]
    record_id = record["Id"]
    stale = {"If-Unmodified-Since": "Wed, 01 May 2024 09:59:59 GMT"}
    writes, counters = emu.writes(), emu.counters()["objects"]
    response = _composite(
        api,
        [
            _sub("POST", "sobjects/Account", "account", {"Name": "Contoso"}),
            _sub("PATCH", f"sobjects/Opportunity/{record_id}", "patch", {"Amount": 5}, stale),
            _sub("GET", f"sobjects/Opportunity/{record_id}?fields=SystemModstamp", "read"),
        ],
    )
    assert response.status_code == 200
    results = response.json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results] == [400, 412, 400]
    assert results[1]["body"][0]["errorCode"] == "PRECONDITION_FAILED"
    assert [r["body"][0]["errorCode"] for r in (results[0], results[2])] == ["PROCESSING_HALTED"] * 2
    assert emu.records("Account") == []  # the account created before the failure was rolled back
    assert emu.record("Opportunity", record_id)["Amount"] is None  # type: ignore[index]
    assert emu.writes() == writes and emu.counters()["objects"] == counters  # rolled-back writes are not counted

    same_second = {"If-Unmodified-Since": "Wed, 01 May 2024 10:00:00 GMT"}
    written = _composite(
        api,
        [
            _sub("PATCH", f"sobjects/Opportunity/{record_id}", "patch", {"Amount": 5}, same_second),
            _sub("GET", f"sobjects/Opportunity/{record_id}?fields=Amount,SystemModstamp", "read"),
        ],
    ).json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in written] == [204, 200]
    assert written[1]["body"]["Amount"] == 5
    assert emu.writes()[-1]["ifUnmodifiedSince"] == same_second["If-Unmodified-Since"]  # the subrequest's header


def test_composite_without_all_or_none_runs_what_does_not_depend_on_a_failure(
    emu: SalesforceEmulator, api: Api
) -> None:
    response = _composite(
        api,
        [
            _sub("POST", "sobjects/Account", "bad", {"Name": None}),
            _sub("POST", "sobjects/Contact", "dependent", {"LastName": "Lee", "AccountId": "@{bad.id}"}),
            _sub("POST", "sobjects/Account", "good", {"Name": "Fabrikam"}),
        ],
        all_or_none=False,
    )
    results = response.json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results] == [400, 400, 201]
    assert results[0]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert results[1]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert "bad.id" in results[1]["body"][0]["message"]
    assert [a["Name"] for a in emu.records("Account")] == ["Fabrikam"] and emu.records("Contact") == []


def test_composite_subrequests_meet_injected_faults_and_the_call_meets_the_quota(
    emu: SalesforceEmulator, api: Api
) -> None:
    record_id = emu.seed("Opportunity", _opportunity("Deal"))[0]["Id"]
    emu.inject_fault(503, method="PATCH", path=r"/sobjects/Opportunity/", retry_after=7)
    results = _composite(
        api,
        [
            _sub("PATCH", f"sobjects/Opportunity/{record_id}", "patch", {"Amount": 5}),
            _sub("GET", f"sobjects/Opportunity/{record_id}?fields=Amount", "read"),
        ],
    ).json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results] == [503, 400]
    assert results[0]["httpHeaders"] == {"Retry-After": "7"}
    assert results[0]["body"][0]["errorCode"] == "SERVER_UNAVAILABLE"

    used, _ = emu.api_usage()
    emu.set_quota(maximum=used + 1)
    assert _composite(api, [_sub("GET", "limits", "a"), _sub("GET", "limits", "b")]).status_code == 200
    refused = _composite(api, [_sub("GET", "limits", "a")])
    assert refused.status_code == 403 and _error(refused)["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


def test_malformed_composite_requests_are_refused_as_a_whole(emu: SalesforceEmulator, api: Api) -> None:
    query = "query?q=SELECT+Id+FROM+Account"
    malformed: list[tuple[list[dict[str, Any]], str]] = [
        ([], "at least one subrequest"),
        ([_sub("GET", "limits", f"r{i}") for i in range(26)], "at most 25 subrequests"),
        ([_sub("GET", query, f"q{i}") for i in range(6)], "at most 5 query or sObject Collections"),
        ([_sub("GET", "limits", "same"), _sub("GET", "limits", "same")], "Duplicate referenceId 'same'"),
        ([_sub("GET", "limits", "not-allowed")], "Invalid referenceId 'not-allowed'"),
        ([{**_sub("GET", "limits", "r"), "method": "get"}], "Invalid method 'get'"),
        ([{**_sub("GET", "limits", "r"), "url": "limits"}], "Invalid url 'limits'"),
        ([_sub("POST", "composite", "inner", {"compositeRequest": []})], "cannot be nested"),
        ([_sub("GET", "limits", "r", headers={"Authorization": "Bearer x"})], "cannot set Authorization"),
        ([_sub("GET", "limits", "r", headers={"content-type": "text/plain"})], "cannot set content-type"),
    ]
    for subrequests, reason in malformed:
        response = _composite(api, subrequests)
        assert response.status_code == 400, reason
        assert reason in _error(response)["message"]
    not_a_list = api.call("POST", "composite", json={"allOrNone": True})
    assert not_a_list.status_code == 400 and _error(not_a_list)["errorCode"] == "JSON_PARSER_ERROR"
    assert _composite(api, [_sub("GET", query, f"q{i}") for i in range(5)]).status_code == 200  # 5 are allowed
    assert emu.writes() == []


# -- single-currency orgs ---------------------------------------------------------------------------------------------
def _field_names(api: Api, sobject: str) -> set[str]:
    described = api.call("GET", f"sobjects/{sobject}/describe")
    assert described.status_code == 200, described.text
    return {field["name"] for field in described.json()["fields"]}


def test_a_single_currency_org_has_no_currency_type_and_no_currency_iso_code(emu: SalesforceEmulator, api: Api) -> None:
    assert "CurrencyIsoCode" in _field_names(api, "Opportunity")  # multi-currency unless told otherwise
    emu.configure(multi_currency=False)

    assert "CurrencyIsoCode" not in _field_names(api, "Opportunity")
    assert "CurrencyIsoCode" not in _field_names(api, "Account")
    currencies = api.query("SELECT IsoCode FROM CurrencyType WHERE IsActive = true")
    assert currencies.status_code == 400
    assert _error(currencies)["errorCode"] == "INVALID_TYPE"
    assert "sObject type 'CurrencyType' is not supported" in _error(currencies)["message"]
    selected = api.query("SELECT Id, CurrencyIsoCode FROM Opportunity")
    assert selected.status_code == 400 and _error(selected)["errorCode"] == "INVALID_FIELD"
    assert "CurrencyIsoCode" in _error(selected)["message"]

    created = api.call("POST", "sobjects/Opportunity", json=_opportunity("x", CurrencyIsoCode="USD"))
    assert created.status_code == 400
    assert _error(created)["errorCode"] == "INVALID_FIELD" and _error(created)["fields"] == ["CurrencyIsoCode"]
    record_id = api.call("POST", "sobjects/Opportunity", json=_opportunity("x", Amount=10)).json()["id"]
    patched = api.call("PATCH", f"sobjects/Opportunity/{record_id}", json={"CurrencyIsoCode": "USD"})
    assert patched.status_code == 400 and _error(patched)["errorCode"] == "INVALID_FIELD"
    in_collection = api.call(
        "POST",
        "composite/sobjects",
        json={"records": [{"attributes": {"type": "Account"}, "Name": "Contoso", "CurrencyIsoCode": "USD"}]},
    ).json()
    assert in_collection[0]["success"] is False
    assert in_collection[0]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert emu.counters()["objects"]["Opportunity"]["updates"] == 0
    assert "CurrencyIsoCode" not in emu.record("Opportunity", record_id)  # type: ignore[operator]


def test_the_organization_names_the_currency_of_a_single_currency_org_and_is_read_only(
    emu: SalesforceEmulator, api: Api
) -> None:
    # A multi-currency org's corporate currency is its CurrencyType with IsCorporate; the connector reads the org's
    # own field only in single-currency orgs, so that is where the emulator offers it.
    assert _error(api.query("SELECT DefaultCurrencyIsoCode FROM Organization"))["errorCode"] == "INVALID_FIELD"
    emu.configure(multi_currency=False)
    rows = api.query("SELECT Id, Name, DefaultCurrencyIsoCode FROM Organization").json()["records"]
    assert len(rows) == 1 and rows[0]["DefaultCurrencyIsoCode"] == "USD"  # the first of the org's currencies
    org_id = rows[0]["Id"]
    assert org_id.startswith("00D")
    for method, path, body in (
        ("POST", "sobjects/Organization", {}),
        ("PATCH", f"sobjects/Organization/{org_id}", {"Name": "Renamed"}),
        ("DELETE", f"sobjects/Organization/{org_id}", None),
    ):
        response = api.call(method, path, json=body)
        assert response.status_code == 400, method
        assert _error(response)["errorCode"] == "INVALID_TYPE_FOR_OPERATION", method
    assert len(emu.records("Organization")) == 1 and emu.records("Organization")[0]["Name"] != "Renamed"

    single_eur = SalesforceEmulator(multi_currency=False, currencies=("EUR",))
    assert single_eur.records("Organization")[0]["DefaultCurrencyIsoCode"] == "EUR"


def test_multi_currency_switches_over_http_and_reset_restores_the_constructors_choice(
    emu: SalesforceEmulator, api: Api
) -> None:
    record_id = api.call("POST", "sobjects/Opportunity", json=_opportunity("x", CurrencyIsoCode="EUR")).json()["id"]
    switched = requests.post(f"{emu.url}/_emulator/config", json={"multiCurrency": False}, timeout=5)
    assert switched.status_code == 204
    assert "CurrencyIsoCode" not in _field_names(api, "Opportunity")
    assert api.query("SELECT Id FROM CurrencyType").status_code == 400
    assert api.query("SELECT Id, Name FROM Opportunity").json()["totalSize"] == 1  # the records stay

    # Enabling multiple currencies gives every record the corporate currency, as Salesforce does.
    assert requests.post(f"{emu.url}/_emulator/config", json={"multiCurrency": True}, timeout=5).status_code == 204
    row = api.query(f"SELECT CurrencyIsoCode FROM Opportunity WHERE Id = '{record_id}'").json()["records"][0]
    assert row["CurrencyIsoCode"] == "USD"
    active = api.query("SELECT IsoCode FROM CurrencyType WHERE IsActive = true").json()["records"]
    assert [r["IsoCode"] for r in active] == ["USD", "EUR", "GBP", "JPY", "AUD", "CAD"]
    assert emu.counters()["objects"]["CurrencyType"]["reads"] >= 1
    bad = requests.post(f"{emu.url}/_emulator/config", json={"multiCurrency": "no"}, timeout=5)
    assert bad.status_code == 400

    emu.configure(multi_currency=False)
    emu.reset()
    assert "CurrencyIsoCode" in _field_names(Api(emu), "Opportunity")
    single = SalesforceEmulator(multi_currency=False)
    single.reset()
    assert single.org.multi_currency is False and "CurrencyType" not in single.counters()["objects"]
