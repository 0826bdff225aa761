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
from shared.domain.leads import LeadOutcome, LeadRules, conversion_base, plan_lead_update, referral_move
from shared.ports import LINK_KIND_LEAD
from tests.crm_view import DV_TOKEN, SELLER_USERNAME
from tests.e2e_stack import CRMS, Stack
from tests.test_routing import CASTS, DATAVERSE_SETS, ELSEWHERE

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

    def lead(self, lead_id: str) -> dict[str, Any]:
        """One lead as {state, topic, notes, deal_value} (Salesforce's notes: the whole Description)."""
        if self.crm == "dynamics":
            row = self.emulator.record("leads", lead_id)
            amount = row.get("estimatedamount")
            return {
                "state": f"{row['statecode']}/{row['statuscode']}",
                "topic": row.get("subject"),
                "notes": row.get("description"),
                "deal_value": float(amount) if amount is not None else None,
            }
        row = self.emulator.record("Lead", lead_id)
        description = row.get("Description") or ""
        return {"state": row.get("Status"), "topic": description.split("\n", 1)[0], "notes": description}

    def edit_notes(self, lead_id: str, notes: str) -> None:
        """The seller rewrites the lead's notes (Salesforce: the Description the topic heads)."""
        if self.crm == "dynamics":
            path, body = f"{DV_API}/leads({lead_id})", {"description": notes}
            headers = self._dv_headers()
        else:
            path, body = f"{SF_API}/sobjects/Lead/{lead_id}", {"Description": notes}
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


