"""Partner Center's current co-sell fields (issue 11, item 9), both ways, on both CRMs, end to end: solution
area, solution play, partner role (services co-sell) and the customer's marketplace purchase intent. Before this
they were neither read from a referral nor sent with one."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulators.package_mapping import column, entry
from tests.crm_view import stored_row
from tests.e2e_stack import CRMS
from tests.test_crm_to_pc import _ours, _settle

SERVICES = {
    "solutionArea": "AI Business Solutions",
    "solutionPlay": "Copilot and agents at work",
    "partnerRole": "Lead",
}
INTENT = "CustomerMarketplaceIntent"
OTHER_ATTRIBUTE = {"id": "Manufacturing", "type": "SubIndustry"}


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _intent_value(stack, code: str) -> Any:
    """The CRM's own choice / picklist value of a purchase intent code."""
    return entry(stack.crm_name, "purchase_intent")["values"][code]


def _shown(stack, crm_id: str) -> dict[str, Any]:
    row = stored_row(stack, crm_id)
    names = ("solution_area", "solution_play", "partner_role", "purchase_intent")
    return {name: row.get(column(stack.crm_name, name)) for name in names}


def _set_columns(stack, crm_id: str, **fields: Any) -> None:
    """A seller sets the new columns in the CRM (neutral field name -> the CRM's value)."""
    body = {column(stack.crm_name, name): value for name, value in fields.items()}
    seller = stack.seller()
    if stack.crm_name == "dynamics":
        response = requests.patch(
            f"{seller.base}/opportunities({crm_id})", json=body, headers=seller.headers, timeout=10
        )
        assert response.status_code in (200, 204), response.text
    else:
        seller._update(crm_id, body)


def _intent(referral: dict[str, Any]) -> list[str]:
    requirements = (referral.get("details") or {}).get("requirements") or {}
    attributes = (requirements.get("additionalRequirements") or {}).get("attributes") or []
    return [a["id"] for a in attributes if a.get("type") == INTENT]


def test_a_referral_brings_its_current_fields_into_the_crm(stack):
    attributes = [OTHER_ATTRIBUTE, {"id": "HaveNotDecided", "type": INTENT}]
    referral = stack.pc.seed_referral(
        kind="cosell", **SERVICES, details={"requirements": {"additionalRequirements": {"attributes": attributes}}}
    )
    stack.deliver_and_drain(1)
    _settle(stack)
    [row] = stack.opportunities()
    assert _shown(stack, row["id"]) == {
        "solution_area": "AI Business Solutions",
        "solution_play": "Copilot and agents at work",
        "partner_role": "Lead",
        "purchase_intent": _intent_value(stack, "HaveNotDecided"),
    }

    stack.pc.portal_update(referral["id"], {"solutionPlay": "Scale with cloud and AI endpoints"})
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    assert _shown(stack, row["id"])["solution_play"] == "Scale with cloud and AI endpoints"


def test_the_crm_sends_its_current_fields_with_a_new_referral_and_later_changes(stack):
    seller = stack.seller()
    crm_id = seller.create_flagged(flagged=False)
    _set_columns(
        stack,
        crm_id,
        solution_area="AI Business Solutions",
        solution_play="Copilot and agents at work",
        partner_role="Lead",
        purchase_intent=_intent_value(stack, "Yes"),
    )
    _set_flag(stack, crm_id)
    stack.poll()
    stack.host.drain()
    _settle(stack)
    referral = _ours(stack, crm_id)
    assert {k: referral.get(k) for k in SERVICES} == SERVICES
    assert _intent(referral) == ["Yes"]

    # Partner Center holds another attribute too: changing the intent keeps it.
    stack.pc.portal_update(
        referral["id"],
        {"details": {"requirements": {"additionalRequirements": {"attributes": [OTHER_ATTRIBUTE, *_attrs("Yes")]}}}},
        raise_event=False,
    )
    _set_columns(stack, crm_id, purchase_intent=_intent_value(stack, "No"), partner_role="Support")
    stack.poll()
    stack.host.drain()
    after = stack.pc.referral(referral["id"])
    assert _intent(after) == ["No"]
    assert OTHER_ATTRIBUTE in after["details"]["requirements"]["additionalRequirements"]["attributes"]
    assert after["partnerRole"] == "Support"


def test_validation_explains_that_services_cosell_needs_all_three(stack):
    seller = stack.seller()
    crm_id = seller.create_flagged(flagged=False)
    _set_columns(stack, crm_id, partner_role="Lead")
    _set_flag(stack, crm_id)
    stack.poll()
    stack.host.drain()

    assert [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id] == []
    first_line = stack.opportunity(crm_id)["audit"].splitlines()[0]
    assert "solution area, solution play and partner role together" in first_line
    assert "set the solution area and the solution play too" in first_line


def _attrs(code: str) -> list[dict[str, str]]:
    return [{"id": code, "type": INTENT}]


def _set_flag(stack, crm_id: str) -> None:
    _set_columns(stack, crm_id, sync_enabled=True)
