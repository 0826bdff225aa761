"""The operator page, GET /api/console (issue 14), served over real HTTP by the local runner's HTTP host in
front of the end-to-end stack: failures with their reasons and links to both records, poison items with a
Replay button that refuses cross-site requests, one record's history, everything escaped."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import azure.functions as func
import pytest
import requests
from azure.functions.queue import QueueMessage

from shared import wiring
from shared.console.guard import COOKIE
from shared.console.links import RecordLinks
from shared.ports import KIND_CRM_LEAD, KIND_REFERRAL, LINK_KIND_LEAD, AuditEntry, Job
from shared.store.queue import encode_job
from shared.sync.recording import Outcome
from tests.console_http import FUNCTION_KEY, ConsoleServer, serve
from tests.harness import load_app


@pytest.fixture
def console_server(stack) -> Iterator[ConsoleServer]:
    with serve(stack) as server:
        yield server


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _page(server: ConsoleServer, **params: str) -> tuple[requests.Session, str, str]:
    """The page as a browser gets it: its HTML, and the token of its Replay form (also in its cookie)."""
    session = requests.Session()
    response = session.get(server.console_url(**params), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    token = re.search(r'name="token" value="([^"]+)"', response.text)
    return session, response.text, token.group(1) if token else ""


def _poisoned(stack, referral_id: str) -> str:
    stack.host.queue.poison.send_message(encode_job(Job(KIND_REFERRAL, referral_id, reason="test")))
    [item] = stack.host.queue.peek_poison(1)
    return item.message_id


def _replay(session: requests.Session, server: ConsoleServer, data: dict[str, str], **headers: str):
    return session.post(
        f"{server.url}/api/console/replay?code={FUNCTION_KEY}",
        data=data,
        headers=headers,
        allow_redirects=False,
        timeout=10,
    )


def test_the_page_shows_a_failure_with_its_reason_and_links_to_both_records(stack, console_server):
    referral = stack.pc.seed_referral(kind="cosell", details={"currency": "XYZ"})
    stack.deliver_and_drain(1)
    _, html, _ = _page(console_server)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    failures = html.split('id="failures"')[1].split("</section>")[0]
    assert "XYZ" in failures and referral["id"] in failures
    assert f'href="https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{referral["id"]}"' in failures
    assert "Last webhook" in html and "never" not in html.split("Last webhook")[1].split("</dd>")[0]
    assert f"code={FUNCTION_KEY}" in html  # its own links and form keep the key it was opened with


def test_crm_record_links_follow_each_crm():
    dynamics = RecordLinks("dynamics", "https://contoso.crm.dynamics.com/", "https://pc/{referral_id}")
    assert dynamics.crm("0000-1") == (
        "https://contoso.crm.dynamics.com/main.aspx?pagetype=entityrecord&etn=opportunity&id=0000-1"
    )
    salesforce = RecordLinks("salesforce", "https://contoso.my.salesforce.com", "https://pc/{referral_id}")
    assert salesforce.crm("006A") == "https://contoso.my.salesforce.com/lightning/r/Opportunity/006A/view"
    assert dynamics.referral("a/b?c") == "https://pc/a%2Fb%3Fc"


def test_a_leads_crm_link_opens_the_lead_not_an_opportunity():
    dynamics = RecordLinks("dynamics", "https://contoso.crm.dynamics.com/", "https://pc/{referral_id}")
    assert dynamics.crm("0000-1", LINK_KIND_LEAD) == (
        "https://contoso.crm.dynamics.com/main.aspx?pagetype=entityrecord&etn=lead&id=0000-1"
    )
    salesforce = RecordLinks("salesforce", "https://contoso.my.salesforce.com", "https://pc/{referral_id}")
    assert salesforce.crm("00QA", LINK_KIND_LEAD) == "https://contoso.my.salesforce.com/lightning/r/Lead/00QA/view"


def test_a_poisoned_lead_job_links_its_failure_to_the_lead(stack, console_server):
    """A lead's job (SYNC_COSELL_ONLY=false) given up after repeated CRM errors: the failure's CRM link opens the
    lead, whose id it names, not an opportunity of that id."""
    lead_id = str(uuid.uuid4())
    stack.view.emulator.inject_fault(500, count=100, method="GET", path=r"leads")
    body = encode_job(Job(KIND_CRM_LEAD, lead_id, reason="poll")).encode("utf-8")
    message = QueueMessage(id=str(uuid.uuid4()), body=body, dequeue_count=5, pop_receipt="r")
    with pytest.raises(Exception, match="500"):
        stack.host.functions["sync_worker"](message)
    stack.view.emulator.clear_faults()

    _, html, _ = _page(console_server)
    failures = html.split('id="failures"')[1].split("</section>")[0]
    assert "poisoned crm-&gt;pc" in failures, failures
    assert f'href="{stack.view.emulator.url}/main.aspx?pagetype=entityrecord&amp;etn=lead&amp;id={lead_id}"' in failures
    assert "etn=opportunity" not in failures


def test_a_cross_site_replay_is_refused_and_replays_nothing(stack, console_server):
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    message_id = _poisoned(stack, referral["id"])
    session, html, token = _page(console_server)
    assert session.cookies.get(COOKIE) == token and f'value="{message_id}"' in html
    form = {"token": token, "message_id": message_id}
    attempts = [
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, form),
        ({"Sec-Fetch-Site": "same-site"}, form),  # a sibling subdomain is another site's page too
        ({"Origin": "https://evil.example"}, form),
        ({}, form),  # a browser always says where a POST comes from; one that does not is refused
        ({"Origin": console_server.url, "Sec-Fetch-Site": "same-origin"}, {"message_id": message_id}),  # no token
        ({"Origin": console_server.url, "Sec-Fetch-Site": "same-origin"}, {**form, "token": "forged"}),
    ]
    for headers, data in attempts:
        response = _replay(session, console_server, data, **headers)
        assert response.status_code == 403, (headers, data, response.text)
    # Another site's form is posted without the page's cookie (SameSite=Strict), even with a stolen token.
    anonymous = requests.Session()
    response = _replay(anonymous, console_server, form, Origin=console_server.url, **{"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 403
    assert stack.host.queue.poison_depth() == 1 and stack.host.queue.depth() == 0


def test_a_replay_from_the_page_moves_exactly_that_job_back(stack, console_server):
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    other = stack.pc.seed_referral(kind="cosell", raise_event=False)
    message_id = _poisoned(stack, referral["id"])
    stack.host.queue.poison.send_message(encode_job(Job(KIND_REFERRAL, other["id"], reason="test")))
    session, _, token = _page(console_server)
    headers = {"Origin": console_server.url, "Sec-Fetch-Site": "same-origin"}
    response = _replay(session, console_server, {"token": token, "message_id": message_id}, **headers)
    assert response.status_code == 303
    assert response.headers["Location"] == f"/api/console?code={FUNCTION_KEY}&replayed={referral['id']}"
    assert [j.record_id for j in stack.host.queue.peek_jobs()] == [referral["id"]]
    assert [p.job.record_id for p in stack.host.queue.peek_poison()] == [other["id"]]
    again = _replay(session, console_server, {"token": token, "message_id": message_id}, **headers)
    assert again.status_code == 303 and "gone=1" in again.headers["Location"]  # replayed once only
    assert stack.host.queue.depth() == 1


def test_everything_from_records_and_the_url_is_escaped(stack, console_server):
    store = wiring.container().store
    at = datetime.now(UTC)
    store.append_audit(AuditEntry("rec-1", "failed", "pc->crm", f"refused: {HOSTILE}", referral_id="rec-1", at=at))
    wiring.container().tally.job_finished(
        Outcome("failed", "rec-1", "pc->crm", f'crm"><b>{HOSTILE}', "rec-1", message=f"reason {HOSTILE}")
    )
    _, html, _ = _page(console_server, q="rec-1")
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html  # shown as text, in the history and failures
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 2
    _, searched, _ = _page(console_server, q=requests.utils.quote(HOSTILE))
    assert "<script>" not in searched and "<img" not in searched
    assert "No history for &lt;script&gt;" in searched


def test_search_shows_one_records_history_by_either_id(stack, console_server):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    crm_id = wiring.container().store.get_link(referral["id"]).crm_id
    for query in (referral["id"], crm_id):
        _, html, _ = _page(console_server, q=query)
        history = html.split('id="history"')[1]
        assert history.count('class="history-entry"') >= 1 and "created" in history, query


@pytest.mark.parametrize(
    ("name", "route", "method"), [("console", "console", "GET"), ("console_replay", "console/replay", "POST")]
)
def test_the_console_routes_need_the_function_key(name, route, method):
    bindings = {
        f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in load_app().get_functions()
    }
    trigger = bindings[name][0]
    assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == (route, [method], "FUNCTION")


def test_the_console_says_which_settings_are_missing_instead_of_failing(monkeypatch, azurite, storage_names):
    for key in list(os.environ):
        if key.upper().startswith(("DATAVERSE_", "PARTNER_CENTER_", "CRM_", "SALESFORCE_")):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    functions = {f.get_function_name(): f.get_user_function() for f in load_app().get_functions()}
    try:
        for name, method in (("console", "GET"), ("console_replay", "POST")):
            response = functions[name](func.HttpRequest(method, "http://localhost/api/console", body=b""))
            assert response.status_code == 503 and "not configured" in response.get_body().decode(), name
    finally:
        wiring.reset()