# -- who owns a new lead (INBOUND_OWNER) ---------------------------------------------------------------------------
def _lead_owner(stack: Stack, lead_id: str) -> str:
    """The lead's owner as ``user:<id>`` or ``team:<id>``, read over the CRM's own API."""
    emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
    if stack.crm_name == "dynamics":
        response = requests.get(
            f"{emulator.url}{DV_API}/leads({lead_id})",
            params={"$select": "_ownerid_value"},
            headers={**LeadDesk._dv_headers(), "Prefer": 'odata.include-annotations="*"'},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        row = response.json()
        kind = {"systemuser": "user", "team": "team"}[row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"]]
        return f"{kind}:{row['_ownerid_value']}"
    return f"user:{emulator.record('Lead', lead_id)['OwnerId']}"


def test_a_new_lead_goes_to_the_owner_inbound_owner_names_and_keeps_a_sellers_reassignment(make_stack, crm):
    cast = CASTS[crm]
    stack = make_stack(**LEADS_ON, INBOUND_OWNER=cast.rules)
    us = stack.pc.seed_referral(kind="lead", customerProfile={"address": {"country": "US"}})
    elsewhere = stack.pc.seed_referral(kind="lead", customerProfile={"address": {"country": ELSEWHERE}})
    stack.deliver_and_drain(2)
    by_referral = {lead["referral_id"]: lead["id"] for lead in LeadDesk(stack).leads()}

    assert _lead_owner(stack, by_referral[us["id"]]) == cast.us
    assert _lead_owner(stack, by_referral[elsewhere["id"]]) == cast.rest
    assert f"routed to {cast.us} by INBOUND_OWNER rule 'country:US={cast.us}'" in _messages(us["id"])[0]

    # Applied on create only: a seller hands the lead on, and Partner Center's next change leaves it there.
    lead_id = by_referral[us["id"]]
    kind, _, owner_id = cast.seller.partition(":")
    if crm == "dynamics":
        path, body = f"{DV_API}/leads({lead_id})", {"ownerid@odata.bind": f"/{DATAVERSE_SETS[kind]}({owner_id})"}
        headers = LeadDesk._dv_headers()
    else:
        path, body = f"{SF_API}/sobjects/Lead/{lead_id}", {"OwnerId": owner_id}
        headers = {"Authorization": f"Bearer {stack.view.emulator.issue_token(SELLER_USERNAME)}"}  # type: ignore[attr-defined]
    emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
    response = requests.patch(f"{emulator.url}{path}", json=body, headers=headers, timeout=10)
    assert response.status_code == 204, response.text
    stack.pc.portal_update(us["id"], {"details": {"notes": "Budget approved"}})
    stack.deliver_and_drain(3)

    assert "Budget approved" in (LeadDesk(stack).lead(lead_id)["notes"] or "")
    assert _lead_owner(stack, lead_id) == cast.seller


def test_without_inbound_owner_a_lead_stays_with_the_integration_user(make_stack, crm):
    stack, _desk, _referral, lead = _lead_in_crm(make_stack)
    assert _lead_owner(stack, lead["id"]) == CASTS[crm].integration


# -- Partner Center's changes to a lead that exists --------------------------------------------------------------------
# What a lead Partner Center closed as Expired shows, and the reason Partner Center is told if it reads back.
EXPIRED_STATE = {"dynamics": "2/7", "salesforce": "Closed - Not Converted"}  # Canceled / Closed - Not Converted


def _audit_count(referral_id: str) -> int:
    return len(wiring.container().store.audit_trail(referral_id))


@pytest.mark.parametrize("substatus", ["Expired", "Declined"])
def test_partner_center_closing_a_lead_referral_disqualifies_the_lead_once(make_stack, crm, substatus):
    stack, desk, referral, lead = _lead_in_crm(make_stack)
    stack.pc.portal_update(referral["id"], {"status": "Closed", "substatus": substatus})
    pc_writes = stack.pc.writes

    stack.deliver_and_drain(2)

    assert desk.lead(lead["id"])["state"] == EXPIRED_STATE[crm]
    message = _messages(referral["id"])[0]
    assert f"lead disqualified ({EXPIRED_STATE[crm]}): Partner Center closed the referral as Closed/{substatus}" in (
        message
    )
    assert stack.audit_actions(referral["id"])[0] == "updated"
    # The disqualified lead comes back through the lead poll: it is Partner Center's own close, nothing is sent back.
    _poll_and_drain(stack)
    assert stack.pc.writes == pc_writes
    after = stack.pc.referral(referral["id"])
    assert (after["status"], after["substatus"]) == ("Closed", substatus)
    # A repeated webhook writes nothing and adds no audit line.
    crm_writes, lines = stack.crm_writes(), _audit_count(referral["id"])
    stack.pc.redeliver(referral["id"])
    stack.deliver_and_drain(3)
    assert stack.crm_writes() == crm_writes
    assert _audit_count(referral["id"]) == lines


def test_partner_center_notes_and_value_changes_reach_the_open_lead(make_stack, crm):
    stack, desk, referral, lead = _lead_in_crm(make_stack)
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 52000, "notes": "Second site added"}})
    stack.deliver_and_drain(2)

    after = desk.lead(lead["id"])
    assert after["notes"].endswith("Second site added")
    if crm == "dynamics":  # a stock Salesforce Lead has no deal value field (the mapping's deal_value is "")
        assert after["deal_value"] == 52000
    assert after["state"] == lead["state"]  # still open: the seller's worklist
    assert stack.audit_actions(referral["id"])[0] == "updated"
    assert "Updated from Partner Center: " in _messages(referral["id"])[0]

    crm_writes, lines = stack.crm_writes(), _audit_count(referral["id"])
    stack.pc.redeliver(referral["id"])
    stack.deliver_and_drain(3)
    _poll_and_drain(stack)  # the lead's own echo
    assert stack.crm_writes() == crm_writes and _audit_count(referral["id"]) == lines
    assert stack.pc.referral(referral["id"])["status"] == "New"


