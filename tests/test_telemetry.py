"""Telemetry of the real app against the emulators and Azurite: the spans of one job (with the Partner Center,
CRM and Table calls nested under it), its custom dimensions, the correlation id that reaches the Partner
Center emulator as ``MS-CorrelationId``, the events the alert rules query, and that none of it carries a
secret.

Spans go to an in-memory exporter on the OpenTelemetry SDK, with the same instrumentations the Azure
Monitor distro switches on (``requests`` and the Azure SDK). The distro's own start-up, which sets global
state for the whole process, is checked in a child process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.ports import KIND_CRM, KIND_CRM_LEAD, KIND_REFERRAL, Job
from shared.store.queue import JOBS_QUEUE, POISON_QUEUE, encode_job
from shared.telemetry import names
from shared.telemetry.events import CUSTOM_EVENT_ATTRIBUTE
from shared.telemetry.metrics import register_queue_depth_gauge
from shared.telemetry.setup import APP_LOGGER
from tests.crm_view import DV_TOKEN
from tests.e2e_stack import PC_TOKEN

ROOT = Path(__file__).resolve().parent.parent
GUID_LENGTH = 36


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's tracer provider, with requests and Azure SDK tracing on."""
    from azure.core.settings import settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    RequestsInstrumentor().instrument(tracer_provider=provider)
    settings.tracing_implementation = OpenTelemetrySpan
    yield exporter
    settings.tracing_implementation = None
    RequestsInstrumentor().uninstrument()
    exporter.clear()
    exporter.shutdown()  # later tests in this process keep nothing in memory


