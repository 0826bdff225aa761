"""The help request of a referral Microsoft shared is Microsoft's (issue 11): a seller changing "How can
Microsoft help?" on it neither overwrites Microsoft's assistance code nor adds a "Microsoft referral" to
Microsoft's own engagement. Both CRMs."""

from __future__ import annotations

import pytest

from tests.e2e_stack import CRMS
from tests.test_crm_to_pc import _settle


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def test_changing_the_help_request_of_a_microsoft_referral_sends_nothing_to_microsoft(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    _settle(stack)
    [row] = stack.opportunities()
    code_before = (stack.pc.referral(referral["id"]).get("inviteContext") or {}).get("assistanceRequestCode")
    engagement = [r["id"] for r in stack.pc.referrals() if r.get("engagementId") == referral["engagementId"]]
    other = "GeneralOrOther" if code_before != "GeneralOrOther" else "ProofOfConceptOrDemo"
    stack.seller().request_help(row["id"], other)
    stack.poll()
    stack.host.drain()
    _settle(stack)
    after = stack.pc.referral(referral["id"])
    assert (after.get("inviteContext") or {}).get("assistanceRequestCode") == code_before
    assert [r["id"] for r in stack.pc.referrals() if r.get("engagementId") == referral["engagementId"]] == engagement
    assert "Microsoft" in stack.opportunity(row["id"])["audit"].splitlines()[0]  # the seller is told why
