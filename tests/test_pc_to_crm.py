"""Partner Center -> CRM, end to end, for Dynamics 365 and Salesforce: a signed webhook from the Partner
Center emulator reaches the real function app over HTTP, the job goes through the Azurite queue to the
worker, and the opportunity lands in the CRM emulator (Dataverse or Salesforce). Writes are counted in
the emulators."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from emulators.partner_center.dispatch import signed_headers
from shared import wiring
from shared.domain.checkmark import CHECK, CROSS
from shared.domain.mapping import mapped_values, referral_to_opportunity
from shared.domain.referral import Referral
from tests.e2e_stack import CRMS, PC_TOKEN, Stack

# The CRM's own value for the sample referral's assistanceRequestCode CustomerTechnicalArchitecture.
TECHNICAL_ARCHITECTURE = {"dynamics": 100000001, "salesforce": "Customer technical architecture"}


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    """Every test here runs against both CRMs."""
    return request.param


def test_signed_webhook_creates_opportunity_with_every_mapped_field(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.endpoint.responses == [202]

    rows = stack.opportunities()
    assert len(rows) == 1
    row = rows[0]
    assert row["name"] == f"{referral['name']} {CHECK}"
    assert row["referral_id"] == referral["id"]
    assert row["sync"] is True
    assert referral["id"] in row["referral_link"]
    assert row["help"] == TECHNICAL_ARCHITECTURE[stack.crm_name]
    assert "Created from Partner Center referral" in row["audit"]

    stored = stack.crm().find_by_referral_id(referral["id"])
    expected = stack.crm().stored_form(referral_to_opportunity(Referral.model_validate(referral)))
    got, want = mapped_values(stored), mapped_values(expected)
    assert got == want
    for field in (
        "deal_value",
        "currency",
        "close_date",
        "notes",
        "customer_name",
        "customer_address",
        "customer_contacts",
        "help_code",
        "solution_ids",
        "status",
        "substatus",
    ):
        assert want[field], f"sample referral should exercise {field}"

    accounts = stack.view.accounts()
    assert [a["name"] for a in accounts] == [referral["customerProfile"]["name"]]
    assert accounts[0]["country"] == referral["customerProfile"]["address"]["country"]
    assert row["account_id"] == accounts[0]["id"]
    assert stack.audit_actions(referral["id"]) == ["created"]


def test_same_event_delivered_twice_makes_one_opportunity(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.view.reset_counters()
    stack.pc.redeliver(referral["id"])
    stack.deliver_and_drain(2)
    assert len(stack.opportunities()) == 1
    assert stack.crm_writes() == 0
    assert stack.audit_actions(referral["id"]) == ["created"]  # the repeat is logged, not audited


def test_concurrent_deliveries_make_one_opportunity(stack):
    stack.pc.dispatch_mode = "sync"
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.redeliver(referral["id"])
    stack.pc.redeliver(referral["id"])
    assert stack.host.queue.depth() == 3
    stack.deliver_and_drain(3, parallel=3)
    assert len(stack.opportunities()) == 1
    assert len(stack.view.accounts()) == 1
    emails = stack.view.contact_emails()
    assert len(emails) == len(set(emails))
    assert stack.audit_actions(referral["id"]).count("created") == 1


def test_referral_update_makes_one_crm_update(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.view.reset_counters()
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 99000, "notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    assert stack.view.opportunity_updates() == 1
    assert stack.crm_writes() == 1
    row = stack.opportunities()[0]
    assert row["deal_value"] == 99000
    assert row["notes"] == "Scope doubled"
    assert row["audit"].splitlines()[0].endswith("Updated from Partner Center: deal_value, notes")
    assert stack.audit_actions(referral["id"])[0] == "updated"


def test_status_change_in_partner_center_closes_the_opportunity(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.pc.portal_update(referral["id"], {"status": "Closed", "substatus": "Won"})
    stack.deliver_and_drain(2)
    row = stack.opportunities()[0]
    assert row["state"] == "won"


def test_no_op_event_makes_zero_crm_writes(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.view.reset_counters()
    stack.pc.send_event(referral["id"], "referral-updated")
    stack.deliver_and_drain(2)
    assert stack.crm_writes() == 0
    assert stack.audit_actions(referral["id"]) == ["created"]  # a no-op costs no audit row


def _queue_empty(stack: Stack) -> bool:
    return stack.host.queue.depth() == 0


def test_bad_signature_is_401_and_enqueues_nothing(stack):
    stack.pc.dispatch_mode = "off"
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.dispatch_mode = "sync"
    stack.pc.delivery_attempts = 1
    delivery = stack.pc.deliver_with_corrupted_signature(referral["id"])
    assert delivery.last_status_code == 401
    assert _queue_empty(stack)


def test_unknown_certificate_host_is_401_and_enqueues_nothing(stack):
    stack.pc.dispatch_mode = "off"
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.dispatch_mode = "sync"
    stack.pc.delivery_attempts = 1
    delivery = stack.pc.deliver_with_certificate_url(referral["id"], "https://certs.attacker.example/pc.cer")
    assert delivery.last_status_code == 401
    assert _queue_empty(stack)


def test_malformed_json_is_400_and_enqueues_nothing(stack):
    body = b'{"EventName": "referral-created", "ResourceUri": '
    headers = signed_headers(body, stack.pc.pki.signer("default"), stack.pc.certificate_url(), False, False)
    response = stack.host.post_webhook(body, headers)
    assert response.status_code == 400
    assert "JSON" in json.loads(response.get_body())["error"]
    assert _queue_empty(stack)


def test_event_without_resource_uri_is_400(stack):
    body = json.dumps({"EventName": "referral-created"}).encode()
    headers = signed_headers(body, stack.pc.pki.signer("default"), stack.pc.certificate_url(), False, False)
    response = stack.host.post_webhook(body, headers)
    assert response.status_code == 400
    assert "ResourceUri" in json.loads(response.get_body())["error"]
    assert _queue_empty(stack)


def test_oversized_body_is_413_and_enqueues_nothing(stack):
    body = json.dumps({"EventName": "referral-created", "ResourceUri": "x", "pad": "a" * 70000}).encode()
    headers = signed_headers(body, stack.pc.pki.signer("default"), stack.pc.certificate_url(), False, False)
    response = stack.host.post_webhook(body, headers)
    assert response.status_code == 413
    assert _queue_empty(stack)


def test_missing_signature_is_401(stack):
    body = json.dumps({"EventName": "referral-created", "ResourceUri": "https://x/referrals/1"}).encode()
    response = stack.host.post_webhook(body, {"Content-Type": "application/json"})
    assert response.status_code == 401
    assert _queue_empty(stack)


def test_lead_is_skipped_when_cosell_only(stack):
    lead = stack.pc.seed_referral(kind="lead")
    stack.deliver_and_drain(1)
    assert stack.opportunities() == []
    trail = wiring.container().store.audit_trail(lead["id"])
    assert [e.action for e in trail] == ["skipped"]
    assert "SYNC_COSELL_ONLY" in trail[0].message


def test_lead_is_synced_when_cosell_only_is_off(make_stack):
    stack = make_stack(SYNC_COSELL_ONLY="false")
    lead = stack.pc.seed_referral(kind="lead")
    stack.deliver_and_drain(1)
    # A lead comes in as a CRM lead, not as an opportunity (tests/test_leads.py has the rest).
    assert stack.opportunities() == []
    link = wiring.container().store.get_link(lead["id"])
    assert link is not None and link.crm_id is not None
    found = stack.crm().lead_records().get_lead(link.crm_id)
    assert found is not None and found.referral_id == lead["id"]


def test_cross_on_validation_failure_then_check_never_two_marks(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.opportunities()[0]["name"].endswith(CHECK)

    stack.pc.portal_update(referral["id"], {"details": {"currency": "XYZ"}})
    stack.deliver_and_drain(2)
    row = stack.opportunities()[0]
    assert row["name"] == f"{referral['name']} {CROSS}"
    assert "XYZ" in row["audit"].splitlines()[0]
    assert stack.audit_actions(referral["id"])[0] == "failed"

    stack.view.reset_counters()
    stack.pc.send_event(referral["id"], "referral-updated")  # same bad data again: no retry loop
    stack.deliver_and_drain(3)
    assert stack.crm_writes() == 0

    stack.pc.portal_update(referral["id"], {"details": {"currency": "EUR"}})
    stack.deliver_and_drain(4)
    row = stack.opportunities()[0]
    assert row["name"] == f"{referral['name']} {CHECK}"
    assert row["name"].count(CHECK) + row["name"].count(CROSS) == 1
    assert row["currency"] == "EUR"


def test_checkmark_disabled_leaves_the_name_alone(make_stack):
    stack = make_stack(CHECKMARK_ENABLED="false")
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.opportunities()[0]["name"] == referral["name"]


def test_crm_throttling_is_waited_out(stack):
    stack.view.inject_throttling(count=2, retry_after=0.2)
    stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert len(stack.opportunities()) == 1
    assert stack.view.faults() == 2


def test_partner_center_outage_leaves_the_job_for_retry(stack):
    stack.pc.dispatch_mode = "sync"
    referral = stack.pc.seed_referral(kind="cosell")
    # No Retry-After: an outage counts as a failed attempt (a 503 naming a delay defers the job instead).
    stack.pc.add_fault(status=503, count=100, retry_after=None)
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 1 and stack.host.queue.depth() == 1
    assert stack.opportunities() == []
    stack.pc.clear_faults()
    stack.host.drain()
    assert [r["referral_id"] for r in stack.opportunities()] == [referral["id"]]


def test_health_and_status(stack):
    assert stack.host.get("health").status_code == 200
    stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    status = stack.status()
    assert status["links"]["total"] == 1 and status["links"]["ok"] == 1
    assert status["queue"] == {"depth": 0, "poison": 0}
    assert status["paused"] is None
    secrets = [PC_TOKEN, *stack.view.secrets()]
    assert len(secrets) > 1
    for secret in secrets:
        assert secret not in json.dumps(status)


def test_invalid_new_referral_is_audited_not_created(stack):
    referral = stack.pc.seed_referral(kind="cosell", details={"currency": "XYZ"})
    stack.deliver_and_drain(1)
    assert stack.opportunities() == []
    trail = wiring.container().store.audit_trail(referral["id"])
    assert trail[0].action == "failed" and "XYZ" in trail[0].message
    link = wiring.container().store.get_link(referral["id"])
    assert link.last_status == "failed" and "XYZ" in link.last_error


def test_secrets_never_reach_logs_or_audit(stack, caplog):
    caplog.set_level("DEBUG")
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.pc.add_fault(status=503, count=100, retry_after=30)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "changed"}})
    stack.pc.wait_for_deliveries(2, timeout=10)
    stack.host.drain(max_rounds=1)
    audit = json.dumps([e.message for e in wiring.container().store.audit_trail(referral["id"])])
    for secret in (PC_TOKEN, *stack.view.secrets(), "AccountKey="):
        assert secret not in caplog.text
        assert secret not in audit


def test_referral_without_close_date_gets_no_invented_one_in_partner_center(stack):
    """Salesforce requires CloseDate, so its adapter fills one in (today + 30 days); Dynamics 365 leaves it
    empty. Either way, a date the connector made up is not the partner's estimate and never reaches Partner
    Center, whichever side changes next."""
    referral = stack.pc.seed_referral(kind="cosell", details={"closingDateTime": None})
    stack.deliver_and_drain(1)
    placeholder = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    row = stack.opportunities()[0]
    assert row["close_date"] == {"dynamics": None, "salesforce": placeholder}[stack.crm_name]

    stack.pc.reset_counters()
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    stack.poll()  # the echo of our update
    stack.host.drain()
    assert stack.opportunities()[0]["notes"] == "Scope doubled"
    assert stack.pc.writes == 0
    assert "closingDateTime" not in stack.pc.referral(referral["id"])["details"]

    stack.seller().edit(row["id"], deal_value=123.0)
    stack.poll()
    stack.host.drain()
    assert stack.pc.writes == 1
    details = stack.pc.referral(referral["id"])["details"]
    assert details["dealValue"] == 123.0 and "closingDateTime" not in details
    assert stack.opportunities()[0]["close_date"] == row["close_date"]