class AppRecords(logging.Handler):
    """What the exporter receives: the records of the app's own loggers (``shared``, as configured in
    shared/telemetry/setup.py), the custom events among them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def events() -> Iterator[list[logging.LogRecord]]:
    app_logger = logging.getLogger(APP_LOGGER)
    handler, level = AppRecords(), app_logger.level
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)
    yield handler.records
    app_logger.removeHandler(handler)
    app_logger.setLevel(level)


def custom_events(records: list[logging.LogRecord], name: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in vars(r).items() if k in names.DIMENSIONS}
        for r in records
        if getattr(r, CUSTOM_EVENT_ATTRIBUTE, None) == name
    ]


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def descendants(exporter: InMemorySpanExporter, root: ReadableSpan) -> list[ReadableSpan]:
    finished = exporter.get_finished_spans()
    children: dict[int, list[ReadableSpan]] = {}
    for span in finished:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    found, todo = [], [root.context.span_id]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.context.span_id)
    return found


def url_of(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("url.full") or attributes.get("http.url") or "")


def everything_emitted(exporter: InMemorySpanExporter, records: list[logging.LogRecord]) -> str:
    """All text telemetry would carry: span names, attributes, events, statuses, log messages and extras."""
    parts: list[str] = []
    for span in exporter.get_finished_spans():
        parts += [span.name, json.dumps(dict(span.attributes or {}), default=str), str(span.status.description)]
        for event in span.events:
            parts += [event.name, json.dumps(dict(event.attributes or {}), default=str)]
    for record in records:
        parts += [record.getMessage(), json.dumps({k: str(v) for k, v in vars(record).items()})]
    return "\n".join(parts)


def secrets_of(azurite: Any, *extra: str) -> list[str]:
    key = next(p.split("=", 1)[1] for p in azurite.connection_string.split(";") if p.startswith("AccountKey="))
    return [PC_TOKEN, DV_TOKEN, key, azurite.connection_string, *extra]


def run_worker(stack: Any, job: Job, dequeue_count: int) -> None:
    body = encode_job(job).encode("utf-8")
    message = QueueMessage(id=str(uuid.uuid4()), body=body, dequeue_count=dequeue_count, pop_receipt="r")
    stack.host.functions["sync_worker"](message)


# ==================================================================================================
# One job, end to end
# ==================================================================================================


def test_one_job_is_one_span_tree_with_its_dimensions_and_correlation_id(stack, spans, events, azurite):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    [_received] = [s for s in named(spans, names.SPAN_WEBHOOK) if s.attributes.get(names.DIM_STATUS) == 202]
    assert custom_events(events, names.EVENT_WEBHOOK_RECEIVED)[-1][names.DIM_REFERRAL_ID] == referral["id"]
    spans.clear()
    stack.pc.correlation_ids.clear()

    run = stack.host.drain()
    assert (run.processed, run.failed) == (1, 0), run.errors
    [opportunity] = stack.opportunities()

    # The job's span and its dimensions.
    [job] = named(spans, names.SPAN_JOB)
    attributes = dict(job.attributes or {})
    correlation_id = attributes[names.DIM_CORRELATION_ID]
    assert len(correlation_id) == GUID_LENGTH and uuid.UUID(correlation_id)
    assert attributes[names.DIM_REFERRAL_ID] == referral["id"]
    assert attributes[names.DIM_CRM_ID] == opportunity["id"]
    assert attributes[names.DIM_DIRECTION] == "pc->crm"
    assert attributes[names.DIM_ACTION] == "created"
    assert attributes[names.DIM_ATTEMPT] == 1
    assert attributes[names.DIM_OUTCOME] == "succeeded"
    assert attributes[names.DIM_JOB_REASON] == "referral-created"
    assert attributes[names.DIM_WEBHOOK_TO_CRM_MS] >= 0
    assert job.parent is None, "a job is the root of its trace"

    # Every Partner Center, CRM and Table call of the job is a span under it.
    nested = descendants(spans, job)
    in_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == job.context.trace_id]
    assert {s.context.span_id for s in in_trace} == {job.context.span_id} | {s.context.span_id for s in nested}
    urls = [url_of(s) for s in nested]
    assert any(u.startswith(stack.pc.url + "/v1.0/engagements/referrals") for u in urls), urls
    assert any(u.startswith(stack.view.emulator.url) for u in urls), urls
    table_port = azurite.connection_string.split("TableEndpoint=", 1)[1].split(";")[0].rstrip("/")
    assert any(u.startswith(table_port) for u in urls), urls
    assert any(s.name.startswith("TableClient.") for s in nested), sorted({s.name for s in nested})

    # The same correlation id reached Partner Center on every call of the job, and is in the job's record.
    seen = stack.pc.correlation_ids
    assert seen and {cid for _, cid in seen} == {correlation_id}, seen
    [completed] = custom_events(events, names.EVENT_JOB_COMPLETED)
    assert completed == {k: v for k, v in attributes.items() if k in names.DIMENSIONS}

    emitted = everything_emitted(spans, events)
    for secret in secrets_of(azurite):
        assert secret not in emitted
    assert "Bearer" not in emitted and "Authorization" not in emitted


@pytest.mark.parametrize("kind", [KIND_CRM, KIND_CRM_LEAD])
def test_a_crm_records_failed_job_is_labelled_crm_to_partner_center(stack, spans, events, kind):
    """A lead's job (SYNC_COSELL_ONLY=false) carries the CRM's change to Partner Center, as an opportunity's does; a
    job that fails before it has an outcome is labelled by its kind alone."""
    crm_id = str(uuid.uuid4())
    stack.view.emulator.inject_fault(500, count=100, method="GET", path=r"leads|opportunities")
    spans.clear()

    with pytest.raises(Exception, match="500"):
        run_worker(stack, Job(kind, crm_id, reason="poll"), dequeue_count=1)
    stack.view.emulator.clear_faults()

    [job] = named(spans, names.SPAN_JOB)
    assert job.attributes[names.DIM_OUTCOME] == "failed"
    assert job.attributes[names.DIM_DIRECTION] == "crm->pc"
    assert job.attributes[names.DIM_CRM_ID] == crm_id and names.DIM_REFERRAL_ID not in job.attributes
    [completed] = custom_events(events, names.EVENT_JOB_COMPLETED)
    assert completed[names.DIM_DIRECTION] == "crm->pc"


def test_a_refused_credential_on_the_last_attempt_is_a_poisoned_job_and_names_no_secret(
    make_stack, spans, events, azurite
):
    revoked = "revoked-token-5f1c2e"
    stack = make_stack(PARTNER_CENTER_ACCESS_TOKEN=revoked)
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    stack.host.queue.client.clear_messages()
    spans.clear()
    stack.pc.correlation_ids.clear()

    with pytest.raises(Exception, match="Partner Center"):
        run_worker(stack, Job(KIND_REFERRAL, referral["id"], reason="referral-created"), dequeue_count=5)

    [job] = named(spans, names.SPAN_JOB)
    assert job.attributes[names.DIM_OUTCOME] == "poisoned"
    assert job.attributes[names.DIM_ATTEMPT] == 5
    assert job.attributes[names.DIM_FAILURE_REASON] == "AuthenticationError (Partner Center 401)"
    assert job.status.status_code.name == "ERROR"
    [refused] = custom_events(events, names.EVENT_CREDENTIAL_REFUSED)
    assert refused == {names.DIM_SERVICE: "Partner Center", names.DIM_STATUS: 401}
    [poisoned] = custom_events(events, names.EVENT_JOB_POISONED)
    assert poisoned[names.DIM_REFERRAL_ID] == referral["id"]
    assert poisoned[names.DIM_CORRELATION_ID] == job.attributes[names.DIM_CORRELATION_ID]
    assert stack.pc.correlation_ids == [], "the emulator refused the call before counting it"

    emitted = everything_emitted(spans, events)
    for secret in secrets_of(azurite, revoked):
        assert secret not in emitted


def test_reconcile_span_carries_its_correlation_id_and_reports_changes_found(stack, spans, events):
    stack.pc.seed_referral(kind="cosell", raise_event=False)  # a webhook Partner Center never sent
    spans.clear()
    stack.pc.correlation_ids.clear()

    stack.host.functions["reconcile"](TimerRequest(past_due=False))

    [span] = named(spans, names.SPAN_RECONCILE)
    assert span.attributes[names.DIM_ENQUEUED] == 1
    [found] = custom_events(events, names.EVENT_RECONCILE_CHANGES)
    assert found == {names.DIM_SEEN: span.attributes[names.DIM_SEEN], names.DIM_ENQUEUED: 1}
    assert {cid for _, cid in stack.pc.correlation_ids} == {span.attributes[names.DIM_CORRELATION_ID]}
    assert any(url_of(s).startswith(stack.pc.url) for s in descendants(spans, span))

    stack.poll()
    [poll] = named(spans, names.SPAN_POLL)
    assert poll.attributes[names.DIM_CORRELATION_ID] != span.attributes[names.DIM_CORRELATION_ID]


def test_quota_stop_is_reported_once_as_a_pause(make_stack, spans, events, sf):
    stack = make_stack(crm="salesforce", QUOTA_PAUSE_SECONDS="2")
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    _, maximum = sf.api_usage()
    sf.set_quota(used=maximum)
    spans.clear()

    run = stack.host.drain()
    assert (run.processed, run.failed) == (1, 0), run.errors  # deferred, not failed

    [paused] = custom_events(events, names.EVENT_QUOTA_PAUSED)
    assert paused == {names.DIM_SERVICE: "Salesforce", names.DIM_PAUSED_SECONDS: 2}
    [job] = named(spans, names.SPAN_JOB)
    assert job.attributes[names.DIM_OUTCOME] == "deferred"
    assert job.attributes[names.DIM_REFERRAL_ID] == referral["id"]
    sf.restore_quota()


# ==================================================================================================
# The queue depth gauge
# ==================================================================================================


def test_queue_depth_gauge_reports_the_poison_queue(feed_parts):
    _, queue = feed_parts
    queue.ensure()
    queue.poison.send_message("a poisoned job")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    register_queue_depth_gauge(lambda: {JOBS_QUEUE: queue.depth(), POISON_QUEUE: queue.poison_depth()}, provider)

    data = reader.get_metrics_data()
    points = {
        point.attributes[names.DIM_QUEUE]: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == names.METRIC_QUEUE_DEPTH
        for point in metric.data.data_points
    }
    assert points == {JOBS_QUEUE: 0, POISON_QUEUE: 1}
    provider.shutdown()


# ==================================================================================================
# Start-up: on only with the connection string, never fatal
# ==================================================================================================

_STARTUP_SCRIPT = """
import json, logging, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from shared.telemetry import configure_telemetry

