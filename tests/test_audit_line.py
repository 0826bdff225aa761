"""CRM_AUDIT_LINE: a seller's edit that only goes to Partner Center costs one CRM read and no CRM write (issue 10's
"1 read on the other side"), unless the record still reports a failure or the setting asks for a line per sync.
Every sync stays in the audit trail (SyncAudit) either way."""

from __future__ import annotations

import pytest

from shared import wiring
from shared.domain.checkmark import CHECK, CROSS
from tests.crm_seller import DEFAULT_HELP
from tests.e2e_stack import CRMS
from tests.test_crm_to_pc import _ours, _settle, _synced


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _edit_and_sync(stack, crm_id: str, **fields) -> None:
    stack.seller().edit(crm_id, **fields)
    stack.poll()
    run = stack.host.drain()
    assert run.failed == 0, run.errors


def test_a_sellers_edit_reaches_partner_center_without_a_crm_write(stack):
    crm_id = _synced(stack)
    before = stack.opportunity(crm_id)
    writes = stack.crm_writes()
    _edit_and_sync(stack, crm_id, deal_value=777.0)
    referral = _ours(stack, crm_id)
    assert referral["details"]["dealValue"] == 777.0
    # The seller's own edit is all that changed on the record: no write-back, no new Audit line.
    assert stack.crm_writes() == writes + 1  # the seller's edit
    assert stack.opportunity(crm_id)["audit"] == before["audit"]
    assert CHECK in stack.opportunity(crm_id)["name"]
    trail = wiring.container().store.audit_trail(referral["id"])
    assert trail[0].action == "updated" and "deal_value" in trail[0].fields


def test_every_sync_writes_its_line_when_asked(make_stack):
    stack = make_stack(CRM_AUDIT_LINE="every-sync")
    crm_id = _synced(stack)
    lines = stack.opportunity(crm_id)["audit"].splitlines()
    _edit_and_sync(stack, crm_id, deal_value=777.0)
    after = stack.opportunity(crm_id)["audit"].splitlines()
    assert len(after) == len(lines) + 1 and CHECK in after[0]


def test_the_first_success_after_a_failure_is_written_on_the_record(make_stack):
    stack = make_stack(CHECKMARK_ENABLED="false")  # no mark to change: only the Audit line tells the seller
    crm_id = _synced(stack, contact_email=None)
    stack.seller().request_help(crm_id, DEFAULT_HELP)  # Microsoft's help needs a customer contact's e-mail
    stack.poll()
    stack.host.drain()
    assert CROSS in stack.opportunity(crm_id)["audit"].splitlines()[0]
    _settle(stack)
    stack.seller().request_help(crm_id, None)
    _edit_and_sync(stack, crm_id, deal_value=900.0)
    newest = stack.opportunity(crm_id)["audit"].splitlines()[0]
    assert CHECK in newest and CROSS not in newest
    assert _ours(stack, crm_id)["details"]["dealValue"] == 900.0
