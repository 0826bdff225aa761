"""The Salesforce emulator's field indexes: SOQL equality / IN filters and external-id lookups read only the
matching rows, give exactly what a scan gives, and stay right through every write path."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulators.salesforce.emulator import SalesforceEmulator
from emulators.salesforce.soql import compile_query

V = "v62.0"
REF = "Referral_Identfier__c"


@pytest.fixture
def emu(salesforce_server: SalesforceEmulator) -> SalesforceEmulator:
    server = salesforce_server
    server.reset()
    return server


class Api:
    def __init__(self, emulator: SalesforceEmulator) -> None:
        self.emulator = emulator
        self.base = f"{emulator.url}/services/data/{V}"
        self.headers = {"Authorization": f"Bearer {emulator.issue_token()}"}

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.base}/{path}", headers=self.headers, timeout=30, **kwargs)

    def ids(self, soql: str, kind: str = "query") -> list[str]:
        response = self.call("GET", kind, params={"q": soql})
        assert response.status_code == 200, response.text
        return [record["attributes"]["url"].rsplit("/", 1)[1] for record in response.json()["records"]]


@pytest.fixture
def api(emu: SalesforceEmulator) -> Api:
    return Api(emu)


def _opportunity(name: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "StageName": "Prospecting", "CloseDate": "2025-06-30", **extra}


def _scan(emu: SalesforceEmulator, soql: str, include_deleted: bool) -> list[str]:
    """What the emulator answered before it had indexes: every row through the full condition."""
    query = compile_query(soql, emu.objects, emu.org.resolve)
    return [row["Id"] for row in emu.org.rows(query.sobject.name, include_deleted) if query.predicate(row)]


# -- same answers as a scan ---------------------------------------------------------------------------------------
# Many distinct values, so that most lookups leave fewer rows than a scan and the indexes are really used.
EMAILS = ["ana@contoso.com", "ANA@Contoso.com", "bo@fabrikam.com", "cy@fabrikam.com", None]
EMAILS += [f"user{n}@example.com" for n in range(12)]
NAMES = ["Lee", "lee", "LEE", "Kim", "Ng", "Ito", "Roy", "Ruiz", "Wu", "Ola", "Abe"]


def _seed_contacts(emu: SalesforceEmulator) -> dict[str, list[str]]:
    accounts = [row["Id"] for row in emu.seed("Account", [{"Name": n} for n in ("Contoso", "contoso", "Fabrikam")])]
    contacts = []
    for n in range(60):
        body: dict[str, Any] = {"LastName": NAMES[n % len(NAMES)], "FirstName": f"F{n % 6}"}
        if EMAILS[n % len(EMAILS)] is not None:
            body["Email"] = EMAILS[n % len(EMAILS)]
        if n % 4:
            body["AccountId"] = accounts[n % 3]
        contacts.append(emu.seed("Contact", body)[0]["Id"])
    for record_id in contacts[::7]:
        emu.org.delete("Contact", record_id)
    return {"Id": contacts, "AccountId": accounts}


def _recase(text: str, flips: int) -> str:
    return "".join(c.swapcase() if (i + flips) % 3 == 0 else c for i, c in enumerate(text))


@st.composite
def _condition(draw: st.DrawFn, ids: dict[str, list[str]]) -> str:
    field = draw(st.sampled_from(["Email", "LastName", "FirstName", "AccountId", "Id", "Account.Name"]))
    if field in ("AccountId", "Id"):
        values = [f"'{value}'" for value in ids[field]] + ["null"]
    else:
        pool = {"Email": EMAILS[:8], "LastName": NAMES[:7], "FirstName": ["F0", "f1", "F2", "F9"]}.get(
            field, ["Contoso", "FABRIKAM", "Nobody"]
        )
        flips = draw(st.integers(0, 2))
        values = [f"'{_recase(value, flips)}'" for value in pool if value is not None] + ["null"]
    op = draw(
        st.sampled_from(
            ["=", "!=", "IN", "NOT IN", "LIKE"] if field not in ("AccountId", "Id") else ["=", "!=", "IN", "NOT IN"]
        )
    )
    if op == "LIKE":
        return f"{field} LIKE '{draw(st.sampled_from(['%', 'a%', '%LEE', 'F_']))}'"
    if op in ("IN", "NOT IN"):
        chosen = draw(st.lists(st.sampled_from([v for v in values if v != "null"]), min_size=1, max_size=3))
        return f"{field} {op} ({', '.join(chosen)})"
    return f"{field} {op} {draw(st.sampled_from(values))}"


@st.composite
def _where(draw: st.DrawFn, ids: dict[str, list[str]]) -> str:
    parts = draw(st.lists(_condition(ids), min_size=1, max_size=3))
    joiner = draw(st.sampled_from([" AND ", " OR "]))
    text = joiner.join(parts)
    shape = draw(st.sampled_from(["plain", "parenthesized", "negated", "and-group", "or-of-ands"]))
    if shape == "or-of-ands":
        groups = draw(st.lists(st.lists(_condition(ids), min_size=1, max_size=2), min_size=2, max_size=3))
        return " OR ".join("(" + " AND ".join(group) + ")" for group in groups)
    if shape == "parenthesized":
        return f"({text})"
    if shape == "negated":
        return f"NOT ({text})"
    if shape == "and-group":
        return f"{draw(_condition(ids))} AND ({text})"
    return text


def test_indexed_queries_answer_exactly_what_a_scan_answers(emu: SalesforceEmulator, api: Api) -> None:
    ids = _seed_contacts(emu)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(where=_where(ids), kind=st.sampled_from(["query", "queryAll"]))
    def check(where: str, kind: str) -> None:
        soql = f"SELECT Id FROM Contact WHERE {where}"
        assert api.ids(soql, kind) == _scan(emu, soql, kind == "queryAll"), soql

    check()


def test_equalities_narrow_through_and_and_or_while_not_like_and_open_branches_scan(
    emu: SalesforceEmulator, api: Api
) -> None:
    ids = _seed_contacts(emu)
    org = emu.org
    live = len(org.rows("Contact"))
    for where, most in [
        ("Email = 'ANA@contoso.COM'", live // 4),
        (f"Id = '{ids['Id'][1]}' AND LastName = 'lee'", 1),
        (f"AccountId IN ('{ids['AccountId'][0]}') AND (Email = null OR Email != null)", live // 3),
        ("Email = 'nobody@example.com' AND LastName LIKE '%'", 0),
        (
            "(Email = 'bo@fabrikam.com') OR (FirstName = 'f1' AND LastName = 'KIM' AND Account.Name = 'Contoso')",
            live // 4,
        ),
    ]:
        before = org.rows_examined
        found = api.ids(f"SELECT Id FROM Contact WHERE {where}")
        assert org.rows_examined - before <= most, where
        assert found == _scan(emu, f"SELECT Id FROM Contact WHERE {where}", False)
    for where in [
        "Email = 'ana@contoso.com' OR LastName LIKE 'K%'",
        "NOT (Email = 'ana@contoso.com')",
        "Account.Name = 'Contoso'",
        "Email != 'ana@contoso.com'",
    ]:
        before = org.rows_examined
        api.ids(f"SELECT Id FROM Contact WHERE {where}")
        assert org.rows_examined - before == live, where


# -- every write path keeps the indexes right -----------------------------------------------------------------------
def _by_ref(api: Api, value: str, kind: str = "query") -> list[str]:
    return api.ids(f"SELECT Id FROM Opportunity WHERE {REF} = '{value}'", kind)


def test_updates_deletes_and_upserts_refile_rows(emu: SalesforceEmulator, api: Api) -> None:
    created = api.call("POST", "sobjects/Opportunity", json=_opportunity("Deal", **{REF: "ref-old"})).json()["id"]
    assert _by_ref(api, "REF-OLD") == [created]  # the index is built here, then kept

    assert api.call("PATCH", f"sobjects/Opportunity/{created}", json={REF: "ref-new"}).status_code == 204
    assert _by_ref(api, "ref-old") == [] and _by_ref(api, "ref-new") == [created]
    assert api.call("GET", f"sobjects/Opportunity/{REF}/ref-old").status_code == 404
    assert api.call("GET", f"sobjects/Opportunity/{REF}/REF-new").json()["Id"] == created

    upserted = api.call("PATCH", f"sobjects/Opportunity/{REF}/ref-up", json=_opportunity("Up"))
    assert upserted.status_code == 201
    up_id = upserted.json()["id"]
    assert _by_ref(api, "ref-up") == [up_id]

    update = {"records": [{"attributes": {"type": "Opportunity"}, "id": up_id, REF: "ref-collection"}]}
    assert api.call("PATCH", "composite/sobjects", json=update).json()[0]["success"] is True
    assert _by_ref(api, "ref-up") == [] and _by_ref(api, "ref-collection") == [up_id]

    tombstones = "SELECT Id FROM Opportunity WHERE IsDeleted = true"
    assert api.ids(tombstones, "queryAll") == []
    assert api.call("DELETE", f"sobjects/Opportunity/{created}").status_code == 204
    assert api.ids(tombstones, "queryAll") == [created]
    assert _by_ref(api, "ref-new") == []
    assert _by_ref(api, "ref-new", "queryAll") == [created]
    assert api.ids(f"SELECT Id FROM Opportunity WHERE IsDeleted = true AND {REF} = 'ref-new'", "queryAll") == [created]
    assert api.call("GET", f"sobjects/Opportunity/{REF}/ref-new").status_code == 404

    emu.reset()
    api = Api(emu)  # a reset ends the sessions
    assert _by_ref(api, "ref-collection") == []
    fresh = api.call("POST", "sobjects/Opportunity", json=_opportunity("Again", **{REF: "ref-collection"})).json()
    assert _by_ref(api, "ref-collection") == [fresh["id"]]


def test_contact_roles_follow_primary_flips_and_cascading_deletes(emu: SalesforceEmulator, api: Api) -> None:
    opportunity = emu.seed("Opportunity", _opportunity("Deal"))[0]["Id"]
    contacts = [row["Id"] for row in emu.seed("Contact", [{"LastName": "A"}, {"LastName": "B"}])]
    primary = f"SELECT ContactId FROM OpportunityContactRole WHERE OpportunityId = '{opportunity}' AND IsPrimary = true"
    assert api.ids(primary) == []
    first = api.call(
        "POST",
        "sobjects/OpportunityContactRole",
        json={"OpportunityId": opportunity, "ContactId": contacts[0], "IsPrimary": True},
    ).json()["id"]
    assert api.ids(primary) == [first]
    second = api.call(
        "POST",
        "sobjects/OpportunityContactRole",
        json={"OpportunityId": opportunity, "ContactId": contacts[1], "IsPrimary": True},
    ).json()["id"]
    assert api.ids(primary) == [second]  # the first one was demoted in place
    demoted = f"SELECT Id FROM OpportunityContactRole WHERE IsPrimary = false AND OpportunityId = '{opportunity}'"
    assert api.ids(demoted) == [first]

    children = api.call(
        "GET",
        "query",
        params={
            "q": f"SELECT Id, (SELECT Id FROM OpportunityContactRoles) FROM Opportunity WHERE Id = '{opportunity}'"
        },
    ).json()["records"][0]["OpportunityContactRoles"]["records"]
    assert [c["attributes"]["url"].rsplit("/", 1)[1] for c in children] == [first, second]

    assert api.call("DELETE", f"sobjects/Opportunity/{opportunity}").status_code == 204
    every = f"SELECT Id FROM OpportunityContactRole WHERE OpportunityId = '{opportunity}'"
    assert api.ids(every) == []
    assert api.ids(every, "queryAll") == [first, second]


def test_all_or_none_rollbacks_take_index_entries_back(emu: SalesforceEmulator, api: Api) -> None:
    record_id = emu.seed("Opportunity", _opportunity("Deal", **{REF: "ref-kept"}))[0]["Id"]
    assert _by_ref(api, "ref-kept") == [record_id]
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {
                "method": "PATCH",
                "url": f"/services/data/{V}/sobjects/Opportunity/{record_id}",
                "referenceId": "rename",
                "body": {REF: "ref-rolled"},
            },
            {
                "method": "POST",
                "url": f"/services/data/{V}/sobjects/Opportunity",
                "referenceId": "add",
                "body": _opportunity("Added", **{REF: "ref-added"}),
            },
            {
                "method": "POST",
                "url": f"/services/data/{V}/sobjects/Opportunity",
                "referenceId": "bad",
                "body": {"Name": "no stage"},
            },
        ],
    }
    results = api.call("POST", "composite", json=body).json()["compositeResponse"]
    assert results[-1]["httpStatusCode"] == 400
    assert _by_ref(api, "ref-kept") == [record_id]
    assert _by_ref(api, "ref-rolled") == [] and _by_ref(api, "ref-added") == []
    assert api.call("GET", f"sobjects/Opportunity/{REF}/ref-added").status_code == 404

    records = [
        {"attributes": {"type": "Opportunity"}, "id": record_id, REF: "ref-collection"},
        {"attributes": {"type": "Opportunity"}, "id": record_id, "StageName": "No such stage"},
    ]
    answer = api.call("PATCH", "composite/sobjects", json={"allOrNone": True, "records": records}).json()
    assert not any(item["success"] for item in answer)
    assert _by_ref(api, "ref-kept") == [record_id] and _by_ref(api, "ref-collection") == []


def _sub(method: str, path: str, ref: str, body: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {"method": method, "url": f"/services/data/{V}/{path}", "referenceId": ref}
    if body is not None:
        item["body"] = body
    return item


def test_a_rolled_back_composite_call_undoes_deletes_demotions_and_nested_collections(
    emu: SalesforceEmulator, api: Api
) -> None:
    opportunity, other = (
        row["Id"]
        for row in emu.seed(
            "Opportunity", [_opportunity("Deal", **{REF: "ref-deal"}), _opportunity("Other", **{REF: "ref-other"})]
        )
    )
    contacts = [row["Id"] for row in emu.seed("Contact", [{"LastName": "A"}, {"LastName": "B"}])]
    other_role = emu.seed("OpportunityContactRole", {"OpportunityId": other, "ContactId": contacts[0]})[0]["Id"]
    role = emu.seed(
        "OpportunityContactRole", {"OpportunityId": opportunity, "ContactId": contacts[0], "IsPrimary": True}
    )
    roles = f"SELECT Id FROM OpportunityContactRole WHERE OpportunityId = '{opportunity}' AND IsPrimary = true"
    assert api.ids(roles) == [role[0]["Id"]]
    before = {
        name: emu.records(name, include_deleted=True) for name in ("Opportunity", "Contact", "OpportunityContactRole")
    }
    new_role = {"OpportunityId": opportunity, "ContactId": contacts[1], "IsPrimary": True}
    collection = {
        "allOrNone": True,
        "records": [{"attributes": {"type": "Contact"}, "LastName": "C", "Email": "c@x.com"}],
    }
    body = {
        "allOrNone": True,
        "compositeRequest": [
            _sub("POST", "sobjects/OpportunityContactRole", "demote", new_role),
            _sub("POST", "composite/sobjects", "nested", collection),
            _sub("PATCH", f"sobjects/Opportunity/{opportunity}", "rename", {REF: "ref-renamed"}),
            _sub("DELETE", f"sobjects/Opportunity/{other}", "delete"),
            _sub("PATCH", f"sobjects/Contact/{contacts[0]}", "bad", {"NoSuchField__c": 1}),
        ],
    }
    results = api.call("POST", "composite", json=body).json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results][-1] == 400
    after = {name: emu.records(name, include_deleted=True) for name in before}
    assert after == before  # every row exactly as it was, system fields included
    assert api.ids(roles) == [role[0]["Id"]]
    assert _by_ref(api, "ref-deal") == [opportunity] and _by_ref(api, "ref-renamed", "queryAll") == []
    assert api.ids("SELECT Id FROM Contact WHERE Email = 'c@x.com'", "queryAll") == []
    assert api.ids(f"SELECT Id FROM OpportunityContactRole WHERE OpportunityId = '{other}'") == [other_role]
    assert _by_ref(api, "ref-other") == [other]

    # Without all-or-none, a nested all-or-none collection that fails takes back its own writes only.
    failing = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": "Contact"}, "LastName": "D", "Email": "d@x.com"},
            {"attributes": {"type": "Contact"}, "Email": "no-last-name@x.com"},
        ],
    }
    body = {
        "allOrNone": False,
        "compositeRequest": [
            _sub("PATCH", f"sobjects/Opportunity/{opportunity}", "rename", {REF: "ref-kept"}),
            _sub("POST", "composite/sobjects", "nested", failing),
        ],
    }
    api.call("POST", "composite", json=body)
    assert _by_ref(api, "ref-kept") == [opportunity]
    assert api.ids("SELECT Id FROM Contact WHERE Email IN ('d@x.com', 'no-last-name@x.com')", "queryAll") == []
    created = api.call("POST", "sobjects/Contact", json={"LastName": "E", "Email": "e@x.com"}).json()["id"]
    assert api.ids("SELECT Id FROM Contact WHERE Email = 'E@x.com'") == [created]  # numbering goes on


def test_lead_conversion_refiles_the_lead_and_indexes_what_it_creates(emu: SalesforceEmulator, api: Api) -> None:
    lead = emu.seed("Lead", {"LastName": "Lee", "Company": "Contoso", "Email": "lee@contoso.com"})[0]["Id"]
    unconverted = f"SELECT Id FROM Lead WHERE IsConverted = false AND Id = '{lead}'"
    converted = f"SELECT Id FROM Lead WHERE IsConverted = true AND Id = '{lead}'"
    assert api.ids(unconverted) == [lead] and api.ids(converted) == []
    assert api.ids("SELECT Id FROM Contact WHERE Email = 'LEE@contoso.com'") == []
    made = emu.convert_lead(lead)
    assert api.ids(unconverted) == [] and api.ids(converted) == [lead]
    assert api.ids("SELECT Id FROM Contact WHERE Email = 'LEE@contoso.com'") == [made["ConvertedContactId"]]
    by_contact = f"SELECT Id FROM Lead WHERE ConvertedContactId = '{made['ConvertedContactId']}'"
    assert api.ids(by_contact) == [lead]


def test_currency_switches_refile_currency_codes(emu: SalesforceEmulator, api: Api) -> None:
    record_id = emu.seed("Opportunity", _opportunity("Deal", CurrencyIsoCode="EUR"))[0]["Id"]
    assert api.ids("SELECT Id FROM Opportunity WHERE CurrencyIsoCode = 'EUR'") == [record_id]
    emu.configure(multi_currency=False)
    emu.configure(multi_currency=True)  # every record gets the corporate currency back
    corporate = emu.org.corporate_currency
    assert api.ids("SELECT Id FROM Opportunity WHERE CurrencyIsoCode = 'EUR'") == []
    assert api.ids(f"SELECT Id FROM Opportunity WHERE CurrencyIsoCode = '{corporate}'") == [record_id]


# -- at scale --------------------------------------------------------------------------------------------------------
def test_lookups_at_twenty_thousand_rows_read_only_the_matches(emu: SalesforceEmulator, api: Api) -> None:
    account = emu.seed("Account", {"Name": "Contoso"})[0]["Id"]
    rows = emu.seed(
        "Opportunity",
        [_opportunity(f"Deal {n}", **{REF: f"ref-{n}"}, AccountId=account if n == 7 else None) for n in range(20_000)],
    )
    org = emu.org

    def examined(action: Any) -> int:
        before = org.rows_examined
        action()
        return org.rows_examined - before

    assert examined(lambda: _by_ref(api, "REF-12345")) <= 1
    assert _by_ref(api, "ref-12345") == [rows[12345]["Id"]]
    assert (
        examined(lambda: api.ids(f"SELECT Id FROM Opportunity WHERE Id IN ('{rows[3]['Id']}', '{rows[4]['Id']}')")) <= 2
    )
    assert examined(lambda: api.ids(f"SELECT Id FROM Opportunity WHERE AccountId = '{account}'")) <= 1
    assert examined(lambda: api.call("GET", f"sobjects/Opportunity/{REF}/ref-19999")) <= 1
    assert api.call("GET", f"sobjects/Opportunity/{REF}/ref-19999").json()["Id"] == rows[19999]["Id"]
    upsert = api.call("PATCH", f"sobjects/Opportunity/{REF}/ref-5", json={"Amount": 5})
    assert upsert.status_code in (200, 204)
    assert examined(lambda: api.ids("SELECT Id FROM Opportunity WHERE Name LIKE 'Deal 1234%'")) == 20_000


@pytest.mark.parametrize("case_sensitive", [False, True])
def test_external_id_matches_are_what_a_scan_finds(emu: SalesforceEmulator, case_sensitive: bool) -> None:
    org = emu.org
    org.external_id_case_sensitive = case_sensitive
    try:
        rows = emu.seed("Opportunity", [_opportunity(f"D{n}", **{REF: ref}) for n, ref in enumerate(["Ab", "aB", "c"])])
        emu.org.delete("Opportunity", rows[2]["Id"])
        sobject = org.sobject("Opportunity")
        for field, value in [(REF, "ab"), (REF, "Ab"), (REF, "c"), (REF, "zz"), ("Id", rows[0]["Id"].lower())]:
            definition = sobject.fields[field]
            if case_sensitive:
                scan = [r["Id"] for r in org.rows("Opportunity") if r.get(field) == value]
            else:
                scan = [
                    r["Id"] for r in org.rows("Opportunity") if str(r.get(field) or "").casefold() == value.casefold()
                ]
            assert [r["Id"] for r in org.match_external("Opportunity", definition, value)] == scan, (field, value)
    finally:
        org.external_id_case_sensitive = False
