"""/api/status from counters kept as jobs finish (issue 14): per-worker rows in the state table, folded hourly,
never a read of every link; plus the version, the last webhook, the recent failures and the poison summary.
Against Azurite and the emulators."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient
from azure.functions.queue import QueueMessage

from shared import wiring
from shared.domain.tallies import Totals
from shared.ports import KIND_CRM, KIND_CRM_LEAD, KIND_REFERRAL, LINK_KIND_LEAD, Job, Link
from shared.store.counters import COUNTERS_PARTITION, CounterRows, counter_rows, link_status_counts
from shared.store.queue import encode_job
from shared.store.tables import TableSyncStore
from shared.sync.recording import Outcome
from shared.sync.tally import Tally
from shared.version import APP_VERSION
from tests.harness import FixedClock


@pytest.fixture
def store(azurite, storage_names) -> TableSyncStore:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    names = storage_names
    return TableSyncStore(service, names["SYNC_LINKS_TABLE"], names["SYNC_STATE_TABLE"], names["SYNC_AUDIT_TABLE"])


def _tally(store: TableSyncStore, clock: FixedClock, flush_seconds: float = 0) -> Tally:
    tally = Tally(lambda: counter_rows(store), clock, lambda: link_status_counts(store), flush_seconds=flush_seconds)
    store.link_observer = tally.link_saved
    return tally


def _counter_rows(store: TableSyncStore) -> list[dict]:
    return list(store.state.query_entities(f"PartitionKey eq '{COUNTERS_PARTITION}'"))


def test_workers_count_in_rows_of_their_own_and_status_adds_them(store):
    clock = FixedClock(datetime(2026, 11, 30, 10, 5, tzinfo=UTC))
    first, second = _tally(store, clock), _tally(store, clock)
    first.job_finished(Outcome("created", "r1", "pc->crm", "c1", "r1"))
    second.job_finished(Outcome("updated", "c2", "crm->pc", "c2", "r2"))
    second.job_finished(Outcome("failed", "r3", "pc->crm", None, "r3", message="currency 'XYZ' is not known"))
    rows = _counter_rows(store)
    # One base row and one row per worker; each worker writes only its own row, so none waits on another's etag.
    assert sorted(r["RowKey"].split("-")[0] for r in rows) == ["2026113010", "2026113010", "base"]
    totals = _tally(store, clock).totals()  # a third process reads what both wrote
    assert totals.counts["jobs.created"] == 1 and totals.counts["jobs.updated"] == 1
    assert totals.counts["pc->crm.failed"] == 1
    assert [(f.kind, f.reason, f.referral_id) for f in totals.failures] == [
        ("failed", "currency 'XYZ' is not known", "r3")
    ]


def test_a_poisoned_crm_job_is_noted_on_the_crm_side_with_its_record_kind(store):
    """A lead's job (SYNC_COSELL_ONLY=false) names a CRM lead: given up, it is a crm->pc failure of that lead, not a
    pc->crm failure of a referral with the lead's id."""
    clock = FixedClock(datetime(2026, 11, 30, 10, 5, tzinfo=UTC))
    tally = _tally(store, clock)
    tally.job_raised(Job(KIND_CRM, "opp-1", reason="poll"), RuntimeError("CRM 500"), final_attempt=True)
    clock._now += timedelta(seconds=1)
    tally.job_raised(Job(KIND_CRM_LEAD, "lead-1", reason="poll"), RuntimeError("CRM 500"), final_attempt=True)
    notes = _tally(store, clock).totals().failures  # newest first, as another process reads them
    assert [(n.kind, n.direction, n.crm_id, n.referral_id, n.crm_kind) for n in notes] == [
        ("poisoned", "crm->pc", "lead-1", None, LINK_KIND_LEAD),
        ("poisoned", "crm->pc", "opp-1", None, None),
    ]


def test_rows_of_past_hours_are_folded_into_the_base_row_once(store):
    clock = FixedClock(datetime(2026, 11, 30, 10, 5, tzinfo=UTC))
    tally = _tally(store, clock)
    for _ in range(3):
        tally.job_finished(Outcome("created", "r", "pc->crm"))
    clock._now += timedelta(hours=1)
    tally.job_finished(Outcome("updated", "r", "pc->crm"))
    clock._now += timedelta(hours=2)  # 13:05: the rows of 10:00 and 11:00 are over and folded
    tally.job_finished(Outcome("unchanged", "r", "pc->crm"))
    rows = {r["RowKey"].split("-")[0]: r for r in _counter_rows(store)}
    assert sorted(rows) == ["2026113013", "base"]
    assert rows["base"]["FoldedThrough"] == "2026113011"
    # A row whose delete failed stays behind and is not counted again: the base row says it holds that hour.
    CounterRows(store.state, store.ensure).write("2026113011", "leftover", Totals(Counter({"jobs.updated": 1})))
    totals = _tally(store, clock).totals()
    assert (totals.counts["jobs.created"], totals.counts["jobs.updated"], totals.counts["jobs.unchanged"]) == (3, 1, 1)