records = []
logging.getLogger("shared").addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
on = configure_telemetry(sys.argv[1] or None, lambda: {"sync-jobs": 0})
import requests
print(json.dumps({
    "on": on,
    "sdk": isinstance(trace.get_tracer_provider(), TracerProvider),
    "requests_traced": hasattr(requests.Session.send, "__wrapped__") or "opentelemetry" in repr(requests.Session.send),
    "logs": [r.getMessage() for r in records],
}))
"""


def startup(connection_string: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BSP_EXPORT_TIMEOUT": "1000",
    }
    result = subprocess.run(
        [sys.executable, "-c", _STARTUP_SCRIPT, connection_string],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_telemetry_is_off_without_the_connection_string():
    assert startup("") == {"on": False, "sdk": False, "requests_traced": False, "logs": []}


def test_telemetry_switches_on_with_the_connection_string():
    key = str(uuid.uuid4())
    answer = startup(f"InstrumentationKey={key};IngestionEndpoint=http://127.0.0.1:9/")
    assert answer["on"] is True and answer["sdk"] is True and answer["requests_traced"] is True
    assert all(key not in line for line in answer["logs"])


def test_a_bad_connection_string_leaves_the_app_running_without_telemetry_and_is_not_logged():
    answer = startup("InstrumentationKey=not-a-key-but-a-secret-4711")
    assert answer["on"] is False and answer["sdk"] is False
    assert any("telemetry is off" in line for line in answer["logs"]), answer["logs"]
    assert all("not-a-key-but-a-secret-4711" not in line for line in answer["logs"])
