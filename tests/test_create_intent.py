"""A CRM-born referral whose job dies after Partner Center made it and before the pair was recorded: the job
that finds it again must not take either side as it stands then for what was agreed. Found by the 50-record
Dynamics chaos test (a lost update about one run in three): the recovery took the opportunity's current values
as what had been sent, so a seller's edit made between the two attempts never reached Partner Center."""

from __future__ import annotations

import pytest

from shared import wiring
from shared.domain.bounded import encode_agreed
from shared.domain.opportunity import MAPPED_FIELDS
from shared.ports import KIND_CRM, KIND_REFERRAL, CreateFailure, CreateIntent, Job
from shared.store.state_rows import create_failure_columns, create_intent_columns
from shared.store.tables import (
    CRM_INDEX_PREFIX,
    LINK_PARTITION,
    MAX_ENTITY_BYTES,
    entity_bytes,
    limit_problems,
    safe_key,
)
from shared.sync.referral_creation import INTENT_MAX_UNITS
from tests.e2e_stack import CRMS
from tests.test_crash_recovery import _die_once
from tests.test_crm_to_pc import _ours, _settle
from tests.test_storage_limits import LONG_JAPANESE


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


@pytest.fixture(params=["crm-job", "referral-job"])
def finder(request) -> str:
    """Which job finds the referral again: the retried opportunity job, or the job for the referral's own
    created event (its webhook, when it arrives before the retry)."""
    return request.param


@pytest.fixture(params=["before-write-back", "after-write-back"])
def death(request) -> str:
    """Where the job dies once Partner Center has made the referral: before the CRM learns its id, or after the
    write-back landed and before the pair was recorded."""
    return request.param


def _writes_back(record, target, fields) -> bool:
    return "referral_id" in fields


def _records_the_pair(link, last: bool = False) -> bool:
    return link.last_status == "ok"


def _dies_before_recording_the_pair(
    stack, monkeypatch, notes: str | None = None, death: str = "before-write-back"
) -> tuple[str, dict]:
    """A flagged opportunity whose first job makes the referral and dies before it records the pair."""
    stack.pc.dispatch_mode = "off"  # which job comes first is the test's choice, not the webhook's
    crm_id = stack.seller().create_flagged(help_code=None)
    if notes is not None:
        stack.seller().edit(crm_id, notes=notes)
    container = wiring.container()
    store = container.store
    message = "the worker died after creating the referral"
    if death == "before-write-back":
        _die_once(monkeypatch, container.engine.crm, "update_opportunity", message, when=_writes_back)
    else:
        _die_once(monkeypatch, store, "save_link", message, when=_records_the_pair)
    stack.poll()
    assert stack.host.drain(max_rounds=1).failed == 1
    referral = _ours(stack, crm_id)  # made once; no synchronised link names it
    learnt = stack.opportunity(crm_id).get("referral_id") or None
    assert learnt == (referral["id"] if death == "after-write-back" else None)
    link = store.find_link_by_crm_id(crm_id)
    assert link is None or link.last_status == "pending"
    return crm_id, referral


def _recover(stack, crm_id: str, finder: str = "crm-job") -> None:
    if finder == "referral-job":
        referral_id = _ours(stack, crm_id)["id"]
        outcome = wiring.container().engine.handle(Job(KIND_REFERRAL, referral_id, reason="referral-created"))
        assert outcome.action == "updated", outcome
    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))
    run = stack.host.drain()
    assert run.failed == 0, run.errors
    _settle(stack)
    _settle(stack)


def test_a_seller_edit_between_the_lost_create_and_its_recovery_reaches_partner_center(
    stack, monkeypatch, finder, death
):
    crm_id, referral = _dies_before_recording_the_pair(stack, monkeypatch, death=death)
    stack.seller().edit(crm_id, deal_value=777.0)

    _recover(stack, crm_id, finder)
    assert _ours(stack, crm_id)["details"]["dealValue"] == 777.0  # one referral, with the seller's edit
    opportunity = stack.opportunity(crm_id)
    assert float(opportunity["deal_value"]) == 777.0
    assert opportunity["referral_id"] == referral["id"]


def test_a_partner_center_edit_between_the_lost_create_and_its_recovery_reaches_the_crm(
    stack, monkeypatch, finder, death
):
    crm_id, referral = _dies_before_recording_the_pair(stack, monkeypatch, death=death)
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 555.0}}, raise_event=False)

    _recover(stack, crm_id, finder)
    assert _ours(stack, crm_id)["details"]["dealValue"] == 555.0
    opportunity = stack.opportunity(crm_id)
    assert float(opportunity["deal_value"]) == 555.0
    assert opportunity["referral_id"] == referral["id"]


def test_a_deal_lost_in_the_crm_between_the_lost_create_and_its_recovery_closes_the_referral(
    stack, monkeypatch, finder, death
):
    """Partner Center makes a partner's referral Active/Accepted whatever status the create posts (New/Pending).
    The intent must say so: taken as New/Pending, the recovery read Partner Center's status as an edit made there,
    which won over the seller's close and reopened the opportunity (found by the 1,000-record Dynamics chaos)."""
    crm_id, referral = _dies_before_recording_the_pair(stack, monkeypatch, death=death)
    stack.seller().close_lost(crm_id)

    _recover(stack, crm_id, finder)
    made = _ours(stack, crm_id)
    assert (made["id"], made["status"], made["substatus"]) == (referral["id"], "Closed", "Lost")
    assert stack.opportunity(crm_id)["state"] == "lost"  # not reopened


