"""`make bench` in small: 10 records through the real app out of process (workers, webhooks, polls), no added
latency. bench.json must have its documented shape, no record may be missing or duplicated, and calls must
be counted where they have to happen. Only counts are asserted, never a time: the figures are for people.

Also the pieces the bench stands on: Partner Center holding webhooks until released, Dataverse's request
limit, and what the storage proxy pauses and counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.bench.report import LATENCIES, PATHS
from devtools.bench.storage_proxy import is_receive, kind_of, table_of
from emulators.dataverse.emulator import RequestLimit
from emulators.partner_center.dispatch import WebhookDispatcher, new_delivery

ROOT = Path(__file__).resolve().parent.parent
GOALS = {
    "crm_to_pc_create",
    "pc_to_crm_create",
    "pc_update",
    "crm_update",
    "echo",
    "unchanged_poll",
    "table_ops_per_job",
    "peak_rss",
    "webhook_to_crm_p95",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    output = tmp / "bench.json"
    env = {**os.environ, "TMPDIR": str(tmp)}  # the run keeps its processes' logs there when it fails
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    args = "--records 10 --latency-ms 0 --workers 2 --latency-samples 3".split()
    result = subprocess.run(
        [sys.executable, "-m", "devtools.bench", *args, "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text())


def test_bench_json_has_the_documented_shape(bench: dict):
    assert set(bench) == {
        "records",
        "crm",
        "calls_per_record",
        "unchanged_poll_requests",
        "latency_s",
        "peak_rss_mb",
        "table_ops_per_job_by_table",
        "duplicates",
        "missing",
        "notes",
        "goals",
    }
    assert bench["records"] == 10 and bench["crm"] == "dynamics"
    assert all(isinstance(note, str) for note in bench["notes"])
    assert set(bench["calls_per_record"]) == set(PATHS)
    for calls in bench["calls_per_record"].values():
        assert set(calls) == {"pc", "crm", "table"}
        assert all(isinstance(n, int | float) and n >= 0 for n in calls.values())
    assert set(bench["latency_s"]) == set(LATENCIES)
    assert all(set(figures) == {"p50", "p95"} for figures in bench["latency_s"].values())
    assert set(bench["goals"]) == GOALS and all(isinstance(met, bool) for met in bench["goals"].values())


def test_every_record_synchronised_once(bench: dict):
    assert bench["duplicates"] == 0 and bench["missing"] == 0


def test_calls_are_counted_where_they_must_happen(bench: dict):
    calls = bench["calls_per_record"]
    # Every create and update reads or writes both sides and keeps its bookkeeping in Table Storage.
    for path in ("crm_to_pc_create", "pc_to_crm_create", "pc_update", "crm_update"):
        assert calls[path]["pc"] > 0 and calls[path]["crm"] > 0 and calls[path]["table"] > 0, path
    assert calls["crm_to_pc_create"]["pc"] >= 1  # at least the referral's create
    assert calls["pc_to_crm_create"]["crm"] >= 1  # at least the opportunity's create
    assert calls["echo"]["table"] > 0  # the echoes are jobs too
    assert bench["unchanged_poll_requests"] >= 1
    assert bench["peak_rss_mb"] > 0
    # A create reads and writes its link rows and leaves an audit row; what else ran beside it is shown apart.
    by_table = bench["table_ops_per_job_by_table"]
    assert set(by_table) <= set(PATHS)
    assert by_table["crm_to_pc_create"]["SyncLinks"] >= 2 and by_table["crm_to_pc_create"]["SyncAudit"] >= 1


def test_held_webhooks_wait_for_a_release():
    dispatcher = WebhookDispatcher("hold", max_attempts=1, retry_delay=0)
    # Nothing listens on port 9: a delivery that is sent fails at once, one that is held is never tried.
    first, second = (new_delivery("referral-updated", "uri", "http://127.0.0.1:9/hook", b"{}", {}) for _ in "ab")
    dispatcher.submit(first)
    assert first.status == "held" and not first.attempts
    assert dispatcher.release() == 1
    dispatcher.submit(second)  # raised after the release: held in turn
    assert dispatcher.wait_for(2, timeout=0.2) is False and second.status == "held"
    dispatcher.mode = "async"
    assert dispatcher.release() == 1 and dispatcher.wait_idle(timeout=10)
    assert [d.status for d in (first, second)] == ["failed", "failed"]
    dispatcher.close()


def test_the_request_limit_refuses_over_the_window_and_says_when():
    limit = RequestLimit(requests=2, window_seconds=300)
    assert limit.admit(0.0) is None and limit.admit(100.0) is None
    assert limit.admit(120.0) == 180.0  # the first request leaves the window at 300
    assert limit.admit(300.0) is None  # ... and then there is room for one


def test_the_queue_proxy_pauses_only_taking_messages():
    messages = "/devstoreaccount1/sync-jobs/messages"
    assert is_receive("GET", f"{messages}?numofmessages=8&visibilitytimeout=600")
    assert not is_receive("GET", f"{messages}?peekonly=true&numofmessages=32")
    assert not is_receive("POST", messages)  # a webhook or a poll enqueuing
    assert not is_receive("DELETE", f"{messages}/id?popreceipt=r")  # a finished job leaving the queue
    assert not is_receive("GET", "/devstoreaccount1/sync-jobs?comp=metadata")


def test_the_table_proxy_names_each_kind_of_request():
    table = "/devstoreaccount1/SyncState"
    assert kind_of("GET", f"{table}(PartitionKey='p',RowKey='r')") == "read"
    assert kind_of("GET", f"{table}()?$filter=PartitionKey%20eq%20'p'") == "query"
    assert kind_of("POST", table) == "insert"
    assert kind_of("PATCH", f"{table}(PartitionKey='p',RowKey='r')") == "merge"
    assert kind_of("PUT", f"{table}(PartitionKey='p',RowKey='r')") == "upsert"
    assert kind_of("DELETE", f"{table}(PartitionKey='p',RowKey='r')") == "delete"
    assert kind_of("POST", "/devstoreaccount1/$batch") == "batch"
    assert kind_of("POST", "/devstoreaccount1/Tables") == "table"


def test_the_table_proxy_names_the_table_of_each_request():
    assert table_of("/devstoreaccount1/SyncState(PartitionKey='p',RowKey='r')") == "SyncState"
    assert table_of("/devstoreaccount1/SyncAudit()?$filter=PartitionKey%20eq%20'p'") == "SyncAudit"
    assert table_of("/devstoreaccount1/SyncLinks") == "SyncLinks"
    assert table_of("/devstoreaccount1/Tables") == "Tables"
    # A batch names its table in its operations, as the SDK writes them.
    body = (
        b"--batch_1\r\nContent-Type: multipart/mixed; boundary=changeset_1\r\n\r\n--changeset_1\r\n"
        b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"PATCH http://127.0.0.1:5000/devstoreaccount1/SyncLinks(PartitionKey='referral',RowKey='r1') HTTP/1.1\r\n"
    )
    assert table_of("/devstoreaccount1/$batch", body) == "SyncLinks"


def test_the_table_goal_counts_a_job_s_own_operations_and_shows_the_shared_ones():
    # Issue 10: "Table operations <= 4 per job (lease, link read, link write, and audit ...). Health state is cached."
    # The cached pause-state reads and the poll's progress run beside the jobs: printed, not counted as the jobs'.
    from devtools.bench.meter import Reading
    from devtools.bench.report import Phase, Results

    def results(links: float, audit: float, state: float) -> Results:
        table = {"requests": links + audit + state, "tables.SyncLinks": links, "tables.SyncAudit": audit}
        cost = Reading({}, {"requests": 10}, table | {"tables.SyncState": state}, 10, 0)
        return Results(10, "dynamics", [Phase("pc_update", "edits", 10, cost, 1.0)])

    met, text = results(30, 10, 3).goals()["table_ops_per_job"]
    assert met is True and "pc_update 4.00" in text and "pc_update 4.30" in text
    assert results(31, 10, 0).goals()["table_ops_per_job"][0] is False
    by_table = {"SyncAudit": 1.0, "SyncLinks": 3.0, "SyncState": 0.3}
    assert results(30, 10, 3).table_ops_by_table() == {"pc_update": by_table}


def test_the_create_goal_allows_one_partner_center_call_per_record_asking_for_microsoft_s_help():
    # Issue 10: "<= 2 PC calls (plus 1 PC call when Microsoft's help is requested)". Half the bench's records ask
    # for help, so 2.5 calls per record meets the goal, and 2.6 does not.
    from devtools.bench.meter import Reading
    from devtools.bench.report import Phase, Results

    def results(pc_calls: float, help_share: float) -> Results:
        cost = Reading({"create": pc_calls, "reads": 0, "writes": 0}, {"requests": 20}, {"requests": 40}, 10, 0)
        return Results(10, "dynamics", [Phase("crm_to_pc_create", "creates", 10, cost, 1.0)], help_share=help_share)

    assert results(25, 0.5).goals()["crm_to_pc_create"][0] is True
    assert results(26, 0.5).goals()["crm_to_pc_create"][0] is False
    assert results(25, 0.0).goals()["crm_to_pc_create"][0] is False
