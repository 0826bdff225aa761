"""Microsoft's side of a co-sell engagement in the CRM (issue 11, item 2), on both CRMs, end to end.

When Microsoft's seller accepts or works the deal, Partner Center raises ``related-referral-*`` on the partner's
referral. The opportunity then shows Microsoft's status, its seller, its CRM (MSX) id and its invite notes, with
one Audit line per change; a repeated or unchanged event writes nothing. Before this, the event only re-read the
partner's referral and nothing reached the CRM.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulators.package_mapping import column
from shared.crm.dynamics.mapping import load_mapping
from shared.crm.mapping import MappingError
from tests.crm_view import stored_row
from tests.e2e_stack import CRMS
from tests.test_crm_to_pc import _flag_and_sync, _ours, _settle

SELLER = {"firstName": "Morgan", "lastName": "Lee", "email": "Morgan.Lee@microsoft.example"}
ACCEPTED = {
    "status": "Active",
    "substatus": "Accepted",
    "team": [SELLER],
    "trackingInfo": {"microsoftMsxId": "7-3FJ9K2QX1"},
    "inviteContext": {"notes": "Customer is in our FY27 plan; I will bring the Azure architect."},
}
MARKER = "Microsoft's side:"


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _shown(stack, crm_id: str) -> dict[str, Any]:
    """Microsoft's side as the CRM's own columns hold it."""
    row = stored_row(stack, crm_id)
    fields = ("microsoft_status", "microsoft_seller_name", "microsoft_seller_email", "microsoft_crm_id")
    shown = {name: row.get(column(stack.crm_name, name)) for name in fields}
    shown["microsoft_notes"] = row.get(column(stack.crm_name, "microsoft_notes"))
    return shown


def _microsoft_lines(stack, crm_id: str) -> list[str]:
    return [line for line in (stack.opportunity(crm_id)["audit"] or "").splitlines() if MARKER in line]


def _cosell_synced(stack) -> tuple[str, dict[str, Any]]:
    """A seller's opportunity asking for Microsoft's help, shared as a co-sell referral (with Microsoft's referral
    on the engagement), every echo settled."""
    crm_id = _flag_and_sync(stack)
    _settle(stack)
    referral = _ours(stack, crm_id)
    engagement = [r for r in stack.pc.referrals() if r["engagementId"] == referral["engagementId"]]
    assert len(engagement) == 2  # the partner's and the one addressed to Microsoft
    return crm_id, referral


def _microsoft_acts(stack, referral_id: str, changes: dict[str, Any], named: str | None = None) -> None:
    """Microsoft's seller acts through the emulator's control API, as over HTTP in the demo; the event names
    ``named`` (the partner's referral unless said otherwise)."""
    before = len(stack.pc.deliveries())
    response = requests.post(f"{stack.pc.url}/_emulator/referrals/{referral_id}/microsoft", json=changes, timeout=10)
    assert response.status_code == 200, response.text
    delivered = stack.pc.wait_for_deliveries(before + 1, timeout=10)
    assert delivered[-1].event_name.startswith("related-referral-")
    assert delivered[-1].referral_id == (named or referral_id)


def test_microsoft_accepting_shows_its_status_seller_and_msx_id_within_one_job(stack):
    crm_id, referral = _cosell_synced(stack)
    assert _microsoft_lines(stack, crm_id) == []
    writes = stack.crm_writes()

    _microsoft_acts(stack, referral["id"], ACCEPTED)
    stack.pc.reset_counters()
    run = stack.host.drain()

    assert run.processed == 1  # one job
    calls = stack.pc.counters()
    assert (calls.get("get"), calls.get("list"), calls.get("writes", 0)) == (1, 1, 0)  # the engagement: one list
    assert _shown(stack, crm_id) == {
        "microsoft_status": "Active/Accepted",
        "microsoft_seller_name": "Morgan Lee",
        "microsoft_seller_email": "morgan.lee@microsoft.example",
        "microsoft_crm_id": "7-3FJ9K2QX1",
        "microsoft_notes": "Customer is in our FY27 plan; I will bring the Azure architect.",
    }
    [line] = _microsoft_lines(stack, crm_id)
    assert "status Active/Accepted" in line and "seller Morgan Lee" in line and "7-3FJ9K2QX1" in line
    assert stack.crm_writes() == writes + 1  # the columns and the Audit line in one write
    # The partner's referral is untouched: Microsoft's side travels to the CRM only.
    assert stack.pc.referral(referral["id"])["eTag"] == referral["eTag"]


def test_the_poll_that_sees_the_write_ends_as_an_echo_without_reading_the_opportunity(stack):
    _, referral = _cosell_synced(stack)
    _microsoft_acts(stack, referral["id"], ACCEPTED)
    stack.host.drain()
    stack.view.reset_counters()
    stack.poll()
    polled = stack.view.opportunity_reads()
    run = stack.host.drain()
    assert run.processed == 1  # the poll found our write
    assert stack.view.opportunity_reads() == polled  # and its job ended as an echo, before any CRM call
    assert stack.crm_writes() == 0


def test_an_event_naming_microsofts_referral_reaches_the_same_opportunity(stack):
    """Partner Center does not document which referral a related event names: Microsoft's works as well."""
    crm_id, referral = _cosell_synced(stack)
    [microsoft] = [
        r for r in stack.pc.referrals() if r["engagementId"] == referral["engagementId"] and r["id"] != referral["id"]
    ]
    config = requests.post(f"{stack.pc.url}/_emulator/config", json={"relatedEventResource": "related"}, timeout=10)
    assert config.status_code == 200, config.text

    _microsoft_acts(stack, referral["id"], ACCEPTED, named=microsoft["id"])
    stack.pc.reset_counters()
    stack.host.drain()

    assert _shown(stack, crm_id)["microsoft_status"] == "Active/Accepted"
    assert _shown(stack, crm_id)["microsoft_crm_id"] == "7-3FJ9K2QX1"
    assert len(_microsoft_lines(stack, crm_id)) == 1
    calls = stack.pc.counters()
    assert (calls.get("get"), calls.get("list"), calls.get("writes", 0)) == (1, 1, 0)
    audit = stack.opportunity(crm_id)["audit"]
    stack.pc.redeliver(microsoft["id"])
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    assert stack.opportunity(crm_id)["audit"] == audit


def test_a_repeated_or_unchanged_event_adds_nothing_and_writes_nothing(stack):
    crm_id, referral = _cosell_synced(stack)
    _microsoft_acts(stack, referral["id"], ACCEPTED)
    stack.host.drain()
    _settle(stack)  # the poll that sees our write finds nothing to do
    assert len(_microsoft_lines(stack, crm_id)) == 1
    audit = stack.opportunity(crm_id)["audit"]
    writes = stack.crm_writes()

    stack.pc.redeliver(referral["id"])  # the same event again, byte for byte
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    _microsoft_acts(stack, referral["id"], {"statusReason": ""})  # Microsoft saves without changing what we show
    stack.host.drain()
    _settle(stack)

    assert stack.opportunity(crm_id)["audit"] == audit
    assert stack.crm_writes() == writes


def test_each_later_change_on_microsofts_side_gets_its_own_audit_line(stack):
    crm_id, referral = _cosell_synced(stack)
    _microsoft_acts(stack, referral["id"], ACCEPTED)
    stack.host.drain()
    _microsoft_acts(stack, referral["id"], {"team": [{**SELLER, "firstName": "Riley", "email": "riley@ms.example"}]})
    stack.host.drain()

    shown = _shown(stack, crm_id)
    assert (shown["microsoft_seller_name"], shown["microsoft_seller_email"]) == ("Riley Lee", "riley@ms.example")
    lines = _microsoft_lines(stack, crm_id)
    assert len(lines) == 2
    assert "seller Riley Lee" in lines[0] and "status" not in lines[0]  # newest first, only what changed


def test_microsoft_accepting_a_referral_it_shared_reaches_the_crm(stack):
    """An engagement Microsoft started (an incoming referral) gets Microsoft's referral when Microsoft acts."""
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    _settle(stack)
    [row] = stack.opportunities()

    _microsoft_acts(stack, referral["id"], {"status": "Active", "substatus": "Accepted", "team": [SELLER]})
    stack.host.drain()

    shown = _shown(stack, row["id"])
    assert (shown["microsoft_status"], shown["microsoft_seller_name"]) == ("Active/Accepted", "Morgan Lee")
    assert len(_microsoft_lines(stack, row["id"])) == 1


def test_the_emulator_refuses_a_move_microsoft_could_not_make(stack):
    crm_id, referral = _cosell_synced(stack)
    _microsoft_acts(stack, referral["id"], {"status": "Closed", "substatus": "Won"})
    stack.host.drain()
    url = f"{stack.pc.url}/_emulator/referrals/{referral['id']}/microsoft"
    refused = requests.post(url, json={"status": "Active", "substatus": "Accepted"}, timeout=10)
    assert refused.status_code == 400 and "closed" in refused.text
    unknown = requests.post(url, json={"name": "renamed by Microsoft"}, timeout=10)
    assert unknown.status_code == 400 and "name" in unknown.text
    assert _shown(stack, crm_id)["microsoft_status"] == "Closed/Won"


def test_a_mapping_that_lets_microsofts_side_travel_back_is_refused(tmp_path):
    custom = tmp_path / "custom.toml"
    custom.write_text('[fields.microsoft_crm_id]\ndirection = "both"\nowner = "crm"\n')
    with pytest.raises(MappingError) as refused:
        load_mapping(custom)
    assert "fields.microsoft_crm_id.direction" in str(refused.value)
    assert "fields.microsoft_crm_id.owner" in str(refused.value)
    custom.write_text('[fields.microsoft_crm_id]\ncolumn = ""\n')  # left out: fine
    assert load_mapping(custom).mapping.column("microsoft_crm_id") == ""