def test_edits_on_both_sides_between_the_attempts_each_reach_the_other_side(stack, monkeypatch, finder, death):
    crm_id, referral = _dies_before_recording_the_pair(stack, monkeypatch, death=death)
    stack.seller().edit(crm_id, deal_value=777.0)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Microsoft's seller added a note"}}, raise_event=False)

    _recover(stack, crm_id, finder)
    ours = _ours(stack, crm_id)
    opportunity = stack.opportunity(crm_id)
    assert ours["details"]["dealValue"] == 777.0 and float(opportunity["deal_value"]) == 777.0
    assert ours["details"]["notes"] == opportunity["notes"] == "Microsoft's seller added a note"


def test_when_the_intent_cannot_be_recorded_nothing_is_created_and_the_retry_creates_once(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    store = wiring.container().store
    _die_once(monkeypatch, store, "save_create_intent", "Table Storage is unavailable")
    stack.poll()
    assert stack.host.drain(max_rounds=1).failed == 1
    assert [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id] == []

    _recover(stack, crm_id)
    assert stack.opportunity(crm_id)["referral_id"] == _ours(stack, crm_id)["id"]


def test_the_intent_of_an_opportunity_with_a_huge_note_fits_its_row(stack, monkeypatch):
    # 30,000 UTF-16 units of notes: beyond the agreed values' budget. The intent is what is left once the job dies.
    crm_id, referral = _dies_before_recording_the_pair(stack, monkeypatch, notes=LONG_JAPANESE)
    row = wiring.container().store.links.get_entity(LINK_PARTITION, CRM_INDEX_PREFIX + safe_key(crm_id))
    assert row.get("IntentValues") and not row.get("ReferralId")
    assert entity_bytes(dict(row)) < MAX_ENTITY_BYTES
    _recover(stack, crm_id)
    assert stack.opportunity(crm_id)["referral_id"] == referral["id"]


def test_a_note_kept_as_a_digest_in_the_intent_still_tells_which_side_changed_it(stack, monkeypatch, finder, death):
    crm_id, referral = _dies_before_recording_the_pair(stack, monkeypatch, notes=LONG_JAPANESE, death=death)
    stack.seller().edit(crm_id, notes=LONG_JAPANESE + " 追記")
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 555.0}}, raise_event=False)

    _recover(stack, crm_id, finder)
    ours, opportunity = _ours(stack, crm_id), stack.opportunity(crm_id)
    assert ours["details"]["notes"] == opportunity["notes"] == LONG_JAPANESE + " 追記"
    assert ours["details"]["dealValue"] == 555.0 and float(opportunity["deal_value"]) == 555.0


def test_the_largest_failure_and_intent_fit_one_row_together():
    agreed = {name: None for name in MAPPED_FIELDS} | {"notes": LONG_JAPANESE * 2, "name": "名" * 20_000}
    columns = create_failure_columns(CreateFailure("f" * 64, "理由" * 20_000)) | create_intent_columns(
        CreateIntent(encode_agreed(agreed, INTENT_MAX_UNITS))
    )
    row = {"PartitionKey": LINK_PARTITION, "RowKey": CRM_INDEX_PREFIX + safe_key("x" * 36), **columns}
    assert limit_problems(row) == []


def test_a_write_back_conflict_merges_the_referral_as_it_is_now_not_as_it_was_made(stack, monkeypatch):
    """Found by the 50-record chaos test (seed 16, both CRMs): the write-back waited out a throttle, met the
    seller's edit (412) and merged the fresh opportunity with the referral as created. Partner Center had been
    edited meanwhile too: the merge's write there failed on its stale version, and the retry took the value it
    had been carrying as agreed, so the older Partner Center edit overwrote the seller's newer one."""
    stack.pc.dispatch_mode = "off"
    crm_id = stack.seller().create_flagged(help_code=None)
    engine = wiring.container().engine
    original = engine.crm.update_opportunity
    state = {"raced": False}

    def both_sides_edit_first(current, desired, fields):
        if not state["raced"]:
            state["raced"] = True
            stack.pc.portal_update(_ours(stack, crm_id)["id"], {"details": {"dealValue": 555.0}}, raise_event=False)
            stack.seller().edit(crm_id, deal_value=777.0)  # newer, and the CRM owns the deal value
        return original(current, desired, fields)

    monkeypatch.setattr(engine.crm, "update_opportunity", both_sides_edit_first)
    stack.poll()
    run = stack.host.drain()
    assert run.failed == 0, run.errors
    _settle(stack)
    assert _ours(stack, crm_id)["details"]["dealValue"] == 777.0
    opportunity = stack.opportunity(crm_id)
    assert float(opportunity["deal_value"]) == 777.0
    assert opportunity["referral_id"] == _ours(stack, crm_id)["id"]
