"""Deletions, end to end, for Dynamics 365 and Salesforce (issue 11, part 4).

A seller deletes a synchronised opportunity: the next Partner Center update must not create it again under a
new id. The pair is detached (link status, audit entry), later jobs for it only log, and Partner Center is
left alone unless ``CLOSE_REFERRAL_ON_CRM_DELETE`` asks for the referral to be closed. A referral that stops
answering in Partner Center is reported, and its opportunity is kept as it is.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from shared import wiring
from shared.domain.deletions import closing_move
from shared.ports import KIND_CRM, Job, Link
from tests.crm_seller import DV_PATH, SF_PATH
from tests.crm_view import DV_TOKEN, SELLER_USERNAME
from tests.e2e_stack import CRMS, Stack
from tests.test_crm_to_pc import _ours, _settle, _synced
from tests.test_dry_run import _dry_run

DELETED = "the opportunity was deleted in the CRM; not recreated"


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    """Every test here runs against both CRMs."""
    return request.param


# -- what a seller and Partner Center do -----------------------------------------------------------------
def _delete_in_crm(stack: Stack, crm_id: str) -> None:
    """The seller deletes the opportunity over the CRM's own API, as its UI does."""
    emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
    if stack.crm_name == "dynamics":
        url, token = f"{emulator.url}{DV_PATH}/opportunities({crm_id})", DV_TOKEN
    else:
        url, token = f"{emulator.url}{SF_PATH}/sobjects/Opportunity/{crm_id}", emulator.issue_token(SELLER_USERNAME)
    response = requests.delete(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 204, response.text


def _remove_from_partner_center(stack: Stack, referral_id: str) -> None:
    """The referral stops answering (404), through the emulator's control API."""
    response = requests.delete(f"{stack.pc.url}/_emulator/referrals/{referral_id}", timeout=10)
    assert response.status_code == 204, response.text


def _from_partner_center(stack: Stack) -> tuple[str, str]:
    """A co-sell referral sent by Microsoft, synchronised into a new opportunity: (referral id, CRM id)."""
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    (row,) = stack.opportunities()
    return referral["id"], row["id"]


def _from_the_crm(stack: Stack) -> tuple[str, str]:
    """A flagged opportunity, synchronised into a new co-sell referral: (referral id, CRM id)."""
    crm_id = _synced(stack)
    return _ours(stack, crm_id)["id"], crm_id


def _update_in_portal(stack: Stack, referral_id: str, **details: Any) -> None:
    """An edit in Partner Center raising its webhook, delivered and worked off."""
    stack.pc.portal_update(referral_id, {"details": details or {"notes": "Scope changed in the portal"}})
    stack.pc.dispatcher.wait_idle(timeout=10)
    run = stack.host.drain()
    assert stack.host.queue.depth() == 0, run.errors


def _link(referral_id: str) -> Link:
    link = wiring.container().store.get_link(referral_id)
    assert link is not None
    return link


def _trail(referral_id: str) -> list[tuple[str, str]]:
    """(action, message) of the referral's audit entries, newest first."""
    return [(e.action, e.message) for e in wiring.container().store.audit_trail(referral_id)]


ORIGINS = {"partner-center": _from_partner_center, "crm": _from_the_crm}


# -- a deleted opportunity is never recreated ----------------------------------------------------------------
@pytest.mark.parametrize("origin", ORIGINS)
def test_a_deleted_opportunity_is_not_recreated_by_a_partner_center_update(stack, origin):
    referral_id, crm_id = ORIGINS[origin](stack)
    _delete_in_crm(stack, crm_id)
    stack.pc.reset_counters()
    stack.view.reset_counters()

    _update_in_portal(stack, referral_id, dealValue=99000)

    assert stack.opportunities() == []
    assert stack.crm_writes() == 0
    assert stack.pc.writes == 0  # the setting is off: the referral is left as it is
    link = _link(referral_id)
    assert (link.last_status, link.crm_id) == ("detached", crm_id)
    assert DELETED in (link.last_error or "")
    action, message = _trail(referral_id)[0]
    assert action == "detached" and message.startswith(DELETED)
    assert "CLOSE_REFERRAL_ON_CRM_DELETE is off" in message
    assert stack.status()["links"]["detached"] == 1


@pytest.mark.parametrize("origin", ORIGINS)
def test_later_jobs_for_a_detached_pair_only_log(stack, origin):
    referral_id, crm_id = ORIGINS[origin](stack)
    _delete_in_crm(stack, crm_id)
    _update_in_portal(stack, referral_id, dealValue=99000)
    trail = _trail(referral_id)
    stack.pc.reset_counters()
    stack.view.reset_counters()

    _update_in_portal(stack, referral_id, notes="Another portal edit")
    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))  # a CRM job, as a replayed poll would make
    stack.poll()
    stack.host.drain()

    assert stack.opportunities() == []
    assert stack.crm_writes() == 0 and stack.pc.writes == 0
    assert _trail(referral_id) == trail  # logged, not audited
    assert _link(referral_id).last_status == "detached"


