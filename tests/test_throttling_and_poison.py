"""Throttling defers jobs instead of poisoning them; polls keep their progress and fit in storage; the poison
queue tools move exactly what they report and show why each job failed.

Everything runs against Azurite and the emulators over real HTTP; the emulators answer 429/503 with
``Retry-After`` on request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from shared import wiring
from shared.__main__ import main
from shared.domain.errors import LeaseLost
from shared.ports import KIND_CRM, KIND_REFERRAL, AuditEntry, Change, Job, Link
from shared.store.queue import encode_job
from shared.store.state_rows import (
    VERSION_PROPERTY_BYTES,
    VERSIONS_BUDGET_BYTES,
    load_versions,
    pack_versions,
    version_columns,
)
from shared.store.tables import TableSyncStore
from shared.sync.clock import SystemClock
from shared.sync.engine import EngineOptions, SyncEngine
from shared.sync.job_runner import JobRunner
from shared.sync.poller import POLL_STATE_KEY, ChangeFeed
from shared.write_fence import fenced
from tests.harness import FixedClock

ROOT = Path(__file__).resolve().parent.parent
SEVEN_DAYS = 7 * 24 * 3600


def _wait_until_visible(stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not stack.host.queue.peek_jobs() and time.monotonic() < deadline:
        time.sleep(0.25)


def _run_as_final_attempt(stack) -> None:
    """Hand the next job to the worker function as the host does on the fifth and last delivery."""
    client = stack.host.queue.client
    [message] = list(client.receive_messages(max_messages=1, visibility_timeout=30))
    stack.host.functions["sync_worker"](
        QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=5, pop_receipt=message.pop_receipt)
    )
    client.delete_message(message)  # the invocation succeeded


# -- throttled jobs ----------------------------------------------------------------------------------------------
def test_a_throttle_longer_than_the_inline_wait_defers_the_job_then_it_runs(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    # Dataverse's service protection: 429, come back in 8 s, on the create's first read (the customer's account).
    # The app waits at most 2 s inline, and 5 s once a job has had an answer (here its referral).
    stack.view.emulator.inject_fault(status=429, count=1, retry_after=8, method="GET", path="accounts")
    run = stack.host.drain(max_rounds=1)
    assert (run.processed, run.failed) == (1, 0), run.errors  # no attempt counted towards the poison queue
    assert stack.host.queue.depth() == 1 and stack.host.queue.peek_jobs() == []  # back, out of sight
    assert stack.host.queue.poison_depth() == 0
    assert stack.opportunities() == []

    _wait_until_visible(stack, timeout=15)
    stack.host.drain()
    assert [o["referral_id"] for o in stack.opportunities()] == [referral["id"]]
    assert "failed" not in stack.audit_actions(referral["id"])


def test_a_job_that_has_read_its_referral_waits_out_a_throttle_inline_instead_of_reading_it_again(stack):
    """Dataverse refuses one job's first read for 4 s: longer than a request may wait inline (2 s here), within what
    a job that has had an answer may wait (5 s). Both jobs have read their referral from Partner Center; deferred,
    each would read it again when it ran. The other job meets the same closing as a wait for its turn."""
    referrals = [stack.pc.seed_referral(kind="cosell") for _ in range(2)]
    stack.pc.wait_for_deliveries(2, timeout=10)
    stack.view.emulator.inject_fault(status=429, count=1, retry_after=4, method="GET", path="accounts")
    stack.pc.reset_counters()
    run = stack.host.drain(max_rounds=1, parallel=2)
    assert (run.processed, run.failed) == (2, 0), run.errors
    assert stack.host.queue.depth() == 0  # neither job deferred
    assert sorted(o["referral_id"] for o in stack.opportunities()) == sorted(r["id"] for r in referrals)
    assert stack.pc.reads == 2  # each referral read once


def test_jobs_that_start_while_dataverse_holds_the_process_back_wait_without_spending_a_call(stack):
    """Once Dataverse has refused with a Retry-After longer than a job may wait inline, the jobs after it are
    deferred before they read anything: each would otherwise read its referral from Partner Center, meet the
    same wait at its first Dataverse request, and read it again when it runs later."""
    referrals = [stack.pc.seed_referral(kind="cosell") for _ in range(3)]
    stack.pc.wait_for_deliveries(3, timeout=10)
    # Longer than a job that has read its referral may wait inline (5 s): the first job is deferred too.
    stack.view.emulator.inject_fault(status=429, count=1, retry_after=8, method="GET", path="accounts")
    stack.pc.reset_counters()
    first = stack.host.drain(max_rounds=1)
    assert (first.processed, first.failed, stack.pc.reads) == (1, 0, 1)  # its referral read, then the 429
    stack.view.emulator.reset_counters()

    rest = stack.host.drain(max_rounds=2)
    assert (rest.processed, rest.failed) == (2, 0), rest.errors
    assert stack.host.queue.depth() == 3 and stack.host.queue.peek_jobs() == []  # all three back, out of sight
    assert stack.pc.reads == 1 and stack.view.emulator.counters()["requests"] == 0  # nothing read by the other two

    time.sleep(8)
    stack.host.drain()
    assert sorted(o["referral_id"] for o in stack.opportunities()) == sorted(r["id"] for r in referrals)
    assert stack.pc.reads == 1 + 3  # each referral read once more, when its job ran


def test_a_throttle_on_the_last_attempt_is_deferred_without_a_gave_up_mark_and_is_kept(stack, monkeypatch):
    stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    referral_id = stack.host.queue.peek_jobs()[0].record_id
    # Longer than a queue message may stay invisible: the job waits the 7 days it can, and must not expire.
    stack.view.emulator.inject_fault(status=429, count=1, retry_after=30 * 24 * 3600, method="GET", path="accounts")
    sent: list[Any] = []
    send = stack.host.queue.client.send_message

    def keep_receipt(*args: Any, **kwargs: Any) -> Any:
        sent.append(send(*args, **kwargs))
        return sent[-1]

    monkeypatch.setattr(stack.host.queue.client, "send_message", keep_receipt)
    _run_as_final_attempt(stack)

    assert "failed" not in stack.audit_actions(referral_id)  # no "gave up" on a job that is only waiting
    assert stack.host.queue.depth() == 1 and stack.host.queue.poison_depth() == 0
    [deferred] = sent
    hidden_for = (deferred.next_visible_on - deferred.inserted_on).total_seconds()
    assert hidden_for == pytest.approx(SEVEN_DAYS, abs=2)
    assert deferred.expires_on > deferred.next_visible_on + timedelta(days=365)


def test_a_503_with_retry_after_from_partner_center_defers_the_job(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    stack.pc.add_fault(status=503, count=1, retry_after=3600, method="GET", path="referrals")
    run = stack.host.drain(max_rounds=1)
    assert (run.processed, run.failed) == (1, 0), run.errors
    assert stack.host.queue.depth() == 1 and stack.host.queue.peek_jobs() == []
    assert stack.audit_actions(referral["id"]) == []


def test_a_job_that_loses_its_pair_lease_is_deferred_like_a_busy_pair(stack):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    stack.host.queue.client.clear_messages()
    c = wiring.container()
    # An engine without its own fence, so that the fence below is the one its writes pass through.
    engine = SyncEngine(c.partner_center, c.crm, c.store, EngineOptions())
    runner = JobRunner(engine, c.store, c.queue, SystemClock(), busy_retry_seconds=1)

    def lease_gone() -> None:
        raise LeaseLost("sync", "this worker lost the lease on the pair; it stops before writing")

    with fenced(lease_gone):
        assert runner.run(Job(KIND_REFERRAL, referral["id"]), final_attempt=True) == "deferred"
    assert stack.opportunities() == []  # the create was stopped before it was sent
    assert "failed" not in stack.audit_actions(referral["id"])
    _wait_until_visible(stack, timeout=5)
    assert [j.record_id for j in stack.host.queue.peek_jobs()] == [referral["id"]]
    stack.host.drain()
    assert [o["referral_id"] for o in stack.opportunities()] == [referral["id"]]


# -- polls keep their progress -------------------------------------------------------------------------------
def test_a_crm_poll_throttled_part_way_keeps_what_it_enqueued_and_resumes(make_stack, caplog):
    stack = make_stack(crm="salesforce")
    salesforce = stack.view.emulator
    salesforce.seed(
        "Opportunity",
        [
            {
                "Name": f"Bulk deal {i}",
                "StageName": "Qualification",
                "CloseDate": "2031-01-31",
                "Sync_with_Partner_Center__c": True,
            }
            for i in range(600)
        ],
    )
    # The poll reads 500 a page; the next page (a query locator) is refused for an hour.
    salesforce.inject_fault(status=503, count=1, method="GET", path=r"/query/", retry_after=3600)
    stack.poll()  # the timer does not fail
    store = wiring.container().store
    mark = store.get_watermark(POLL_STATE_KEY)
    assert mark is not None and (mark.last_seen, mark.last_enqueued) == (500, 500)
    assert "503" in mark.last_interruption
    assert "throttled after 500 change(s)" in caplog.text
    assert stack.host.queue.depth() == 500

    stack.poll()
    mark = store.get_watermark(POLL_STATE_KEY)
    assert mark is not None and mark.last_enqueued == 100 and mark.last_interruption == ""
    assert stack.host.queue.depth() == 600  # each opportunity once


def test_a_reconcile_throttled_part_way_keeps_what_it_enqueued_and_resumes(stack, monkeypatch, capsys):
    stack.pc.dispatch_mode = "off"  # every webhook lost: only the reconciliation finds the referrals
    monkeypatch.setattr(stack.pc, "page_size", 2)
    ids = [stack.pc.seed_referral(kind="cosell")["id"] for _ in range(5)]
    # Partner Center starts throttling for an hour once the first page is out.
    stack.pc.add_fault(status=429, count=1, retry_after=3600, method="GET", path="referrals", after=1)
    assert main(["reconcile"]) == 1  # the run stopped early, and says so
    captured = capsys.readouterr()
    assert "2 referral(s) changed since the last run, 2 job(s) enqueued" in captured.out
    assert "stopped early: Partner Center is throttling (it asks to wait 3600s)" in captured.err
    assert stack.host.queue.depth() == 2

    assert main(["reconcile"]) == 0
    assert "3 job(s) enqueued" in capsys.readouterr().out  # the rest, and nothing twice
    assert stack.host.queue.depth() == 5
    stack.host.drain()
    assert sorted(o["referral_id"] for o in stack.opportunities()) == sorted(ids)


# -- poll state fits in Table Storage ------------------------------------------------------------------------
def _units(value: Any) -> int:
    return len(value.encode("utf-16-le")) // 2 if isinstance(value, str) else len(value)


def _entity_bytes(row: dict[str, Any]) -> int:
    """Microsoft's formula: 4 + both keys in UTF-16 + per property 8 + name in UTF-16 + value."""
    size = 4 + 2 * (_units(row["PartitionKey"]) + _units(row["RowKey"]))
    for name, value in row.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        if isinstance(value, str):
            size += 8 + 2 * _units(name) + 4 + 2 * _units(value)
        elif isinstance(value, bytes):
            size += 8 + 2 * _units(name) + 4 + len(value)
        else:
            size += 8 + 2 * _units(name) + 8
    return size


