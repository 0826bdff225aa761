"""Pair leases a job cannot outlive: renewed while the job works, and a worker that lost its lease writes
nothing more. Against Azurite and the emulators over real HTTP; the slow calls are the emulators' own
network latency faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import UpdateMode

from emulators.partner_center.samples import outgoing_cosell_body
from shared import wiring
from shared.domain.checkmark import CROSS
from shared.domain.errors import LeaseLost, PairBusy
from shared.partner_center.client import PartnerCenterClient, PartnerCenterConfig
from shared.ports import KIND_CRM, KIND_REFERRAL, Job
from shared.settings import load_settings
from shared.store.connections import table_service
from shared.store.tables import LINK_PARTITION, TableSyncStore, lease_key
from shared.sync.engine import SyncEngine
from shared.sync.lease import THREAD_NAME_PREFIX
from shared.wiring import storage_config
from shared.write_fence import fenced
from tests.e2e_stack import PC_TOKEN, Stack

# The job's first CRM read: the opportunity, or for a referral without one the customer's account (no lookup of the
# referral id comes before the create: the create itself is the guard).
OPPORTUNITY_READS = r"/(opportunities|accounts)"


def renewal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX) and t.is_alive()]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


class Worker(threading.Thread):
    """One Functions worker thread running one job through the engine."""

    def __init__(self, engine: SyncEngine, job: Job, final_attempt: bool = False) -> None:
        super().__init__(name=f"worker-{job.record_id}", daemon=True)
        self.engine, self.job, self.final_attempt = engine, job, final_attempt
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.engine.handle(self.job, final_attempt=self.final_attempt)
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 30.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the job did not end"
        return self.result


@pytest.fixture
def dataverse_stack(make_stack, dv) -> Iterator[Stack]:
    dv.network_faults.clear()
    yield make_stack(crm="dynamics")
    dv.network_faults.clear()  # the emulator lives for the whole session


def short_lease_engine(monkeypatch, seconds: int, margin: float) -> SyncEngine:
    """The app's own engine (wired with the write fence), with a lease short enough to outlive in a test."""
    engine = wiring.container().engine
    monkeypatch.setattr(engine, "options", replace(engine.options, lease_seconds=seconds, lease_margin_seconds=margin))
    return engine


def slow_next_opportunity_read(dv, delay: float) -> Callable[[], bool]:
    dv.network_faults.add("latency", method="GET", path=OPPORTUNITY_READS, delay=delay)
    return lambda: dv.network_faults.stats()["injected"].get("latency", 0) >= 1


def take_over(store: TableSyncStore, key: str, owner: str) -> None:
    """What another worker's takeover leaves in the lease row."""
    store.ensure()
    store.links.upsert_entity(
        {
            "PartitionKey": LINK_PARTITION,
            "RowKey": lease_key(key),
            "Owner": owner,
            "Until": datetime.now(UTC) + timedelta(seconds=60),
        },
        mode=UpdateMode.REPLACE,
    )


def test_a_job_slower_than_its_lease_keeps_it_and_a_second_worker_is_refused(dataverse_stack, dv, monkeypatch):
    stack = dataverse_stack
    engine = short_lease_engine(monkeypatch, seconds=3, margin=0.5)
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    job = Job(KIND_REFERRAL, referral["id"], reason="test")
    slowed = slow_next_opportunity_read(dv, delay=6.0)  # twice the lease, inside the job's lease

    started = time.monotonic()
    first = Worker(engine, job)
    first.start()
    wait_until(slowed)
    assert len(renewal_threads()) == 1  # the first worker is renewing its lease while it waits
    time.sleep(max(0.0, started + 4.0 - time.monotonic()))  # the lease as first taken ended a second ago

    with pytest.raises(PairBusy):
        engine.handle(job)  # a second worker, same pair: still busy, because the first one renewed

    assert first.outcome().action == "created", first.error
    assert [o["referral_id"] for o in stack.opportunities()] == [referral["id"]]
    assert renewal_threads() == []  # the renewal stopped with the job


@pytest.mark.parametrize("kind", [KIND_REFERRAL, KIND_CRM])
def test_a_worker_whose_lease_was_taken_over_writes_nothing_more(dataverse_stack, dv, monkeypatch, kind):
    stack = dataverse_stack
    engine = short_lease_engine(monkeypatch, seconds=6, margin=1.0)  # renewed every 2 s; deadline at 5 s
    store = wiring.container().store
    if kind == KIND_REFERRAL:
        record_id = stack.pc.seed_referral(kind="cosell", raise_event=False)["id"]
        key = f"referral:{record_id}"
    else:
        record_id = stack.seller().create_flagged()
        key = f"crm:{record_id}"
    crm_before, crm_writes, pc_writes = stack.opportunities(), stack.crm_writes(), stack.pc.writes
    # Long enough for a renewal to notice the takeover, short enough to end before the local deadline.
    slowed = slow_next_opportunity_read(dv, delay=3.5)

    worker = Worker(engine, Job(kind, record_id, reason="test"), final_attempt=True)
    worker.start()
    wait_until(slowed)
    take_over(store, key, "worker-b")  # this worker stalled; another took the pair over
    worker.outcome()

    # A referral job writes its pending link ahead of the stalled read, taking the lease then: it loses it. A CRM job
    # stalls at its first read, before any write: it never takes the lease, and finds it held when it would write.
    assert isinstance(worker.error, LeaseLost if kind == KIND_REFERRAL else PairBusy), worker.error
    assert stack.crm_writes() == crm_writes and stack.opportunities() == crm_before  # not even a failure mark
    assert stack.pc.writes == pc_writes
    assert [r for r in stack.pc.referrals() if r.get("externalReferenceId") == record_id] == []
    link = store.get_link(record_id) if kind == KIND_REFERRAL else store.find_link_by_crm_id(record_id)
    # At most what a referral's create wrote ahead before it stalled (the lease still held): it names no record.
    assert link is None or (kind == KIND_REFERRAL and link.crm_id is None and link.last_status == "pending")
    assert not store.acquire_lease(key, "worker-c", 60)  # the new owner's lease was left alone
    assert renewal_threads() == []


