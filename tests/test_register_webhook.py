"""`python -m shared register-webhook` against the Partner Center emulator and the running app over HTTP: it shows
the current registration, refuses to take the tenant's one registration from another endpoint without --force,
registers test-created with the referral events, and proves with a signed test event that deliveries reach the app
and pass its signature check (the app records the verified event in the state table)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests

from shared import wiring
from shared.__main__ import main
from tests.e2e_stack import PC_TOKEN, Stack

PRODUCTION = "https://cosell-prod.azurewebsites.net/api/webhooks/partner-center"
REFERRAL_EVENTS = {"referral-created", "referral-updated", "related-referral-created", "related-referral-updated"}


def _registration(stack: Stack) -> dict:
    answer = requests.get(
        f"{stack.pc.url}/webhooks/v1/registration", headers={"Authorization": f"Bearer {PC_TOKEN}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _point_partner_center_at(stack: Stack, url: str) -> None:
    answer = requests.put(
        f"{stack.pc.url}/webhooks/v1/registration",
        headers={"Authorization": f"Bearer {PC_TOKEN}"},
        json={"WebhookUrl": url, "WebhookEvents": sorted(REFERRAL_EVENTS)},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text


def test_a_registration_pointing_elsewhere_is_kept_unless_forced(stack, capsys):
    _point_partner_center_at(stack, PRODUCTION)
    ours = stack.endpoint.webhook_url

    assert main(["register-webhook", "--url", ours]) == 1
    out, err = capsys.readouterr()
    assert f"Current registration: {PRODUCTION}" in out
    assert f"already sends this tenant's events to {PRODUCTION}" in err and "--force" in err
    assert _registration(stack)["WebhookUrl"] == PRODUCTION, "production keeps its events"
    assert wiring.container().store.webhook_registration() is None
    assert not [d for d in stack.pc.deliveries() if d.event_name == "test-created"], "no test event was sent"

    before = datetime.now(UTC) - timedelta(seconds=1)
    assert main(["register-webhook", "--url", ours, "--force", "--wait", "10"]) == 0
    out = capsys.readouterr().out
    assert f"Replaced the registration that pointed to {PRODUCTION}" in out
    assert "reached the app and passed the signature check" in out
    registered = _registration(stack)
    assert registered["WebhookUrl"] == ours
    assert set(registered["WebhookEvents"]) == REFERRAL_EVENTS | {"test-created"}

    record = wiring.container().store.webhook_registration()
    assert record is not None and record.url == ours
    assert set(record.events) == REFERRAL_EVENTS | {"test-created"}
    assert record.registered_at is not None and record.registered_at >= before
    assert record.last_test_event_at is not None and record.last_test_event_at >= before
    (test_event,) = [d for d in stack.pc.deliveries() if d.event_name == "test-created"]
    assert record.last_test_event_uri.endswith(test_event.correlation_id)
    assert test_event.attempts[-1]["responseCode"] == 202


def test_rerunning_for_the_same_url_needs_no_force_and_check_does_only_the_round_trip(stack, capsys):
    ours = stack.endpoint.webhook_url
    assert main(["register-webhook", "--url", ours, "--no-check"]) == 0
    assert "Registered:" in capsys.readouterr().out
    assert main(["register-webhook", "--url", ours + "/", "--no-check"]) == 0
    assert "Already registered" in capsys.readouterr().out
    updates = stack.pc.counters().get("webhook_update", 0) + stack.pc.counters().get("webhook_create", 0)

    assert main(["register-webhook", "--check", "--wait", "10"]) == 0
    assert "passed the signature check" in capsys.readouterr().out
    assert stack.pc.counters().get("webhook_update", 0) + stack.pc.counters().get("webhook_create", 0) == updates
    assert wiring.container().store.webhook_registration().last_test_event_at is not None


def test_check_without_test_created_in_the_registration_says_what_to_do(stack, capsys):
    assert main(["register-webhook", "--check"]) == 1  # the stack registered the referral events only
    assert "does not include test-created" in capsys.readouterr().out


def test_a_test_event_the_app_cannot_verify_is_reported_not_recorded(make_stack, capsys):
    # The app trusts certificates from another host only: Partner Center's signed event is refused (401).
    stack = make_stack(PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES="https://elsewhere.example/cert/")
    stack.pc.delivery_attempts = 2
    assert main(["register-webhook", "--url", stack.endpoint.webhook_url, "--wait", "3"]) == 1
    out, err = capsys.readouterr()
    assert "Registered:" in out
    assert "was not recorded by the app" in err and "401" in err and "signature" in err
    record = wiring.container().store.webhook_registration()
    assert record is not None and record.url == stack.endpoint.webhook_url and record.last_test_event_at is None
