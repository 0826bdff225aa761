"""Dataverse makes a closed opportunity read-only: writing to it means reopening it and closing it again.
Found by ``make chaos`` at 1,000 records: a job that died between the reopen and the close left the deal open
in Dynamics while Partner Center had it won, and every later job read the reopen as the seller's edit, which
Partner Center refuses, so the pair never converged. The connector now reopens a closed deal only to write
Partner Center's values (never for its own mark or audit line), and a reopen it did not live to close is
closed again by the next job."""

from __future__ import annotations

from shared import wiring
from shared.ports import KIND_CRM, Job
from tests.test_crash_recovery import _die_once
from tests.test_crm_to_pc import _ours, _settle, _synced


def _closes(stack) -> int:
    return sum(stack.view.emulator.counters()["actions"].values())


def test_a_deal_won_in_dynamics_is_not_reopened_to_record_the_sync(stack):
    crm_id = _synced(stack)
    audit_before = stack.opportunity(crm_id)["audit"]
    updates_before = stack.audit_actions(_ours(stack, crm_id)["id"]).count("updated")
    stack.seller().win(crm_id)
    stack.poll()
    stack.host.drain()
    _settle(stack)
    referral = _ours(stack, crm_id)
    assert (referral["status"], referral["substatus"]) == ("Closed", "Won")
    opportunity = stack.opportunity(crm_id)
    assert opportunity["state"] == "won"
    assert _closes(stack) == 1  # the seller's own close: no reopen, no second close activity
    assert opportunity["audit"] == audit_before  # the closed row is left as the seller closed it
    assert stack.audit_actions(referral["id"]).count("updated") == updates_before + 1  # in the audit trail


def test_a_job_that_dies_between_reopening_and_closing_a_deal_closes_it_on_the_next_job(stack, monkeypatch):
    crm_id = _synced(stack)
    referral = _ours(stack, crm_id)
    # The seller wins the deal while Microsoft's seller adds a note: the job sends the win to Partner Center
    # and must reopen the won deal to write the note.
    stack.seller().win(crm_id)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Microsoft's note"}}, raise_event=False)
    engine = wiring.container().engine
    _die_once(monkeypatch, engine.crm, "_close", "the worker died after reopening the deal")
    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))
    assert stack.host.drain(max_rounds=1).failed == 1
    assert stack.opportunity(crm_id)["state"] == "open"  # reopened, the note written, never closed again

    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))
    stack.host.drain()
    _settle(stack)
    opportunity = stack.opportunity(crm_id)
    assert opportunity["state"] == "won"
    assert opportunity["notes"] == "Microsoft's note"
    referral = _ours(stack, crm_id)
    assert (referral["status"], referral["substatus"]) == ("Closed", "Won")
    assert referral["details"]["notes"] == "Microsoft's note"


def test_a_referral_that_expires_closes_the_deal_once_and_its_echo_changes_nothing(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.pc.portal_update(referral["id"], {"status": "Closed", "substatus": "Expired"})
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    [row] = stack.opportunities()
    assert row["state"] == "lost"
    audit = row["audit"]
    reads = len(stack.view.emulator.request_log)
    stack.poll()  # sees the closed deal: Canceled reads back as the Expired Partner Center has, an echo
    stack.host.drain()
    assert len(stack.view.emulator.request_log) == reads + 1  # the poll's query, nothing for its job
    [row] = stack.opportunities()
    assert _closes(stack) == 1 and row["audit"] == audit
    assert (stack.pc.referral(referral["id"])["status"], stack.pc.referral(referral["id"])["substatus"]) == (
        "Closed",
        "Expired",
    )
    assert "not sent" not in stack.audit_actions(referral["id"])[0]
    trail = wiring.container().store.audit_trail(referral["id"])
    assert not any("not sent" in entry.message for entry in trail)