def test_a_worker_that_cannot_renew_stops_writing_before_its_lease_ends(dataverse_stack, dv, monkeypatch):
    stack = dataverse_stack
    engine = short_lease_engine(monkeypatch, seconds=3, margin=0.5)  # writes stop 2.5 s after the last renewal
    store = wiring.container().store

    def storage_unreachable(key: str, owner: str, seconds: int) -> bool:
        raise ServiceRequestError("connection refused")

    monkeypatch.setattr(store, "renew_lease", storage_unreachable)
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    slow_next_opportunity_read(dv, delay=3.5)

    with pytest.raises(LeaseLost):
        engine.handle(Job(KIND_REFERRAL, referral["id"], reason="test"))

    assert stack.opportunities() == []
    link = store.get_link(referral["id"])  # at most what was written ahead while the lease held: names no record
    assert link is None or (link.crm_id is None and link.last_status == "pending")
    # Still its own row, so the worker released it: the next worker need not wait for it to expire.
    assert store.acquire_lease(f"referral:{referral['id']}", "worker-b", 60)
    assert renewal_threads() == []


@pytest.fixture
def store(azurite, storage_names) -> TableSyncStore:
    settings = load_settings(
        AzureWebJobsStorage=azurite.connection_string,
        DATAVERSE_URL="http://127.0.0.1:1",
        PARTNER_CENTER_ACCESS_TOKEN="t",
        **storage_names,
    )
    return TableSyncStore(
        table_service(storage_config(settings)), settings.links_table, settings.state_table, settings.audit_table
    )


def _until(store: TableSyncStore, key: str) -> datetime:
    return store.links.get_entity(LINK_PARTITION, lease_key(key))["Until"]


def test_only_the_holder_renews_and_an_expired_lease_is_never_taken_back(store):
    assert store.acquire_lease("held", "worker-a", 10)
    before = _until(store, "held")
    assert store.renew_lease("held", "worker-a", 60)
    assert _until(store, "held") > before + timedelta(seconds=40)
    assert not store.renew_lease("held", "worker-b", 60)

    assert store.acquire_lease("expired", "worker-a", -1)
    assert not store.renew_lease("expired", "worker-a", 60)  # someone may have taken it since it ended
    assert store.acquire_lease("expired", "worker-b", 60)

    assert not store.renew_lease("released", "worker-a", 60)
    assert store.acquire_lease("released", "worker-b", 60)  # a failed renewal leaves no row behind


def test_a_lease_that_runs_out_while_a_token_is_refreshed_stops_the_write(pc):
    """The lease margin allows one call's timeout between the check and the write, so the check comes after
    the token (whose refresh is an HTTP call of its own), right before the request is sent."""
    lost = threading.Event()

    def lease_check() -> None:
        if lost.is_set():
            raise LeaseLost("sync", "lease lost")

    def slow_refresh() -> str:
        lost.set()  # the refresh took so long that the lease ran out meanwhile
        return PC_TOKEN

    client = PartnerCenterClient(PartnerCenterConfig(pc.url, timeout=5), slow_refresh)
    writes, referrals = pc.writes, len(pc.referrals())
    with fenced(lease_check), pytest.raises(LeaseLost):
        client.create_referral(outgoing_cosell_body())
    assert pc.writes == writes and len(pc.referrals()) == referrals


def test_a_last_attempt_that_finds_the_pair_busy_is_deferred_and_marks_nothing(dataverse_stack, monkeypatch):
    # The lease is taken with the job's first write, inside the job: finding it held is not a failure of the
    # record, even on the last attempt and even if the other worker lets go of the pair right after.
    stack = dataverse_stack
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    store = wiring.container().store
    crm_id = store.get_link(referral["id"]).crm_id
    key = f"crm:{crm_id}"
    assert store.acquire_lease(key, "another-worker", 60)
    original = store._with_lease

    def busy_then_released(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except PairBusy:
            store.release_lease(key, "another-worker")
            raise

    monkeypatch.setattr(store, "_with_lease", busy_then_released)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "edited"}}, raise_event=False)
    with pytest.raises(PairBusy):
        wiring.container().engine.handle(Job(KIND_REFERRAL, referral["id"], reason="test"), final_attempt=True)
    assert CROSS not in stack.opportunity(crm_id)["name"]
    assert [e.action for e in store.audit_trail(referral["id"]) if e.action == "failed"] == []
