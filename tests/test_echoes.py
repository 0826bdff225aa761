"""Echoes cost nothing: the poll that sees our own write to the CRM, and the webhook Partner Center sends for
our own write to a referral, end before any API call (issue 10). Both CRMs."""

from __future__ import annotations

import pytest

from shared import wiring
from tests.e2e_stack import CRMS
from tests.test_crm_to_pc import _ours, _synced


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _requests(stack) -> tuple[int, int]:
    """API requests Partner Center and the CRM have received so far (sign-ins and the webhook signing
    certificate, which the app fetches to check a webhook, excluded)."""
    pc_log = [path for _, path in stack.pc.request_log if not path.startswith(("/cert/", "/pki/"))]
    crm_log = [path for _, path in stack.view.emulator.request_log if "oauth2/token" not in path]
    return len(pc_log), len(crm_log)


def test_the_poll_of_our_own_write_back_costs_only_the_poll(stack):
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.poll()
    stack.host.drain()  # the referral is created and its id written back: a new version of the CRM row
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    pc_before, crm_before = _requests(stack)
    stack.poll()
    assert stack.host.queue.depth() == 1  # the poll saw the write-back
    stack.host.drain()
    assert _requests(stack) == (pc_before, crm_before + 1)  # the poll's one query, and nothing for the job
    assert _ours(stack, crm_id)["id"] == stack.opportunity(crm_id)["referral_id"]


def test_the_webhook_of_our_own_referral_update_costs_nothing(stack):
    crm_id = _synced(stack)
    stack.seller().edit(crm_id, deal_value=260000.0)
    stack.pc.dispatcher.mode = "hold"
    stack.poll()
    stack.host.drain()  # the deal value goes to Partner Center
    assert _ours(stack, crm_id)["details"]["dealValue"] == 260000.0
    pc_before, crm_before = _requests(stack)
    stack.pc.dispatcher.mode = "async"
    assert stack.pc.dispatcher.release() == 1  # its referral-updated webhook
    stack.pc.dispatcher.wait_idle(timeout=10)
    assert stack.host.queue.depth() == 1
    stack.host.drain()
    assert _requests(stack) == (pc_before, crm_before)
    actions = [e.action for e in wiring.container().store.audit_trail(_ours(stack, crm_id)["id"])]
    assert "echo" not in actions  # counted in the log, not audited


def test_a_real_change_after_our_write_is_not_taken_for_an_echo(stack):
    crm_id = _synced(stack)
    referral = _ours(stack, crm_id)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Microsoft's note"}})
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    assert stack.opportunity(crm_id)["notes"] == "Microsoft's note"
    stack.seller().edit(crm_id, notes="The seller's note")
    stack.poll()
    stack.host.drain()
    assert _ours(stack, crm_id)["details"]["notes"] == "The seller's note"


def test_the_events_of_a_co_sell_create_with_microsofts_help_cost_nothing(stack):
    # Asking for Microsoft's help makes two referrals: the partner's and one for Microsoft on the same
    # engagement. Each raises its own event. Before, the event of the referral for Microsoft was read back from
    # Partner Center only to be skipped (one call per co-sell create); now its row, written with the link, tells.
    stack.pc.dispatcher.mode = "hold"
    crm_id = stack.seller().create_flagged()  # the seller's default asks for Microsoft's help
    stack.poll()
    stack.host.drain()
    referral = _ours(stack, crm_id)
    engagement = [r for r in stack.pc.referrals() if r["engagementId"] == referral["engagementId"]]
    assert len(engagement) == 2
    pc_before, crm_before = _requests(stack)
    stack.pc.dispatcher.mode = "async"
    assert stack.pc.dispatcher.release() == 2
    stack.pc.dispatcher.wait_idle(timeout=10)
    assert sorted(d.referral_id for d in stack.pc.deliveries()) == sorted(r["id"] for r in engagement)
    assert stack.host.drain().processed == 2
    assert _requests(stack) == (pc_before, crm_before)
    # The row of the referral for Microsoft is no link: status counts and the link list leave it out.
    assert [link.referral_id for link in wiring.container().store.iter_links()] == [referral["id"]]
