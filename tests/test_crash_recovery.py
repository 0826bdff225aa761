"""A job that dies part way (a crash, a refused write, a conflict) must not make the next job take one side's
old values for an edit. Found by ``make chaos``: the base values of a pair were recorded only at the end of
a job, so after a failure in between every difference looked changed on both sides and the field's owner
overwrote the other side's newer edit. Also: change feeds that read whole seconds must go quiet."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared import wiring
from shared.domain.errors import PreconditionFailed
from shared.ports import KIND_CRM, KIND_REFERRAL, Change, Job
from shared.sync.poller import POLL_STATE_KEY, ChangeFeed
from tests.e2e_stack import CRMS
from tests.harness import FixedClock
from tests.test_crm_to_pc import _ours, _settle, _synced


def _die_once(monkeypatch, owner: object, name: str, message: str, when=lambda *args: True) -> None:
    """The worker dies (a connection error) on the first call of ``owner.name`` for which ``when`` holds."""
    original = getattr(owner, name)
    state = {"died": False}

    def dying(*args, **kwargs):
        if not state["died"] and when(*args):
            state["died"] = True
            raise ConnectionError(message)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, dying)


def _recorded_as_synced(link, last: bool = False) -> bool:
    return link.last_status == "ok"


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def test_a_job_that_dies_after_creating_the_opportunity_does_not_revert_a_later_partner_center_edit(stack, monkeypatch):
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    store = wiring.container().store
    _die_once(monkeypatch, store, "save_link", "the worker died before it recorded the pair", when=_recorded_as_synced)
    stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    assert stack.host.drain(max_rounds=1).failed == 1
    assert len(stack.opportunities()) == 1  # the opportunity exists; its link was never recorded as synced

    stack.pc.portal_update(referral["id"], {"name": "Renamed in Partner Center"}, raise_event=False)
    stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    stack.host.drain()
    assert stack.pc.referral(referral["id"])["name"] == "Renamed in Partner Center"
    [row] = stack.opportunities()
    assert row["name"].startswith("Renamed in Partner Center")


def test_a_job_that_dies_before_the_write_back_keeps_a_partner_center_edit_and_writes_the_id_later(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    engine = wiring.container().engine
    _die_once(monkeypatch, engine.crm, "update_opportunity", "the worker died after creating the referral")
    stack.poll()
    assert stack.host.drain(max_rounds=1).failed == 1
    referral = _ours(stack, crm_id)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Microsoft's seller added a note"}}, raise_event=False)

    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))
    stack.host.drain()
    _settle(stack)
    assert _ours(stack, crm_id)["details"]["notes"] == "Microsoft's seller added a note"
    opportunity = stack.opportunity(crm_id)
    assert opportunity["notes"] == "Microsoft's seller added a note"
    assert opportunity["referral_id"] == referral["id"]


def test_a_seller_edit_during_the_write_back_is_merged_in_the_same_job(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    engine = wiring.container().engine
    original = engine.crm.update_opportunity
    state = {"raced": False}

    def seller_edits_first(current, desired, fields):
        if not state["raced"]:
            state["raced"] = True  # the seller saves between our read and our write-back: 412
            stack.seller().edit(crm_id, deal_value=777000.0)
        return original(current, desired, fields)

    monkeypatch.setattr(engine.crm, "update_opportunity", seller_edits_first)
    stack.poll()
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 0, run.errors
    _settle(stack)
    assert _ours(stack, crm_id)["details"]["dealValue"] == 777000.0
    assert stack.opportunity(crm_id)["referral_id"] == _ours(stack, crm_id)["id"]


def test_a_job_that_dies_between_the_two_sides_does_not_revert_a_later_partner_center_edit(stack, monkeypatch):
    crm_id = _synced(stack)
    referral = _ours(stack, crm_id)
    # Both sides edit at once: the job sends the deal value to Partner Center and the notes to the CRM.
    stack.seller().edit(crm_id, deal_value=251000.0)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Portal note"}}, raise_event=False)
    engine = wiring.container().engine
    _die_once(monkeypatch, engine.crm, "update_opportunity", "the worker died after patching Partner Center")
    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 1
    assert _ours(stack, crm_id)["details"]["dealValue"] == 251000.0
    # Microsoft's seller then corrects the deal value in Partner Center, before the job is retried.
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 262000.0}}, raise_event=False)
    stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    stack.host.drain()
    _settle(stack)
    assert _ours(stack, crm_id)["details"]["dealValue"] == 262000.0
    opportunity = stack.opportunity(crm_id)
    assert float(opportunity["deal_value"]) == 262000.0
    assert opportunity["notes"] == "Portal note"


def test_a_write_back_conflict_that_persists_is_reported_not_looped(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    engine = wiring.container().engine

    def always_conflicts(*args, **kwargs):
        raise PreconditionFailed("Dynamics 365", "changed since it was read", 412)

    monkeypatch.setattr(engine.crm, "update_opportunity", always_conflicts)
    stack.poll()
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 1  # retried later by the queue, never a second referral
    assert len([r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id]) == 1


# -- change feeds --------------------------------------------------------------------------------------------------
def test_a_feed_that_filters_on_whole_seconds_goes_quiet(feed_parts):
    store, queue = feed_parts
    start = datetime(2031, 5, 6, 7, 0, 0, 500_000, tzinfo=UTC)
    changes = [
        Change("early", 'W/"1"', start),
        Change("late", 'W/"2"', start + timedelta(seconds=100, microseconds=100)),
    ]

    def changed_since(since: datetime | None) -> Iterator[Change]:
        # As Dataverse, Salesforce and Partner Center filters are sent: to the whole second.
        floor = since.replace(microsecond=0) if since else None
        return iter([c for c in changes if floor is None or (c.changed_at and c.changed_at >= floor)])

    feed = ChangeFeed(POLL_STATE_KEY, KIND_CRM, changed_since, store, queue, FixedClock(start), overlap_seconds=100)
    assert feed.poll().enqueued == 2
    # "early" is 100.0001 s before the watermark: outside the exact window, inside the whole-second one.
    assert feed.poll().enqueued == 0
    assert feed.poll().enqueued == 0
    assert queue.depth() == 2


def test_a_quiet_feed_stops_reading_the_overlap_again(feed_parts):
    """After a burst, polls with nothing new read only from the watermark's second: the rows of the burst are
    not returned (and counted) again on every poll until a newer change comes."""
    store, queue = feed_parts
    start = datetime(2031, 5, 6, 7, 0, 0, tzinfo=UTC)
    burst = [Change(f"opp-{i}", f'W/"{i}"', start + timedelta(seconds=i)) for i in range(60)]
    asked: list[datetime | None] = []

    def changed_since(since: datetime | None) -> Iterator[Change]:
        asked.append(since)
        return iter([c for c in burst if since is None or (c.changed_at and c.changed_at >= since)])

    clock = FixedClock(start + timedelta(seconds=61))
    feed = ChangeFeed(POLL_STATE_KEY, KIND_CRM, changed_since, store, queue, clock, overlap_seconds=300)
    assert feed.poll().enqueued == 60
    clock._now += timedelta(seconds=30)
    assert (feed.poll().seen, feed.poll().enqueued) == (60, 0)  # within the overlap of a run: read again
    clock._now += timedelta(seconds=600)
    assert feed.poll().seen == 60  # the run before started within the overlap of the burst
    result = feed.poll()  # the run before started more than the overlap after the newest change
    assert asked[-1] == burst[-1].changed_at
    assert (result.seen, result.enqueued) == (1, 0)
    assert feed.poll().seen == 1
    assert queue.depth() == 60


def test_a_referral_edited_before_its_lost_create_answer_is_found_keeps_the_edit(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.pc.network_faults.add("lose_answer", method="POST", path=r"/engagements/referrals$", mode="drop")
    creator = wiring.container().engine.creator
    original = creator.partner_referral
    calls = {"n": 0}

    def edited_before_found(crm: str):
        calls["n"] += 1
        if calls["n"] == 2:  # the lookup after the lost answer: Microsoft's seller renamed it meanwhile
            [made] = [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm]
            stack.pc.portal_update(made["id"], {"name": "Renamed by Microsoft"})  # its webhook follows
        return original(crm)

    monkeypatch.setattr(creator, "partner_referral", edited_before_found)
    stack.poll()
    run = stack.host.drain()
    assert run.failed == 0, run.errors
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    _settle(stack)
    assert _ours(stack, crm_id)["name"] == "Renamed by Microsoft"
    assert stack.opportunity(crm_id)["name"].startswith("Renamed by Microsoft")


def test_a_job_that_dies_after_its_crm_write_lands_does_not_revert_a_newer_partner_center_edit(stack, monkeypatch):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Notes v5"}}, raise_event=False)
    store = wiring.container().store
    _die_once(monkeypatch, store, "save_link", "the worker died after writing the CRM", when=_recorded_as_synced)
    stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    assert stack.host.drain(max_rounds=1).failed == 1
    [row] = stack.opportunities()
    assert row["notes"] == "Notes v5"  # the CRM write landed; its result was never recorded

    stack.pc.portal_update(referral["id"], {"details": {"notes": "Notes v47"}}, raise_event=False)
    stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    stack.host.drain()
    _settle(stack)
    assert stack.pc.referral(referral["id"])["details"]["notes"] == "Notes v47"
    assert stack.opportunities()[0]["notes"] == "Notes v47"


def test_a_seller_rename_saved_just_before_our_write_back_is_kept(stack, monkeypatch):
    """Salesforce's only write condition (If-Unmodified-Since) has whole seconds: a rename saved in the second
    of our read is not refused, so the write-back must not carry a name it does not change. Found by
    ``make chaos``: the job rewrote the name it had read, with its ✔, over the seller's newer one."""
    crm_id = _synced(stack)
    referral = _ours(stack, crm_id)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Portal note"}}, raise_event=False)
    engine = wiring.container().engine
    original = engine.crm.update_opportunity
    state = {"raced": False}

    def seller_renames_first(current, desired, fields):
        if not state["raced"]:
            state["raced"] = True
            stack.seller().edit(crm_id, name="Renamed by the seller")
        return original(current, desired, fields)

    monkeypatch.setattr(engine.crm, "update_opportunity", seller_renames_first)
    stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    assert stack.host.drain().failed == 0
    _settle(stack)
    opportunity = stack.opportunity(crm_id)
    assert opportunity["name"].startswith("Renamed by the seller")
    assert opportunity["notes"] == "Portal note"
    assert _ours(stack, crm_id)["name"] == "Renamed by the seller"
