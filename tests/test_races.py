"""Races between the connector's writes and a person's edits: nothing a person saves may be lost."""

from __future__ import annotations

from shared import wiring


def test_seller_edit_saved_during_our_write_back_still_reaches_partner_center(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    crm = wiring.container().engine.crm
    original = crm.update_opportunity
    raced = {"done": False}

    def write_then_seller_saves(current, desired, fields):
        original(current, desired, fields)
        if not raced["done"]:
            raced["done"] = True
            stack.seller().edit(crm_id, deal_value=999999.0)  # saved right after our write-back
        return crm.get_opportunity(crm_id)  # so our read after the write already shows the seller's edit

    monkeypatch.setattr(crm, "update_opportunity", write_then_seller_saves)
    stack.poll()
    stack.host.drain()
    monkeypatch.setattr(crm, "update_opportunity", original)
    stack.poll()
    stack.host.drain()
    referral = next(r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id)
    assert referral["details"]["dealValue"] == 999999.0


def test_a_busy_pair_is_retried_later_without_counting_as_a_failure(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    store = wiring.container().store
    assert store.acquire_lease(f"referral:{referral['id']}", "another-worker", 60)
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 0 and run.processed == 1
    assert stack.host.queue.depth() == 1  # back on the queue, as a new message with a fresh dequeue count
    assert stack.opportunities() == []
    store.release_lease(f"referral:{referral['id']}", "another-worker")
    stack.host.drain()
    assert [o["referral_id"] for o in stack.opportunities()] == [referral["id"]]