def _row_fits(store: TableSyncStore) -> bool:
    row = dict(store.state.get_entity("state", POLL_STATE_KEY))
    fits = all(_units(v) <= 32_000 for v in row.values() if isinstance(v, str | bytes))
    return fits and _entity_bytes(row) < 64 * 1024


def test_a_burst_of_5000_changes_inside_the_overlap_window_saves_and_is_not_enqueued_again(feed_parts):
    store, queue = feed_parts
    start = datetime(2031, 3, 4, 9, 0, tzinfo=UTC)
    # A bulk edit: 5,000 opportunities changed within 250 s; two minutes later a seller edits one more.
    changes = [Change(f"opp-{i:05d}", f'W/"{i}"', start + timedelta(milliseconds=50 * i)) for i in range(5000)]
    clock = FixedClock(start + timedelta(minutes=5))

    def changed_since(since: datetime | None) -> Iterator[Change]:
        return iter([c for c in changes if since is None or (c.changed_at and c.changed_at >= since)])

    feed = ChangeFeed(POLL_STATE_KEY, KIND_CRM, changed_since, store, queue, clock, overlap_seconds=300)
    first = feed.poll()
    assert (first.seen, first.enqueued) == (5000, 5000)
    assert _row_fits(store)

    changes.append(Change("opp-late", 'W/"1"', start + timedelta(seconds=370)))
    clock._now += timedelta(minutes=3)
    second = feed.poll()  # 3,600 of the burst are still inside the overlap window, 2 to 5 minutes old
    assert (second.seen, second.enqueued) == (5001, 1)
    assert _row_fits(store)

    # Nothing new: the run reads from the second run's start minus the overlap (180 s into the burst), not
    # from the watermark minus the overlap, and what comes back was enqueued already.
    third = feed.poll()
    assert (third.seen, third.enqueued) == (1401, 0)
    assert queue.depth() == 5001


