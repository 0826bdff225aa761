"""Partner Center leads as CRM leads (``SYNC_COSELL_ONLY=false``), end to end on both CRMs.

A lead referral becomes a Dynamics 365 ``lead`` / Salesforce ``Lead`` (never an opportunity); what a seller then does
to the lead in the CRM, through the CRM's own API as the CRM's UI does it, reaches the referral: qualifying accepts
it, disqualifying declines it with a reason, and converting it moves the pair to the opportunity the conversion made,
whose later edits update the same referral.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from emulators.salesforce.schema import SalesforceError
from shared import wiring
from shared.__main__ import main
from shared.domain.leads import LeadOutcome, LeadRules, conversion_base, referral_move
from shared.ports import LINK_KIND_LEAD
from tests.crm_view import DV_TOKEN, SELLER_USERNAME
from tests.e2e_stack import CRMS, Stack

DV_API = "/api/data/v9.2"
SF_API = "/services/data/v62.0"
LEADS_ON = {"SYNC_COSELL_ONLY": "false"}


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


class LeadDesk:
    """A seller's view of the CRM's leads: read, qualify, disqualify and convert them over the CRM's own API."""

    def __init__(self, stack: Stack) -> None:
        self.crm = stack.crm_name
        self.emulator: Any = stack.view.emulator  # type: ignore[attr-defined]

    def leads(self) -> list[dict[str, Any]]:
        """Each lead as {id, referral_id, company, state, converted_opportunity}."""
        if self.crm == "dynamics":
            return [
                {
                    "id": row["leadid"],
                    "referral_id": row.get("new_referralidentifier"),
                    "company": row.get("companyname"),
                    "topic": row.get("subject"),
                    "state": f"{row['statecode']}/{row['statuscode']}",
                }
                for row in self.emulator.table("leads")
            ]
        return [
            {
                "id": row["Id"],
                "referral_id": row.get("Referral_Identfier__c"),
                "company": row.get("Company"),
                "topic": (row.get("Description") or "").split("\n", 1)[0],
                "state": row.get("Status"),
            }
            for row in self.emulator.records("Lead")
        ]

    def qualify(self, lead_id: str, create_opportunity: bool) -> str | None:
        """Qualify as the CRM's button does; the id of the opportunity it made, if any."""
        if self.crm == "dynamics":
            response = requests.post(
                f"{self.emulator.url}{DV_API}/leads({lead_id})/Microsoft.Dynamics.CRM.QualifyLead",
                json={
                    "CreateAccount": True,
                    "CreateContact": True,
                    "CreateOpportunity": create_opportunity,
                    "Status": 3,
                },
                headers=self._dv_headers(),
                timeout=10,
            )
            assert response.status_code == 200, response.text
            made = [r["opportunityid"] for r in response.json()["value"] if "opportunityid" in r]
            return made[0] if made else None
        # Salesforce qualifies a lead by converting it (the UI's Convert button; the emulator's control API).
        response = requests.post(
            f"{self.emulator.url}/_emulator/leads/{lead_id}/convert",
            json={"doNotCreateOpportunity": not create_opportunity},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()["ConvertedOpportunityId"]

    def disqualify(self, lead_id: str) -> None:
        if self.crm == "dynamics":
            path, body = f"{DV_API}/leads({lead_id})", {"statecode": 2, "statuscode": 6}  # No Longer Interested
            headers = self._dv_headers()
        else:
            path, body = f"{SF_API}/sobjects/Lead/{lead_id}", {"Status": "Closed - Not Converted"}
            headers = {"Authorization": f"Bearer {self.emulator.issue_token(SELLER_USERNAME)}"}
        response = requests.patch(f"{self.emulator.url}{path}", json=body, headers=headers, timeout=10)
        assert response.status_code == 204, response.text

    def lead_reads(self) -> int:
        """Requests that read leads (the poll's lead feed among them)."""
        if self.crm == "dynamics":
            return self.emulator.counters()["tables"]["leads"]["reads"]
        return sum(1 for _method, path in self.emulator.request_log if "FROM+Lead" in path or "FROM%20Lead" in path)

    @staticmethod
    def _dv_headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {DV_TOKEN}", "Accept": "application/json", "OData-Version": "4.0"}


DISQUALIFIED_REASON = {"dynamics": "Customer not interested", "salesforce": "Other"}


def _lead_in_crm(make_stack, **overrides: str) -> tuple[Stack, LeadDesk, dict[str, Any], dict[str, Any]]:
    stack = make_stack(**{**LEADS_ON, **overrides})
    referral = stack.pc.seed_referral(kind="lead")
    stack.deliver_and_drain(1)
    desk = LeadDesk(stack)
    (lead,) = desk.leads()
    return stack, desk, referral, lead


def _poll_and_drain(stack: Stack) -> None:
    stack.poll()
    run = stack.host.drain()
    assert stack.host.queue.depth() == 0, run.errors


def _messages(referral_id: str) -> list[str]:
    return [entry.message for entry in wiring.container().store.audit_trail(referral_id)]


def test_a_lead_becomes_a_crm_lead_not_an_opportunity(make_stack, crm):
    stack, _desk, referral, lead = _lead_in_crm(make_stack)

    assert stack.opportunities() == []  # the pipeline holds only what a seller has qualified
    assert lead["referral_id"] == referral["id"]
    assert lead["company"] == "Fabrikam Inc."
    assert lead["topic"] == "Fabrikam - Dynamics 365 field service evaluation"
    assert stack.audit_actions(referral["id"]) == ["created"]
    assert "lead created in the CRM" in _messages(referral["id"])[0]
    link = wiring.container().store.get_link(referral["id"])
    assert link is not None and link.crm_id == lead["id"] and link.crm_kind == LINK_KIND_LEAD


def test_with_cosell_only_a_lead_is_left_out_and_leads_are_not_polled(make_stack, crm):
    stack = make_stack()
    referral = stack.pc.seed_referral(kind="lead")
    stack.deliver_and_drain(1)
    desk = LeadDesk(stack)

    assert desk.leads() == [] and stack.opportunities() == []
    assert stack.audit_actions(referral["id"]) == ["skipped"]
    stack.poll()
    assert desk.lead_reads() == 0  # the poll costs nothing more for an org that keeps leads in Partner Center


def test_a_new_lead_costs_no_job_on_the_next_poll(make_stack, crm):
    stack, desk, referral, _lead = _lead_in_crm(make_stack)
    pc_reads = stack.pc.reads

    _poll_and_drain(stack)

    assert desk.lead_reads() >= 1  # the lead feed was read
    assert stack.pc.reads == pc_reads  # our own create came back as an echo and cost no Partner Center call
    assert stack.pc.referral(referral["id"])["status"] == "New"


def test_qualifying_the_lead_accepts_the_referral(make_stack, crm):
    stack, desk, referral, lead = _lead_in_crm(make_stack)

    desk.qualify(lead["id"], create_opportunity=False)
    _poll_and_drain(stack)

    after = stack.pc.referral(referral["id"])
    assert (after["status"], after["substatus"]) == ("Active", "Accepted")
    assert stack.opportunities() == []
    assert stack.audit_actions(referral["id"])[0] == "updated"
    assert "lead qualified: referral set to Active/Accepted" in _messages(referral["id"])[0]


def test_disqualifying_the_lead_declines_the_referral_with_a_reason(make_stack, crm):
    stack, desk, referral, lead = _lead_in_crm(make_stack)

    desk.disqualify(lead["id"])
    _poll_and_drain(stack)

    after = stack.pc.referral(referral["id"])
    assert (after["status"], after["substatus"]) == ("Closed", "Declined")
    assert after["statusReason"] == DISQUALIFIED_REASON[crm]
    # The echo of our write and a repeated poll change nothing more.
    writes = stack.pc.writes
    stack.deliver_and_drain(1)
    _poll_and_drain(stack)
    assert stack.pc.writes == writes


def test_a_converted_lead_hands_the_referral_to_its_opportunity(make_stack, crm):
    stack, desk, referral, lead = _lead_in_crm(make_stack)
    referrals = len(stack.pc.referrals())

    opportunity_id = desk.qualify(lead["id"], create_opportunity=True)
    assert opportunity_id is not None
    _poll_and_drain(stack)

    after = stack.pc.referral(referral["id"])
    assert (after["status"], after["substatus"]) == ("Active", "Accepted")
    (opportunity,) = stack.opportunities()
    assert opportunity["id"] == opportunity_id
    assert opportunity["referral_id"] == referral["id"] and opportunity["sync"] is True
    assert opportunity["referral_link"]
    # Accepted in Partner Center, so the opportunity is past the on-hold state it was made in.
    assert opportunity["stage"] == {"dynamics": "0/1", "salesforce": "Qualification"}[crm]
    assert not any("does not allow" in line for line in (opportunity["audit"] or "").splitlines())
    link = wiring.container().store.get_link(referral["id"])
    assert link is not None and link.crm_id == opportunity_id and link.crm_kind is None and link.last_status == "ok"

    # The seller works the deal on the opportunity: the edit reaches the same referral.
    stack.seller().edit(opportunity_id, deal_value=52000)
    stack.pc.wait_for_deliveries(1, timeout=10)  # the webhooks of the merge's writes
    _poll_and_drain(stack)

    assert stack.pc.referral(referral["id"])["details"]["dealValue"] == 52000
    assert len(stack.pc.referrals()) == referrals  # no second referral
    assert len(stack.opportunities()) == 1
    assert len(desk.leads()) == 1


def test_a_lead_create_whose_answer_was_lost_makes_one_lead(make_stack, crm):
    stack = make_stack(**LEADS_ON)
    emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
    path = r"/leads\(" if crm == "dynamics" else r"/sobjects/Lead/"
    emulator.network_faults.add("lose_answer", method="PATCH", path=path, mode="drop")
    try:
        referral = stack.pc.seed_referral(kind="lead")
        stack.deliver_and_drain(1)
        assert emulator.network_faults.stats()["pendingRules"] == 0  # the answer really was lost
    finally:
        emulator.network_faults.clear()

    leads = LeadDesk(stack).leads()
    assert [lead["referral_id"] for lead in leads] == [referral["id"]]
    assert stack.opportunities() == []
    assert stack.audit_actions(referral["id"]) == ["created"]


# -- what a lead's state means --------------------------------------------------------------------------------------
def test_lead_states_read_through_the_mapping_and_move_the_referral_as_partner_center_allows():
    rules = LeadRules(qualified=("1",), disqualified={"2/6": "Customer not interested", "2": "Other"})
    assert rules.outcome("0/1") == (LeadOutcome.OPEN, None)
    assert rules.outcome("1/3") == (LeadOutcome.QUALIFIED, None)
    assert rules.outcome("2/6") == (LeadOutcome.DISQUALIFIED, "Customer not interested")
    assert rules.outcome("2/5") == (LeadOutcome.DISQUALIFIED, "Other")  # the statecode's row
    assert referral_move(LeadOutcome.QUALIFIED, None, "New", "Pending") == ("Active", "Accepted", None)
    assert referral_move(LeadOutcome.QUALIFIED, None, "Active", "Accepted") is None
    assert referral_move(LeadOutcome.DISQUALIFIED, "Other", "New", "Pending") == ("Closed", "Declined", "Other")
    # Once accepted, a referral can no longer be declined: it is lost.
    assert referral_move(LeadOutcome.DISQUALIFIED, "Other", "Active", "Accepted") == ("Closed", "Lost", "Other")
    assert referral_move(LeadOutcome.DISQUALIFIED, "Other", "Closed", "Expired") is None


def test_a_converted_opportunity_keeps_what_the_seller_set_and_takes_the_rest_from_the_referral():
    pc = {"name": "Fabrikam", "notes": "From Microsoft", "deal_value": "40000", "status": "Active"}
    crm = {"name": "Fabrikam - field service", "notes": None, "deal_value": "40000", "status": "New"}
    base = conversion_base(pc, crm)
    assert base["name"] == "Fabrikam"  # the seller's name differs from the base: it goes to Partner Center
    assert base["notes"] is None  # empty on the opportunity: Partner Center's notes come to it
    assert base["status"] == "New"  # the referral's status (just accepted) is the opportunity's


# -- the emulators model leads as the services do --------------------------------------------------------------------
def test_dataverse_qualifies_a_lead_only_with_qualify_lead(dv):
    dv.reset()
    (lead,) = dv.seed("leads", {"subject": "Evaluation", "lastname": "Lee", "companyname": "Fabrikam Inc."})
    url, headers = f"{dv.url}{DV_API}/leads({lead['leadid']})", LeadDesk._dv_headers()
    refused = requests.patch(url, json={"statecode": 1, "statuscode": 3}, headers=headers, timeout=5)
    assert refused.status_code == 400 and "QualifyLead" in refused.json()["error"]["message"]
    missing = requests.post(f"{url}/Microsoft.Dynamics.CRM.QualifyLead", json={"Status": 3}, headers=headers, timeout=5)
    assert missing.status_code == 400 and "CreateAccount" in missing.json()["error"]["message"]

    body = {"CreateAccount": True, "CreateContact": True, "CreateOpportunity": True, "Status": 3}
    made = requests.post(f"{url}/Microsoft.Dynamics.CRM.QualifyLead", json=body, headers=headers, timeout=5)
    assert made.status_code == 200, made.text
    kinds = {row["@odata.type"] for row in made.json()["value"]}
    assert kinds == {f"#Microsoft.Dynamics.CRM.{k}" for k in ("account", "contact", "opportunity")}
    (opportunity,) = dv.table("opportunities")
    assert opportunity["_originatingleadid_value"] == lead["leadid"] and opportunity["name"] == "Evaluation"
    qualified = dv.record("leads", lead["leadid"])
    assert (qualified["statecode"], qualified["statuscode"]) == (1, 3)
    assert qualified["_qualifyingopportunityid_value"] == opportunity["opportunityid"]
    again = requests.post(f"{url}/Microsoft.Dynamics.CRM.QualifyLead", json=body, headers=headers, timeout=5)
    assert again.status_code == 400  # only an open lead can be qualified
    edit = requests.patch(url, json={"subject": "Changed"}, headers=headers, timeout=5)
    assert edit.status_code == 400  # a qualified lead takes no edits until it is reactivated


def test_salesforce_converts_a_lead_once_and_keeps_it_read_only(sf):
    sf.reset()
    (lead,) = sf.seed("Lead", {"LastName": "Lee", "Company": "Fabrikam Inc.", "Referral_Identfier__c": "r-1"})
    assert lead["Status"] == "Open - Not Contacted" and lead["IsConverted"] is False
    with pytest.raises(SalesforceError, match="converted status"):
        sf.update_record("Lead", lead["Id"], {"Status": "Closed - Converted"})

    made = sf.convert_lead(lead["Id"])
    converted = sf.record("Lead", lead["Id"])
    assert converted["IsConverted"] is True and converted["Status"] == "Closed - Converted"
    assert converted["ConvertedOpportunityId"] == made["ConvertedOpportunityId"]
    opportunity = sf.record("Opportunity", made["ConvertedOpportunityId"])
    assert opportunity["AccountId"] == made["ConvertedAccountId"] and opportunity["StageName"] == "Prospecting"
    with pytest.raises(SalesforceError, match="converted lead"):
        sf.update_record("Lead", lead["Id"], {"Description": "edited"})
    with pytest.raises(SalesforceError, match="converted lead"):
        sf.convert_lead(lead["Id"])


def test_a_dry_run_shows_a_lead_not_an_opportunity(make_stack, crm, capsys):
    stack = make_stack(**LEADS_ON)
    referral = stack.pc.seed_referral(kind="lead", raise_event=False)
    capsys.readouterr()
    assert main(["dry-run", "--referral-id", referral["id"]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["action"], shown["direction"]) == ("create-lead", "pc->crm")
    assert LeadDesk(stack).leads() == [] and stack.opportunities() == []