def test_the_crm_poll_and_a_job_queued_before_the_deletion_do_not_fail(stack):
    referral_id, crm_id = _from_the_crm(stack)
    stack.seller().edit(crm_id, notes="Edited just before the deletion")
    stack.poll()  # the job for the edit is queued ...
    _delete_in_crm(stack, crm_id)  # ... and the opportunity deleted before a worker takes it
    stack.pc.reset_counters()

    run = stack.host.drain()
    stack.poll()
    run_after = stack.host.drain()

    assert run.failed == 0 and run_after.failed == 0, (run.errors, run_after.errors)
    assert stack.host.queue.poison_depth() == 0
    assert stack.opportunities() == []
    assert stack.pc.writes == 0
    assert len(stack.pc.referrals()) == 1
    assert _link(referral_id).last_status == "detached"
    assert _trail(referral_id)[0][0] == "detached"


# -- CLOSE_REFERRAL_ON_CRM_DELETE ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("origin", "closed_as"),
    [("partner-center", ("Closed", "Declined")), ("crm", ("Closed", "Lost"))],
)
def test_with_the_setting_on_the_referral_is_closed_once(make_stack, origin, closed_as):
    """A referral Microsoft sent and the partner never took up (New) is declined; one under way (Active, as the
    partner's own referrals start) is closed as lost. The echo of that write does nothing."""
    stack = make_stack(CLOSE_REFERRAL_ON_CRM_DELETE="true")
    referral_id, crm_id = ORIGINS[origin](stack)
    _delete_in_crm(stack, crm_id)
    stack.pc.reset_counters()

    _update_in_portal(stack, referral_id, dealValue=99000)

    referral = stack.pc.referral(referral_id)
    assert referral is not None
    assert (referral["status"], referral["substatus"]) == closed_as
    assert stack.pc.counters().get("patch", 0) == 1
    assert stack.opportunities() == []
    assert _link(referral_id).last_status == "detached"
    action, message = _trail(referral_id)[0]
    assert action == "detached" and message.startswith(DELETED)
    assert f"closed in Partner Center as {closed_as[0]}/{closed_as[1]}" in message
    stack.pc.reset_counters()
    _settle(stack)  # the webhook of our own close
    assert stack.pc.writes == 0 and stack.opportunities() == []