def test_a_sellers_edit_to_the_lead_is_not_overwritten_by_partner_center(make_stack, crm):
    stack, desk, referral, lead = _lead_in_crm(make_stack)
    desk.edit_notes(lead["id"], "Called: wants a pilot in May")

    # Partner Center changes something else: the seller's notes stay.
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 61000}, "name": "Fabrikam - field service pilot"})
    stack.deliver_and_drain(2)
    assert desk.lead(lead["id"])["notes"] == "Called: wants a pilot in May"
    if crm == "dynamics":
        assert desk.lead(lead["id"])["deal_value"] == 61000
        assert desk.lead(lead["id"])["topic"] == "Fabrikam - field service pilot"

    # Partner Center changes the notes too: both sides changed them, and the mapping gives notes to the CRM.
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Microsoft: customer asked for a call"}})
    stack.deliver_and_drain(3)
    assert desk.lead(lead["id"])["notes"] == "Called: wants a pilot in May"
    assert "notes changed on both sides; the CRM wins" in _messages(referral["id"])[0]
    lines = _audit_count(referral["id"])
    stack.pc.redeliver(referral["id"])
    stack.deliver_and_drain(4)
    assert _audit_count(referral["id"]) == lines  # said once


def test_a_lead_plan_takes_partner_centers_changes_and_keeps_the_sellers():
    rules = LeadRules(disqualified={"2/7": "Other"}, closed={"Expired": "2/7"})
    fields = ("name", "customer_name", "customer_address", "customer_contacts", "deal_value", "notes")
    base = {**dict.fromkeys(fields), "notes": "old", "deal_value": "100", "referral_status": "New/Pending"}
    pc = {**base, "notes": "new", "deal_value": "200"}
    crm = {**base, "notes": "seller's"}
    owners = {"notes": "crm", "deal_value": "crm"}

    plan = plan_lead_update(pc, crm, base, owners, ("New", "Pending"), LeadOutcome.OPEN, rules)
    assert plan.fields == ["deal_value"] and plan.state is None
    assert plan.notes == ["notes changed on both sides; the CRM wins"]
    assert plan_lead_update(pc, crm, base, {}, ("New", "Pending"), LeadOutcome.OPEN, rules).fields == [
        "deal_value",
        "notes",
    ]  # Partner Center owns notes: its newer change wins
    closed = plan_lead_update(base, base, base, owners, ("Closed", "Expired"), LeadOutcome.OPEN, rules)
    assert closed.state == "2/7" and closed.fields == []
    won = plan_lead_update(base, base, base, owners, ("Closed", "Won"), LeadOutcome.OPEN, rules)
    assert won.state is None and "no lead state is mapped for Won" in won.notes[0]
    done = plan_lead_update(pc, base, base, owners, ("Closed", "Expired"), LeadOutcome.DISQUALIFIED, rules)
    assert not done.writes and done.notes == ["the lead is disqualified in the CRM; not written: deal_value, notes"]
    seen = {**pc, "referral_status": "Closed/Expired"}
    assert not plan_lead_update(pc, crm, seen, owners, ("Closed", "Expired"), LeadOutcome.OPEN, rules).writes


def test_a_dry_run_shows_what_partner_centers_change_would_do_to_the_lead(make_stack, crm, capsys):
    stack, desk, referral, lead = _lead_in_crm(make_stack)
    stack.pc.portal_update(referral["id"], {"status": "Closed", "substatus": "Expired"}, raise_event=False)
    crm_writes = stack.crm_writes()
    capsys.readouterr()

    assert main(["dry-run", "--referral-id", referral["id"]]) == 0

    shown = json.loads(capsys.readouterr().out)
    assert (shown["action"], shown["direction"]) == ("update-lead", "pc->crm")
    assert "Partner Center closed the referral as Closed/Expired" in shown["message"]
    assert stack.crm_writes() == crm_writes and desk.lead(lead["id"])["state"] == lead["state"]


def test_a_sellers_disqualification_still_reaches_partner_center_after_a_partner_center_change(make_stack, crm):
    """Partner Center's job reads the lead the seller has just disqualified: that version is not its echo, so the
    lead's own job on the next poll still declines the referral."""
    stack, desk, referral, lead = _lead_in_crm(make_stack)
    desk.disqualify(lead["id"])
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Microsoft: customer asked for a call"}})
    stack.deliver_and_drain(2)  # before the CRM poll

    _poll_and_drain(stack)

    after = stack.pc.referral(referral["id"])
    assert (after["status"], after["substatus"]) == ("Closed", "Declined")
    assert after["statusReason"] == DISQUALIFIED_REASON[crm]
