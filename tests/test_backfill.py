"""``python -m shared backfill --from partner-center``: the day-one load of the partner's open referrals, against
Azurite, the Partner Center emulator and a CRM emulator. Referrals are seeded without webhooks, as the ones that
were there before the connector."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from emulators.partner_center.samples import MICROSOFT_ORG_ID, cosell_referral
from shared import wiring
from shared.__main__ import main
from shared.domain.referral import Referral
from shared.ports import KIND_REFERRAL, LINK_KIND_LEAD
from shared.sync.backfill import backfill_referrals
from tests.e2e_stack import Stack

OLD = "2024-01-01T00:00:00Z"


def _seed_day_one(stack: Stack) -> dict[str, dict[str, Any]]:
    """Referrals of every kind the load must tell apart, none of them announced by a webhook."""
    pc = stack.pc
    new = pc.seed_referral(kind="cosell", raise_event=False, name="Contoso - new")
    seeded = {
        "new": new,
        "active": pc.seed_referral(
            kind="cosell", raise_event=False, name="Contoso - active", status="Active", substatus="Accepted"
        ),
        "closed": pc.seed_referral(
            kind="cosell", raise_event=False, name="Contoso - won", status="Closed", substatus="Won"
        ),
        # The referral the partner created for Microsoft on the same engagement: the partner's one carries it.
        "microsoft": pc.seed_referral(
            kind="cosell",
            raise_event=False,
            name="Contoso - for Microsoft",
            engagementId=new["engagementId"],
            direction="Outgoing",
            target=[{"type": "BusinessProfileLocation", "id": MICROSOFT_ORG_ID}],
        ),
        "lead": pc.seed_referral(kind="lead", raise_event=False),
    }
    assert not pc.deliveries()
    return seeded


def _queued(stack: Stack) -> set[str]:
    jobs = stack.host.queue.peek_jobs()
    assert {job.kind for job in jobs} <= {KIND_REFERRAL}
    assert len(jobs) == len({job.record_id for job in jobs}), "a referral was enqueued twice in one run"
    return {job.record_id for job in jobs}


def _drain(stack: Stack) -> None:
    run = stack.host.drain()
    assert stack.host.queue.depth() == 0, run.errors
    assert run.failed == 0, run.errors


@pytest.mark.parametrize("crm", ["dynamics", "salesforce"])
def test_open_cosell_referrals_become_opportunities_once(stack, capsys):
    seeded = _seed_day_one(stack)
    wanted = {seeded["new"]["id"], seeded["active"]["id"]}

    assert main(["backfill", "--from", "partner-center"]) == 0
    out = capsys.readouterr().out
    assert "done: 2 jobs on queue 'sync-jobs' from 4 referral(s) read" in out  # the closed one is never listed
    assert "left out: 1 Microsoft's copy, 1 lead (SYNC_COSELL_ONLY is on)" in out
    assert _queued(stack) == wanted
    _drain(stack)
    assert {o["referral_id"] for o in stack.opportunities()} == wanted
    assert len(stack.opportunities()) == 2

    # Again: the same jobs, each a no-op for the engine.
    stack.view.reset_counters()
    pc_writes = stack.pc.writes
    assert main(["backfill", "--from", "partner-center"]) == 0
    assert "done: 2 jobs" in capsys.readouterr().out
    assert _queued(stack) == wanted
    gets = stack.pc.counters().get("get", 0)
    _drain(stack)
    assert stack.pc.counters().get("get", 0) == gets  # each job carries the eTag it was listed at: an echo
    assert len(stack.opportunities()) == 2
    assert stack.crm_writes() == 0
    assert stack.pc.writes == pc_writes
    for referral_id in wanted:
        assert stack.audit_actions(referral_id) == ["created"]


def test_leads_come_too_when_not_cosell_only(make_stack, capsys):
    stack = make_stack(SYNC_COSELL_ONLY="false")
    seeded = _seed_day_one(stack)
    assert main(["backfill", "--from", "partner-center"]) == 0
    assert "left out: 1 Microsoft's copy\n" in capsys.readouterr().out
    wanted = {seeded[name]["id"] for name in ("new", "active", "lead")}
    assert _queued(stack) == wanted
    _drain(stack)
    # The lead comes in as a CRM lead, the co-sell referrals as opportunities.
    assert {o["referral_id"] for o in stack.opportunities()} == wanted - {seeded["lead"]["id"]}
    link = wiring.container().store.get_link(seeded["lead"]["id"])
    assert link is not None and link.crm_kind == LINK_KIND_LEAD


def test_a_linked_referral_changed_without_a_webhook_takes_the_change(stack, capsys):
    # One came in by webhook once the connector was live; the day-one load reads it too.
    live = stack.pc.seed_referral(kind="cosell", name="Contoso - live")
    stack.deliver_and_drain(1)
    stack.pc.portal_update(live["id"], {"details": {"notes": "Edited while the webhook was down."}}, raise_event=False)
    older = stack.pc.seed_referral(kind="cosell", name="Contoso - before", raise_event=False)
    stack.view.reset_counters()
    assert main(["backfill", "--from", "partner-center"]) == 0
    assert _queued(stack) == {live["id"], older["id"]}
    _drain(stack)
    rows = {o["referral_id"]: o for o in stack.opportunities()}
    assert set(rows) == {live["id"], older["id"]}
    # The linked one takes the change it missed, as the lost webhook's job would have.
    assert rows[live["id"]]["notes"] == "Edited while the webhook was down."
    assert stack.audit_actions(live["id"])[0] == "updated"


@pytest.mark.parametrize(
    ("since", "old_included"),
    [
        ("2024-01-01", True),
        ("2024-01-01T09:00:00+09:00", True),  # 00:00 UTC: at or after is included
        ("2024-01-01T09:00:01+09:00", False),
        ("2024-01-01T00:00:01", False),  # no offset: UTC
        ("2024-01-01T00:00:01Z", False),
        ("2030-01-01", None),  # nothing updated since
    ],
)
def test_since_takes_only_referrals_updated_at_or_after_it(stack, capsys, since, old_included):
    old = stack.pc.seed_referral(kind="cosell", raise_event=False, createdDateTime=OLD, updatedDateTime=OLD)
    recent = stack.pc.seed_referral(kind="cosell", raise_event=False)
    assert main(["backfill", "--from", "partner-center", "--since", since]) == 0
    expected = set() if old_included is None else {recent["id"]} | ({old["id"]} if old_included else set())
    assert _queued(stack) == expected
    assert f"done: {len(expected)} jobs" in capsys.readouterr().out


def test_since_works_where_partner_center_refuses_the_date_filter(stack, capsys, monkeypatch, caplog):
    monkeypatch.setattr(stack.pc, "filterable", stack.pc.filterable - {"updatedDateTime"})
    stack.pc.seed_referral(kind="cosell", raise_event=False, createdDateTime=OLD, updatedDateTime=OLD)
    recent = stack.pc.seed_referral(kind="cosell", raise_event=False, status="Active", substatus="Accepted")
    assert main(["backfill", "--from", "partner-center", "--since", "2025-01-01"]) == 0
    assert "refused the updatedDateTime filter" in caplog.text
    assert _queued(stack) == {recent["id"]}
    assert "1 not updated since --since" in capsys.readouterr().out


@pytest.mark.parametrize("since", ["yesterday", "2024-13-01", "01/05/2024", ""])
def test_a_bad_since_exits_2_saying_what_is_wrong(since, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["backfill", "--from", "partner-center", "--since", since])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--since" in err and f"{since!r} is not an ISO 8601 date or date-time" in err


def test_since_is_refused_with_the_crm_backfill(stack, capsys):
    stack.seller().create_flagged(help_code=None)
    assert main(["backfill", "--since", "2024-01-01"]) == 2
    assert "--from partner-center only" in capsys.readouterr().err
    assert stack.host.queue.depth() == 0


def test_progress_every_hundred_across_pages(stack, capsys):
    ids = {stack.pc.seed_referral(kind="cosell", raise_event=False)["id"] for _ in range(105)}
    stack.pc.seed_referral(kind="cosell", raise_event=False, status="Closed", substatus="Lost")
    assert main(["backfill", "--from", "partner-center"]) == 0
    out = capsys.readouterr().out
    assert "read 100 referral(s), enqueued 100" in out
    assert "done: 105 jobs on queue 'sync-jobs' from 105 referral(s) read" in out
    assert stack.host.queue.depth() == 105
    assert _queued(stack) <= ids  # a peek sees at most 32


def test_a_throttled_listing_keeps_what_it_enqueued_and_exits_1(stack, capsys, monkeypatch):
    first = stack.pc.seed_referral(kind="cosell", raise_event=False)
    stack.pc.seed_referral(kind="cosell", raise_event=False, status="Active", substatus="Accepted")
    queue = stack.host.queue  # the CLI's queue too (one container)
    enqueue = queue.enqueue

    def enqueue_then_throttle(job, delay_seconds=0):
        # Once the New referral is enqueued, Partner Center throttles for longer than the app waits inline.
        enqueue(job, delay_seconds)
        stack.pc.add_fault(429, count=10, retry_after=60, method="GET")

    monkeypatch.setattr(queue, "enqueue", enqueue_then_throttle)
    assert main(["backfill", "--from", "partner-center"]) == 1
    captured = capsys.readouterr()
    assert "so far: 1 jobs" in captured.out
    assert "stopped early: Partner Center 429" in captured.err and "run the backfill again" in captured.err
    stack.pc.clear_faults()
    assert _queued(stack) == {first["id"]}


def test_what_is_read_decides_not_what_was_asked_for(feed_parts):
    # A listing that answers more than it was asked: a closed referral, one read twice (accepted while the New
    # ones were paged), one older than --since, one without an id. Only the open, recent one is enqueued, once.
    _, queue = feed_parts
    queue.ensure()

    def referral(updated: str = "2025-01-01T00:00:00Z", **overrides: Any) -> Referral:
        body = cosell_referral(**{"id": str(uuid.uuid4()), "updatedDateTime": updated, "eTag": '"v1"', **overrides})
        return Referral.model_validate(body)

    wanted = referral()  # at the very second --since names: included
    listing = [
        wanted,
        referral(status="Closed", substatus="Won"),
        wanted.model_copy(update={"status": "Active"}),
        referral(updated="2024-12-31T23:59:59.999Z"),
        referral(id=None),
    ]
    asked: list[datetime | None] = []

    def read(since: datetime | None) -> list[Referral]:
        asked.append(since)
        return listing

    result = backfill_referrals(read, queue, since=datetime(2025, 1, 1, 0, 0, 0, 700_000, tzinfo=UTC))
    assert asked == [datetime(2025, 1, 1, tzinfo=UTC)]  # whole seconds, as Partner Center's filter is sent
    assert (result.read, result.enqueued, result.stopped) == (5, 1, "")
    assert result.skipped == {"not open": 1, "read twice": 1, "not updated since --since": 1, "without an id": 1}
    jobs = [(j.kind, j.record_id, j.reason, j.version) for j in queue.peek_jobs()]
    assert jobs == [(KIND_REFERRAL, wanted.id, "backfill", '"v1"')]


def test_help_says_a_second_run_is_a_no_op(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["backfill", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--from {crm,partner-center}" in out and "--since DATE" in out
    assert "Safe to run again" in out and "no-op" in out