def test_past_the_budget_the_oldest_versions_are_forgotten_first():
    newest = datetime(2031, 3, 4, 9, 5, tzinfo=UTC)
    versions = {f"{i:010x}": newest - timedelta(milliseconds=10 * i) for i in range(20_000)}  # i=0 is newest
    columns = version_columns(versions, newest)
    assert all(len(part) <= VERSION_PROPERTY_BYTES for part in columns.values())
    kept = load_versions(columns, newest)
    assert 10_000 < len(kept) < 20_000
    assert len(pack_versions(versions, newest)) <= VERSIONS_BUDGET_BYTES
    assert set(kept) == {f"{i:010x}" for i in range(len(kept))}  # exactly the newest ones


def test_a_state_saved_by_the_previous_version_is_still_understood(feed_parts):
    store, queue = feed_parts
    watermark = datetime(2031, 3, 4, 9, 0, tzinfo=UTC)
    changes = [Change(f"opp-{i}", "1", watermark - timedelta(seconds=i)) for i in range(3)]
    feed = ChangeFeed(POLL_STATE_KEY, KIND_CRM, lambda since: iter(changes), store, queue, FixedClock(watermark), 300)
    feed.poll()
    digests = sorted(load_versions(store.get_state(POLL_STATE_KEY) or {}, watermark))
    # The row as the previous version wrote it, versions in text: "digest:age,...".
    store.state.delete_entity("state", POLL_STATE_KEY)
    store.set_state(POLL_STATE_KEY, {"Watermark": watermark, "Versions": ",".join(f"{d}:0" for d in digests)})
    assert queue.depth() == 3
    assert feed.poll().enqueued == 0


