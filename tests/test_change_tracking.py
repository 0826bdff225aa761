"""The Dynamics 365 poll through Dataverse change tracking, end to end (issue 10: a poll that costs what changed).

The real app polls the Dataverse emulator over HTTP with its state in Azurite: a flagged opportunity reaches
Partner Center through the delta link, an unchanged organisation costs one request, a deleted opportunity detaches
its pair at the next poll (the poll by ``modifiedon`` never sees a deletion), a table without change tracking is
polled by ``modifiedon`` without asking for change tracking on every poll, and an expired token starts a full read
again that duplicates nothing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import wiring
from shared.sync.poller import POLL_STATE_KEY
from tests.e2e_stack import Stack
from tests.test_crm_to_pc import _ours, _synced
from tests.test_deletions import _delete_in_crm, _link


def _dv(stack: Stack) -> Any:
    return stack.view.emulator  # type: ignore[attr-defined]


def _tracking(stack: Stack) -> dict[str, int]:
    """Pages of full and delta reads the emulator served since its counters were reset, and refusals."""
    return _dv(stack).counters()["changeTracking"]


def _poll_row() -> dict[str, Any]:
    return wiring.container().store.get_state(POLL_STATE_KEY) or {}


def _referrals(stack: Stack) -> int:
    return len(stack.pc.referrals())


def test_a_flagged_opportunity_reaches_partner_center_through_the_delta_link(stack):
    crm_id = stack.seller().create_flagged()
    _dv(stack).reset_counters()
    stack.poll()
    stack.host.drain()

    assert _ours(stack, crm_id)["name"]
    assert _tracking(stack)["full"] == 1  # the first poll: every row, and the token
    assert "$deltatoken=" in _poll_row()["DeltaLink"]
    second = stack.seller().create_flagged(name="Contoso - second deal")
    stack.poll()
    stack.host.drain()
    assert _ours(stack, second)["name"] == "Contoso - second deal"
    assert _tracking(stack)["delta"] >= 1
    assert stack.status()["lastPollAt"] is not None


def test_an_unflagged_opportunity_is_read_but_not_enqueued(stack):
    stack.seller().create_flagged(flagged=False)
    stack.poll()
    assert stack.host.queue.depth() == 0
    assert _referrals(stack) == 0


def test_an_unchanged_poll_costs_one_request_and_enqueues_nothing(stack):
    _synced(stack)
    stack.poll()
    stack.host.drain()
    _dv(stack).reset_counters()

    stack.poll()

    counters = _dv(stack).counters()
    assert counters["requests"] == 1
    assert _tracking(stack) == {"full": 0, "delta": 1, "refused": 0}
    assert stack.host.queue.depth() == 0


def test_a_deleted_opportunity_detaches_its_pair_at_the_next_poll(stack):
    crm_id = _synced(stack)
    referral_id = _ours(stack, crm_id)["id"]
    stack.pc.reset_counters()

    _delete_in_crm(stack, crm_id)
    stack.poll()
    stack.host.drain()

    link = _link(referral_id)
    assert (link.last_status, link.crm_id) == ("detached", crm_id)
    assert stack.opportunities() == []
    assert stack.pc.writes == 0  # CLOSE_REFERRAL_ON_CRM_DELETE is off: the referral is left alone


def test_a_deleted_opportunity_that_was_never_synchronised_costs_no_job(stack):
    crm_id = stack.seller().create_flagged(flagged=False)
    stack.poll()
    _delete_in_crm(stack, crm_id)
    _dv(stack).reset_counters()

    stack.poll()

    assert stack.host.queue.depth() == 0
    assert _dv(stack).counters()["requests"] == 1


def test_a_table_without_change_tracking_is_polled_by_modifiedon_and_not_asked_every_poll(stack):
    _dv(stack).set_change_tracking("opportunities", enabled=False)
    crm_id = stack.seller().create_flagged()
    _dv(stack).reset_counters()

    stack.poll()
    stack.host.drain()

    assert _ours(stack, crm_id)["name"]  # synchronised all the same
    assert _tracking(stack)["refused"] == 1
    assert _poll_row()["DeltaFallbackUntil"] > datetime.now(UTC) + timedelta(hours=23)
    edited = stack.seller().create_flagged(name="Contoso - later deal")
    for _ in range(3):
        stack.poll()
        stack.host.drain()
    wiring.reset()  # a restarted app reads the fallback from the state row
    stack.poll()
    stack.host.drain()

    assert _ours(stack, edited)["name"] == "Contoso - later deal"
    assert _tracking(stack)["refused"] == 1  # asked once, not on every poll


def test_change_tracking_is_tried_again_when_the_fallback_ends(stack):
    _dv(stack).set_change_tracking("opportunities", enabled=False)
    crm_id = stack.seller().create_flagged()
    stack.poll()
    stack.host.drain()
    assert _poll_row()["DeltaMode"] == "modifiedon"
    referrals = _referrals(stack)
    # A day later the administrator has turned change tracking on.
    _dv(stack).set_change_tracking("opportunities", enabled=True)
    wiring.container().store.set_state(POLL_STATE_KEY, {"DeltaFallbackUntil": datetime.now(UTC) - timedelta(1)})
    wiring.reset()
    _dv(stack).reset_counters()

    stack.poll()
    stack.host.drain()
    stack.poll()

    assert _tracking(stack)["full"] == 1 and _tracking(stack)["delta"] == 1
    assert _poll_row()["DeltaMode"] == "delta"
    assert _referrals(stack) == referrals  # the full read found the synchronised one: an echo
    assert _ours(stack, crm_id)["name"]


def test_an_expired_token_starts_a_full_read_that_duplicates_nothing(stack):
    first = _synced(stack)
    second = _synced(stack, name="Contoso - second deal")
    stack.poll()
    stack.host.drain()
    referrals = _referrals(stack)
    _dv(stack).set_change_tracking("opportunities", expiry=timedelta(seconds=1))
    time.sleep(1.2)
    stack.pc.reset_counters()
    _dv(stack).reset_counters()

    stack.poll()

    assert _tracking(stack) == {"full": 1, "delta": 0, "refused": 1}
    assert stack.host.queue.depth() == 2  # both flagged opportunities, with their versions
    stack.host.drain()
    assert _referrals(stack) == referrals
    assert stack.crm_writes() == 0
    assert stack.pc.writes == 0
    assert {_ours(stack, crm_id)["externalReferenceId"] for crm_id in (first, second)} == {first, second}
    # The fresh token works (given the usual week again: a loaded machine may take over a second to get here).
    _dv(stack).set_change_tracking("opportunities", expiry=timedelta(days=7))
    _dv(stack).reset_counters()
    stack.poll()
    assert _tracking(stack) == {"full": 0, "delta": 1, "refused": 0}


@pytest.mark.parametrize("setting", ["off"])
def test_the_setting_off_keeps_the_modifiedon_poll(make_stack, setting):
    stack = make_stack(DATAVERSE_CHANGE_TRACKING=setting)
    crm_id = stack.seller().create_flagged()
    _dv(stack).reset_counters()
    stack.poll()
    stack.host.drain()
    assert _ours(stack, crm_id)["name"]
    assert _tracking(stack) == {"full": 0, "delta": 0, "refused": 0}


class _ThrottledAfterFirstPage:
    """The app's Dataverse adapter, with the emulator throttling the read after the first page (a 429 whose
    Retry-After, 3 s, is longer than the app waits inline, 2 s): the run stops between two pages."""

    def __init__(self, stack: Stack) -> None:
        self.crm: Any = wiring.container().crm
        self.dv = _dv(stack)

    def delta_pages(self, link: str | None, page_size: int) -> Any:
        for number, page in enumerate(self.crm.delta_pages(link, page_size)):
            yield page
            if number == 0:
                self.dv.inject_fault(429, count=1, retry_after=3, method="GET", path="opportunities")


def test_a_run_stopped_between_pages_resumes_from_the_saved_page(stack):
    from shared.store.delta_rows import DeltaRows
    from shared.sync.clock import SystemClock
    from shared.sync.delta_feed import DeltaFeed

    ids = [stack.seller().create_flagged(name=f"Contoso - deal {n}") for n in range(5)]
    c = wiring.container()
    rows, clock, crm = DeltaRows(c.store), SystemClock(), c.crm

    def feed(source: Any) -> DeltaFeed:
        return DeltaFeed(source, rows, c.queue, clock, c.poller, c.store.crm_link_state, page_size=2)

    first = feed(_ThrottledAfterFirstPage(stack)).poll()

    assert first.throttled and first.enqueued == 2
    assert "$skiptoken=" in _poll_row()["DeltaLink"]  # the next page's link, saved
    requests = len(_dv(stack).request_log)
    held_back = feed(crm).poll()  # before the Retry-After has passed: nothing is sent
    assert held_back.throttled and held_back.enqueued == 0 and len(_dv(stack).request_log) == requests
    time.sleep(3)
    second = feed(crm).poll()

    assert (second.throttled, second.enqueued) == ("", 3)
    assert sorted(job.record_id for job in stack.host.queue.peek_jobs()) == sorted(ids)
    assert "$deltatoken=" in _poll_row()["DeltaLink"]


@pytest.mark.parametrize("tracked", [True, False])
def test_setup_crm_says_whether_the_opportunity_table_tracks_changes(stack, capsys, tracked):
    from emulators.dataverse.schema import INTEGRATION_APP_ID
    from shared.__main__ import main

    _dv(stack).set_change_tracking("opportunities", enabled=tracked)
    main(["setup-crm", "--application-id", INTEGRATION_APP_ID])
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "change tracking on opportunity" in line]
    assert line.split()[0] == ("ok" if tracked else "manual"), out
    assert ("Track changes" in line) is not tracked
