"""Operator commands (python -m shared ...) against the emulators and Azurite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.__main__ import main
from shared.ports import Job
from shared.store.queue import encode_job
from tests.crm_view import DV_TOKEN

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_has_help():
    for command in ("status", "backfill", "replay-poison", "register-webhook"):
        result = subprocess.run(
            [sys.executable, "-m", "shared", command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize("argv", [["backfill"], ["backfill", "--from", "crm"]], ids=["default", "from-crm"])
def test_backfill_enqueues_each_flagged_opportunity_once_and_syncs_them(stack, capsys, argv):
    seller = stack.seller()
    flagged = {seller.create_flagged(help_code=None) for _ in range(3)}
    seller.create_flagged(flagged=False)
    assert main(argv) == 0
    assert "done: 3 jobs" in capsys.readouterr().out
    assert {job.record_id for job in stack.host.queue.peek_jobs()} == flagged
    stack.host.drain()
    assert {r["externalReferenceId"] for r in stack.pc.referrals()} == flagged

    # Again, once the webhooks our creates raise are through: the same jobs, each a no-op.
    stack.deliver_and_drain(3)
    stack.view.reset_counters()
    pc_writes = stack.pc.writes
    assert main(argv) == 0
    assert "done: 3 jobs" in capsys.readouterr().out
    stack.host.drain()
    assert len(stack.pc.referrals()) == 3
    assert stack.pc.writes == pc_writes and stack.crm_writes() == 0


def test_replay_poison_moves_jobs_back(stack, capsys):
    stack.host.queue.poison.send_message(encode_job(Job("crm-opportunity", "abc", reason="test")))
    stack.host.queue.poison.send_message("{not json")
    assert main(["replay-poison"]) == 0
    out = capsys.readouterr().out
    assert "replayed 1 job(s)" in out and "dropped 1 unreadable" in out
    assert [j.record_id for j in stack.host.queue.peek_jobs()] == ["abc"]
    assert stack.host.queue.poison_depth() == 0


def test_register_webhook_creates_then_replaces(stack, capsys):
    # The stack's own endpoint holds the tenant's registration: taking it needs --force (test_register_webhook.py).
    first = ["register-webhook", "--url", "https://example.org/api/webhooks/partner-center", "--no-check"]
    assert main(first) == 1
    assert main([*first, "--force"]) == 0
    assert main(["register-webhook", "--url", "https://example.org/api/webhooks/v2", "--no-check", "--force"]) == 0
    capsys.readouterr()
    assert main(["register-webhook", "--show"]) == 0
    current = json.loads(capsys.readouterr().out)
    assert current["WebhookUrl"] == "https://example.org/api/webhooks/v2"
    assert "related-referral-updated" in current["WebhookEvents"]


def test_status_prints_json(stack, capsys):
    assert main(["status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["queue"] == {"depth": 0, "poison": 0}


def test_reconcile_recovers_a_lost_webhook(stack, capsys):
    stack.pc.dispatch_mode = "off"  # Partner Center gave up delivering
    referral = stack.pc.seed_referral(kind="cosell")
    assert main(["reconcile"]) == 0
    assert "1 job(s) enqueued" in capsys.readouterr().out
    stack.host.drain()
    assert [r["referral_id"] for r in stack.opportunities()] == [referral["id"]]
    assert main(["reconcile"]) == 0  # nothing new since: nothing enqueued
    assert "0 job(s) enqueued" in capsys.readouterr().out


def test_status_reports_a_refused_credential_until_it_works_again(stack, capsys):
    dataverse = stack.view.emulator
    dataverse.set_required_token("rotated-by-an-admin")  # the app's Dataverse token no longer works
    stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 1 and stack.host.queue.depth() == 1  # the host retries it
    assert main(["status"]) == 0
    failure = json.loads(capsys.readouterr().out)["credentials"]["lastFailure"]
    assert failure["service"] == "Dataverse" and failure["at"]
    assert DV_TOKEN not in failure["message"]

    dataverse.set_required_token(DV_TOKEN)
    stack.host.drain()
    assert main(["status"]) == 0
    assert json.loads(capsys.readouterr().out)["credentials"]["lastFailure"] is None


def test_reconcile_works_where_partner_center_refuses_the_date_filter(stack, capsys, monkeypatch, caplog):
    monkeypatch.setattr(stack.pc, "filterable", stack.pc.filterable - {"updatedDateTime"})
    stack.pc.dispatch_mode = "off"
    referral = stack.pc.seed_referral(kind="cosell")
    assert main(["reconcile"]) == 0
    assert "1 job(s) enqueued" in capsys.readouterr().out
    assert "refused the updatedDateTime filter" in caplog.text
    stack.host.drain()
    assert [o["referral_id"] for o in stack.opportunities()] == [referral["id"]]