# -- poison tools ----------------------------------------------------------------------------------------------
def _poison(stack, *jobs: Job | str) -> None:
    for job in jobs:
        stack.host.queue.poison.send_message(job if isinstance(job, str) else encode_job(job))


def test_replay_poison_with_a_limit_moves_exactly_that_many(stack, capsys):
    jobs = [Job(KIND_CRM, f"opp-{i}", reason="crm-poll", enqueued_at=f"2031-03-04T09:0{i}:00+00:00") for i in range(3)]
    _poison(stack, *jobs)
    assert main(["replay-poison", "--limit", "2"]) == 0
    assert "replayed 2 job(s)" in capsys.readouterr().out
    assert stack.host.queue.depth() == 2
    assert stack.host.queue.poison_depth() == 1
    assert main(["poison", "list", "--json"]) == 0
    left = json.loads(capsys.readouterr().out)
    moved = {j.record_id for j in stack.host.queue.peek_jobs()}
    assert [row["recordId"] for row in left] == [j.record_id for j in jobs if j.record_id not in moved]

    assert main(["poison", "replay"]) == 0
    assert "replayed 1 job(s)" in capsys.readouterr().out
    assert stack.host.queue.poison_depth() == 0
    assert sorted(j.record_id for j in stack.host.queue.peek_jobs()) == ["opp-0", "opp-1", "opp-2"]


