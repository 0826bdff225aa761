"""Partner Center -> Dynamics 365, end to end: a signed webhook from the Partner Center emulator reaches
the real function app over HTTP, the job goes through the Azurite queue to the worker, and the
opportunity lands in the Dataverse emulator. Writes are counted in the emulators."""

from __future__ import annotations

import json

from emulators.partner_center_dispatch import signed_headers
from shared import wiring
from shared.domain.checkmark import CHECK, CROSS
from shared.domain.mapping import mapped_values, referral_to_opportunity
from shared.domain.referral import Referral
from tests.e2e_stack import DV_TOKEN, PC_TOKEN, Stack


def test_signed_webhook_creates_opportunity_with_every_mapped_field(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.endpoint.responses == [202]

    rows = stack.opportunities()
    assert len(rows) == 1
    row = rows[0]
    assert row["name"] == f"{referral['name']} {CHECK}"
    assert row["new_referralidentifier"] == referral["id"]
    assert row["new_syncwithpartnercenter"] is True
    assert referral["id"] in row["new_referrallink"]
    assert row["new_howcanmicrosofthelp"] == 100000001  # CustomerTechnicalArchitecture
    assert "Created from Partner Center referral" in row["new_audit"]

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

    accounts = stack.dv.table("accounts")
    assert [a["name"] for a in accounts] == [referral["customerProfile"]["name"]]
    assert accounts[0]["address1_country"] == referral["customerProfile"]["address"]["country"]
    assert stack.audit_actions(referral["id"]) == ["created"]


def test_same_event_delivered_twice_makes_one_opportunity(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.dv.reset_counters()
    stack.pc.redeliver(referral["id"])
    stack.deliver_and_drain(2)
    assert len(stack.opportunities()) == 1
    assert stack.dv_writes() == 0
    assert stack.audit_actions(referral["id"]) == ["unchanged", "created"]


def test_concurrent_deliveries_make_one_opportunity(stack):
    stack.pc.dispatch_mode = "sync"
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.redeliver(referral["id"])
    stack.pc.redeliver(referral["id"])
    assert stack.host.queue.depth() == 3
    stack.deliver_and_drain(3, parallel=3)
    assert len(stack.opportunities()) == 1
    assert len(stack.dv.table("accounts")) == 1
    emails = [c.get("emailaddress1") for c in stack.dv.table("contacts")]
    assert len(emails) == len(set(emails))
    assert stack.audit_actions(referral["id"]).count("created") == 1


def test_referral_update_makes_one_crm_update(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.dv.reset_counters()
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 99000, "notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    counters = stack.dv.counters()
    assert counters["tables"]["opportunities"]["updates"] == 1
    assert stack.dv_writes() == 1
    row = stack.opportunities()[0]
    assert float(row["estimatedvalue"]) == 99000
    assert row["description"] == "Scope doubled"
    assert row["new_audit"].splitlines()[0].endswith("Updated from Partner Center: deal_value, notes")
    assert stack.audit_actions(referral["id"])[0] == "updated"


def test_status_change_in_partner_center_closes_the_opportunity(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.pc.portal_update(referral["id"], {"status": "Closed", "substatus": "Won"})
    stack.deliver_and_drain(2)
    row = stack.opportunities()[0]
    assert (row["statecode"], row["statuscode"]) == (1, 3)


def test_no_op_event_makes_zero_crm_writes(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.dv.reset_counters()
    stack.pc.send_event(referral["id"], "referral-updated")
    stack.deliver_and_drain(2)
    assert stack.dv_writes() == 0
    assert stack.audit_actions(referral["id"])[0] == "unchanged"


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
    rows = stack.opportunities()
    assert len(rows) == 1 and rows[0]["new_referralidentifier"] == lead["id"]


def test_cross_on_validation_failure_then_check_never_two_marks(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.opportunities()[0]["name"].endswith(CHECK)

    stack.pc.portal_update(referral["id"], {"details": {"currency": "XYZ"}})
    stack.deliver_and_drain(2)
    row = stack.opportunities()[0]
    assert row["name"] == f"{referral['name']} {CROSS}"
    assert "XYZ" in row["new_audit"].splitlines()[0]
    assert stack.audit_actions(referral["id"])[0] == "failed"

    stack.dv.reset_counters()
    stack.pc.send_event(referral["id"], "referral-updated")  # same bad data again: no retry loop
    stack.deliver_and_drain(3)
    assert stack.dv_writes() == 0

    stack.pc.portal_update(referral["id"], {"details": {"currency": "EUR"}})
    stack.deliver_and_drain(4)
    name = stack.opportunities()[0]["name"]
    assert name == f"{referral['name']} {CHECK}"
    assert name.count(CHECK) + name.count(CROSS) == 1


def test_checkmark_disabled_leaves_the_name_alone(make_stack):
    stack = make_stack(CHECKMARK_ENABLED="false")
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.opportunities()[0]["name"] == referral["name"]


def test_crm_throttling_is_waited_out(stack):
    stack.dv.inject_fault(status=429, count=2, retry_after=0.2)
    stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert len(stack.opportunities()) == 1
    assert stack.dv.counters()["faults"] == 2


def test_partner_center_outage_leaves_the_job_for_retry(stack):
    stack.pc.dispatch_mode = "sync"
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.add_fault(status=503, count=100, retry_after=30)
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 1 and stack.host.queue.depth() == 1
    assert stack.opportunities() == []
    stack.pc.clear_faults()
    stack.host.drain()
    assert [r["new_referralidentifier"] for r in stack.opportunities()] == [referral["id"]]


def test_health_and_status(stack):
    assert stack.host.get("health").status_code == 200
    stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    status = json.loads(stack.host.get("status").get_body())
    assert status["links"]["total"] == 1 and status["links"]["ok"] == 1
    assert status["queue"] == {"depth": 0, "poison": 0}
    assert PC_TOKEN not in json.dumps(status) and DV_TOKEN not in json.dumps(status)


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
    for secret in (PC_TOKEN, DV_TOKEN, "AccountKey="):
        assert secret not in caplog.text
        assert secret not in audit
