"""What a seller does to a deal in the CRM, and what Partner Center then shows (issue 11)."""

from __future__ import annotations

import pytest

from tests.crm_seller import SalesforceSeller
from tests.test_crm_to_pc import _ours, _settle


@pytest.fixture
def crm() -> str:
    return "salesforce"


def test_a_salesforce_deal_started_at_prospecting_syncs_without_status_notes(stack, monkeypatch):
    """Prospecting is Salesforce's usual first stage; a partner's own deal is accepted in Partner Center from the
    start, so the stage is not a status to send back, and later edits add no note about it."""
    monkeypatch.setattr(SalesforceSeller, "OPEN_STAGE", "Prospecting")
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.poll()
    stack.host.drain()
    _settle(stack)
    stack.seller().edit(crm_id, deal_value=260000.0)
    stack.poll()
    stack.host.drain()
    _settle(stack)
    assert _ours(stack, crm_id)["details"]["dealValue"] == 260000.0
    assert "does not allow" not in (stack.opportunity(crm_id)["audit"] or "")


def test_a_partner_deal_still_at_prospecting_is_closed_when_partner_center_closes_it(stack, monkeypatch):
    monkeypatch.setattr(SalesforceSeller, "OPEN_STAGE", "Prospecting")
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.poll()
    stack.host.drain()
    _settle(stack)
    stack.pc.portal_update(_ours(stack, crm_id)["id"], {"status": "Closed", "substatus": "Won"})
    _settle(stack)
    assert stack.opportunity(crm_id)["state"] == "won"