def test_poison_list_shows_each_job_with_its_records_last_error(stack, capsys):
    store = wiring.container().store
    earlier = datetime.now(UTC) - timedelta(hours=2)
    # A referral the CRM refused (the link says why), and an opportunity given up on after transient errors.
    store.save_link(
        Link(
            referral_id="ref-1",
            crm_id="opp-1",
            last_status="failed",
            last_error="Not synchronised: the customer country is missing.",
            last_synced_at=earlier,
        )
    )
    store.append_audit(
        AuditEntry(
            record_key="opp-2",
            action="failed",
            direction="crm->pc",
            message="Gave up after repeated transient errors; the job goes to the poison queue: Dataverse 500",
            crm_id="opp-2",
            at=earlier,
        )
    )
    store.append_audit(AuditEntry(record_key="opp-2", action="unchanged", direction="crm->pc", message="ok"))
    _poison(
        stack,
        Job(KIND_REFERRAL, "ref-1", reason="webhook", enqueued_at="2031-03-04T09:00:00+00:00"),
        Job(KIND_CRM, "opp-2", reason="crm-poll"),
        Job(KIND_CRM, "opp-3", reason="backfill"),
        "{not json",
    )
    assert main(["poison", "list"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["POISONED", "AT", "(UTC)", "KIND", "RECORD", "ENQUEUED", "AT", "(UTC)", "LAST", "ERROR"]
    assert "pc-referral" in lines[1] and "ref-1" in lines[1] and "2031-03-04 09:00:00" in lines[1]
    assert "the customer country is missing" in lines[1]
    assert "opp-2" in lines[2] and "Gave up after repeated transient errors" in lines[2]
    assert "opp-3" in lines[3] and lines[3].rstrip().endswith("-")
    assert "(unreadable)" in lines[4]
    assert "4 poisoned job(s)" in table

    assert main(["poison", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["recordId"]) for r in rows] == [
        ("pc-referral", "ref-1"),
        ("crm-opportunity", "opp-2"),
        ("crm-opportunity", "opp-3"),
        (None, None),
    ]
    assert rows[0]["lastError"] == "Not synchronised: the customer country is missing."
    assert rows[1]["lastError"].endswith("Dataverse 500") and rows[1]["lastErrorAt"]
    assert rows[2]["lastError"] is None and rows[3]["unreadable"] == "{not json"
    assert all(r["poisonedAt"] for r in rows)
    assert stack.host.queue.poison_depth() == 4  # listing moves nothing


def test_poison_list_sees_past_the_32_messages_a_peek_shows(stack, capsys):
    _poison(stack, *(Job(KIND_CRM, f"opp-{i:02d}") for i in range(40)))
    assert main(["poison", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["recordId"] for r in rows) == [f"opp-{i:02d}" for i in range(40)]
    assert len(stack.host.queue.poison.peek_messages(max_messages=32)) == 32  # all visible again


def test_the_poison_commands_have_help():
    for command in (["poison", "list"], ["poison", "replay"], ["replay-poison"]):
        result = subprocess.run(
            [sys.executable, "-m", "shared", *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "usage:" in result.stdout