def test_a_job_that_dies_after_closing_the_referral_detaches_the_pair_on_its_retry(make_stack, monkeypatch):
    stack = make_stack(CLOSE_REFERRAL_ON_CRM_DELETE="true")
    referral_id, crm_id = _from_the_crm(stack)
    _delete_in_crm(stack, crm_id)
    recorder = wiring.container().engine.recorder
    original = recorder.detach
    calls = {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("worker died after closing the referral")
        return original(*args, **kwargs)

    monkeypatch.setattr(recorder, "detach", dying)
    stack.pc.reset_counters()
    stack.pc.portal_update(referral_id, {"details": {"notes": "Scope changed in the portal"}})
    stack.pc.dispatcher.wait_idle(timeout=10)
    assert stack.host.drain(max_rounds=1).failed == 1
    stack.host.drain()

    assert stack.pc.counters().get("patch", 0) == 1  # closed once, not again on the retry
    assert stack.opportunities() == []
    assert _link(referral_id).last_status == "detached"
    assert "already Closed/Lost" in _trail(referral_id)[0][1]


def test_with_the_setting_on_a_closed_referral_is_left_as_it_is(make_stack):
    stack = make_stack(CLOSE_REFERRAL_ON_CRM_DELETE="true")
    referral_id, crm_id = _from_partner_center(stack)
    _delete_in_crm(stack, crm_id)
    stack.pc.reset_counters()

    stack.pc.portal_update(referral_id, {"status": "Closed", "substatus": "Won"})
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()

    assert stack.pc.writes == 0
    assert stack.opportunities() == []
    assert "already Closed/Won" in _trail(referral_id)[0][1]


# -- a referral gone from Partner Center -----------------------------------------------------------------------
def test_a_referral_gone_from_partner_center_is_reported_and_its_opportunity_kept(stack):
    referral_id, crm_id = _from_partner_center(stack)
    before = stack.opportunity(crm_id)
    _remove_from_partner_center(stack, referral_id)
    stack.view.reset_counters()

    stack.pc.send_event(referral_id, "referral-updated")
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()

    assert stack.opportunity(crm_id) == before
    assert stack.crm_writes() == 0
    link = _link(referral_id)
    assert (link.last_status, link.crm_id) == ("referral-missing", crm_id)
    action, message = _trail(referral_id)[0]
    assert action == "referral-missing" and "no longer exists in Partner Center" in message
    assert stack.status()["links"]["referral-missing"] == 1
    trail = _trail(referral_id)

    stack.pc.send_event(referral_id, "referral-updated")  # again: logged, not audited
    stack.seller().edit(crm_id, notes="A seller edit after the referral went")
    stack.poll()
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.view.reset_counters()
    stack.host.drain()

    assert stack.crm_writes() == 0  # no cross mark, nothing deleted: the seller's record as the seller left it
    assert stack.opportunity(crm_id)["notes"] == "A seller edit after the referral went"
    assert stack.opportunities() == [stack.opportunity(crm_id)]
    assert _link(referral_id).last_status == "referral-missing"
    assert _trail(referral_id) == trail


# -- what is not a deletion ----------------------------------------------------------------------------------
def test_a_first_create_that_died_before_reaching_the_crm_still_creates(stack, monkeypatch):
    """The link row written ahead of the create (pending, no CRM id) names no deleted record."""
    engine = wiring.container().engine
    original = engine.crm.create_opportunity
    calls = {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("worker died before the create was sent")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.crm, "create_opportunity", dying)
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.dispatcher.wait_idle(timeout=10)
    first = stack.host.drain(max_rounds=1)
    assert first.failed == 1
    assert _link(referral["id"]).last_status == "pending" and _link(referral["id"]).crm_id is None
    stack.host.drain()

    (row,) = stack.opportunities()
    assert row["referral_id"] == referral["id"]
    assert _link(referral["id"]).last_status == "ok"


@pytest.mark.parametrize(
    ("status", "direction", "move"),
    [
        ("New", "Incoming", ("Closed", "Declined")),
        ("New", "Outgoing", ("Closed", "Lost")),
        ("Active", "Incoming", ("Closed", "Lost")),
        ("Active", "Outgoing", ("Closed", "Lost")),
        ("Closed", "Outgoing", None),
        (None, "Incoming", None),
    ],
)
def test_how_the_referral_of_a_deleted_opportunity_is_closed(status, direction, move):
    assert closing_move(status, direction) == move


@pytest.mark.parametrize("origin", ORIGINS)
def test_the_dry_run_of_a_deleted_pair_shows_a_detach_not_a_create(stack, origin, capsys):
    referral_id, crm_id = ORIGINS[origin](stack)
    _delete_in_crm(stack, crm_id)
    stack.pc.portal_update(referral_id, {"details": {"notes": "Scope changed"}}, raise_event=False)
    shown = _dry_run(capsys, "--referral-id", referral_id)
    assert (shown["action"], shown["crmId"]) == ("detach", crm_id)
    assert "nothing created" in shown["message"]