def test_link_counts_follow_each_link_saved_and_start_from_one_scan(store):
    clock = FixedClock(datetime(2026, 11, 30, 10, 5, tzinfo=UTC))
    store.save_link(Link("before-counters", "c0", last_status="ok"))  # a link from before counters existed
    tally = _tally(store, clock)
    link = store.save_link(Link("r1", "c1", last_status="ok"))
    link.last_status = "failed"
    store.save_link(link)
    again = store.get_link("r1")
    again.last_status = "detached"
    store.save_link(again)
    assert tally.totals().link_counts() == Counter({"links.total": 2, "links.ok": 1, "links.detached": 1})
    # From now on status reads counter rows only: never every link.
    store.iter_links = lambda: pytest.fail("status must not read every link")  # type: ignore[method-assign]
    tally.flush()
    assert _tally(store, clock).totals().link_counts()["links.detached"] == 1


def test_links_a_worker_saved_before_another_process_counted_them_are_not_counted_twice(store):
    # Found by the first-day walk: the operator's `status` ran first and counted the links by a scan, then the
    # app wrote the link creations it still held, and status said 4 pairs where there were 2.
    clock = FixedClock(datetime(2026, 11, 30, 10, 5, tzinfo=UTC))
    app = _tally(store, clock, flush_seconds=3600)
    store.save_link(Link("r1", "c1", last_status="ok"))
    store.save_link(Link("r2", "c2", last_status="ok"))
    clock._now += timedelta(seconds=5)
    operator = Tally(lambda: counter_rows(store), clock, lambda: link_status_counts(store))
    assert operator.totals().link_counts() == Counter({"links.total": 2, "links.ok": 2})
    clock._now += timedelta(seconds=5)
    store.save_link(Link("r3", "c3", last_status="ok"))  # after the scan: counted by the app
    app.flush()
    expected = Counter({"links.total": 3, "links.ok": 3})
    assert _tally(store, clock).totals().link_counts() == expected
    assert app.totals().link_counts() == expected


def test_counting_writes_at_most_once_a_minute_and_never_fails_a_job(store):
    clock = FixedClock(datetime(2026, 11, 30, 10, 5, tzinfo=UTC))
    store.ensure()
    ticks = iter([0.0, 1.0, 2.0, 30.0, 61.0, 62.0])
    tally = Tally(lambda: counter_rows(store), clock, lambda: link_status_counts(store), monotonic=lambda: next(ticks))
    for _ in range(3):  # seconds 1, 2, 30: no write
        tally.job_finished(Outcome("created", "r", "pc->crm"))
    assert _counter_rows(store) == []
    tally.webhook_received()  # second 61: one write with all of it
    assert len([r for r in _counter_rows(store) if r["RowKey"] != "base"]) == 1

    def down() -> CounterRows:
        raise ConnectionError("Table Storage is down")

    broken = Tally(down, clock, Counter, flush_seconds=0)
    broken.job_finished(Outcome("created", "r", "pc->crm"))  # logged, kept in memory, the job carries on
    assert broken._pending.counts["jobs.created"] == 1


# -- through the app ----------------------------------------------------------------------------------------------
def test_status_reports_version_last_webhook_failures_and_poison(stack):
    before = datetime.now(UTC)
    bad = stack.pc.seed_referral(kind="cosell", details={"currency": "XYZ"})
    stack.deliver_and_drain(1)
    status = stack.status()
    assert status["version"] == APP_VERSION
    assert status["lastWebhookAt"] and datetime.fromisoformat(status["lastWebhookAt"]) >= before
    assert status["links"] == {"total": 1, "detached": 0, "failed": 1, "referral-missing": 0}
    assert status["jobs"]["failed"] == 1 and status["jobs"]["byDirection"]["pc->crm"] == {"failed": 1}
    [failure] = status["recentFailures"]
    assert failure["referralId"] == bad["id"] and "XYZ" in failure["reason"] and failure["kind"] == "failed"

    # A job that fails its last attempt is counted as poisoned, with why.
    attempts = status["jobs"]["failedAttempts"]
    good = stack.pc.seed_referral(kind="cosell", raise_event=False)
    stack.pc.add_fault(status=503, count=50, retry_after=None)
    body = encode_job(Job(KIND_REFERRAL, good["id"], reason="test")).encode()
    with pytest.raises(Exception):  # noqa: B017 - whatever the transient error, the host would poison the job
        stack.host.functions["sync_worker"](QueueMessage(id="m1", body=body, dequeue_count=5, pop_receipt="p"))
    stack.pc.clear_faults()
    stack.host.queue.poison.send_message(body.decode())  # where the host puts it after the last attempt
    status = stack.status()
    assert status["jobs"]["poisoned"] == 1 and status["jobs"]["failedAttempts"] == attempts + 1
    assert status["recentFailures"][0]["kind"] == "poisoned"
    assert status["recentFailures"][0]["referralId"] == good["id"] and "503" in status["recentFailures"][0]["reason"]
    assert status["poison"]["depth"] == 1
    assert [p["recordId"] for p in status["poison"]["oldest"]] == [good["id"]]
    assert status["queue"]["poison"] == 1


def test_status_reads_no_link_rows(stack, monkeypatch):
    stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    assert stack.status()["links"]["ok"] == 1  # the first call seeds the base row (one scan, once)
    store = wiring.container().store
    monkeypatch.setattr(store.links, "query_entities", lambda *a, **k: pytest.fail("status read every link"))
    assert stack.status()["links"] == {"total": 1, "detached": 0, "ok": 1, "referral-missing": 0}
    assert json.dumps(stack.status())  # serialisable, as the route answers it
