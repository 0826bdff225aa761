"""A missing or invalid setting leaves the app loaded (shared/readiness.py): /api/health names the settings, the
webhook answers 503 and enqueues nothing, the timers skip and log why, the worker puts jobs back for later instead
of failing them into the poison queue. Against Azurite, with the real function app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueServiceClient

from shared import readiness, wiring
from shared.ports import KIND_REFERRAL, Job
from shared.store.queue import JOBS_QUEUE, POISON_QUEUE, encode_job
from tests.harness import load_app

ROOT = Path(__file__).resolve().parent.parent
# Every setting the app reads from these families is cleared, so that only what a test sets is configured.
FAMILIES = ("DATAVERSE_", "PARTNER_CENTER_", "AZUREWEBJOBSSTORAGE", "CRM_", "SALESFORCE_", "RECONCILE_", "REFERRAL_")


@pytest.fixture
def bare(monkeypatch, tmp_path, azurite, storage_names) -> Iterator[pytest.MonkeyPatch]:
    """Storage on Azurite and nothing else: the state right after "Deploy to Azure", before `login`."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no refresh token left by a real login
    for key in list(os.environ):
        if key.upper().startswith(FAMILIES):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    for key, value in storage_names.items():
        monkeypatch.setenv(key, value)
    wiring.reset()
    yield monkeypatch
    wiring.reset()


@pytest.fixture
def jobs_queue(azurite) -> Iterator[tuple]:
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    queues = (service.get_queue_client(JOBS_QUEUE), service.get_queue_client(POISON_QUEUE))
    for queue in queues:
        try:
            queue.create_queue()
        except Exception:  # already there
            queue.clear_messages()
    yield queues
    for queue in queues:
        queue.clear_messages()


def _functions() -> dict:
    app = load_app()
    return {f.get_function_name(): f.get_user_function() for f in app.get_functions()}


def _get(functions: dict, name: str) -> func.HttpResponse:
    return functions[name](func.HttpRequest("GET", f"http://localhost/api/{name}", body=b""))


MISSING = ["DATAVERSE_URL", "PARTNER_CENTER_TENANT_ID", "PARTNER_CENTER_CLIENT_ID", "PARTNER_CENTER_REFRESH_TOKEN"]


def test_health_names_the_missing_settings_and_answers_503(bare):
    functions = _functions()  # importing function_app does not raise
    answer = _get(functions, "health")
    assert answer.status_code == 503
    body = json.loads(answer.get_body())
    assert body == {"status": f"not configured: [{', '.join(MISSING)}]", "notConfigured": MISSING}


def test_status_adds_each_reason(bare):
    answer = _get(_functions(), "status")
    assert answer.status_code == 503
    problems = json.loads(answer.get_body())["problems"]
    assert any(p.startswith("DATAVERSE_URL: is required when CRM_PROVIDER=dynamics") for p in problems)


def test_an_invalid_value_is_named_too_and_health_recovers_once_the_settings_are_fixed(bare):
    bare.setenv("DATAVERSE_URL", "https://contoso.crm.dynamics.com/api/data/v9.2")
    bare.setenv("PARTNER_CENTER_ACCESS_TOKEN", "emulator-token")
    bare.setenv("CRM_POLL_SCHEDULE", "every 30 seconds")
    functions = _functions()
    body = json.loads(_get(functions, "health").get_body())
    assert body["notConfigured"] == ["CRM_POLL_SCHEDULE", "DATAVERSE_URL"]
    # A failed load is not cached: once the settings are right, the same loaded app answers 200.
    bare.setenv("DATAVERSE_URL", "https://contoso.crm.dynamics.com")
    bare.setenv("CRM_POLL_SCHEDULE", "*/30 * * * * *")
    answer = _get(functions, "health")
    assert (answer.status_code, json.loads(answer.get_body())) == (200, {"status": "ok"})


def test_webhook_answers_503_and_enqueues_nothing(bare, jobs_queue):
    functions = _functions()
    body = json.dumps({"EventName": "referral-created", "ResourceUri": "https://api/referrals/r-1"}).encode()
    request = func.HttpRequest("POST", "http://localhost/api/webhooks/partner-center", headers={}, body=body)
    answer = functions["partner_center_webhook"](request)
    assert answer.status_code == 503
    assert json.loads(answer.get_body())["status"].startswith("not configured: [DATAVERSE_URL")
    assert jobs_queue[0].get_queue_properties().approximate_message_count == 0


def test_timers_skip_and_log_why(bare, caplog):
    functions = _functions()
    caplog.set_level("WARNING", logger="shared.readiness")
    functions["poll_crm"](TimerRequest(past_due=False))
    functions["reconcile"](TimerRequest(past_due=False))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert skipped[0].startswith("poll_crm skipped: not configured: [DATAVERSE_URL, PARTNER_CENTER_TENANT_ID")
    assert skipped[1].startswith("reconcile skipped: not configured: [DATAVERSE_URL")
    assert "is required when CRM_PROVIDER=dynamics" in skipped[0]  # the reason, not only the names


def test_worker_puts_the_job_back_for_later_instead_of_poisoning_it(bare, jobs_queue):
    functions = _functions()
    jobs, poison = jobs_queue
    job = Job(KIND_REFERRAL, f"r-{uuid.uuid4().hex[:8]}", reason="webhook")
    # Even on what the host counts as the last attempt, the job is neither failed nor lost.
    message = QueueMessage(id="m1", body=encode_job(job).encode(), dequeue_count=5, pop_receipt="p")
    functions["sync_worker"](message)  # returns: the host deletes this copy
    assert poison.get_queue_properties().approximate_message_count == 0
    assert jobs.get_queue_properties().approximate_message_count == 1
    assert list(jobs.peek_messages()) == []  # invisible for now: the worker looks again in PARK_SECONDS
    assert readiness.PARK_SECONDS >= 60


def test_importing_the_app_with_missing_settings_loads_it_and_logs_the_names(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(FAMILIES)}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    script = (
        "import function_app, json, azure.functions as func\n"
        "from shared.functions.http import health\n"
        "print(len(function_app.app.get_functions()), health(func.HttpRequest('GET', '/api/health', body=b''))"
        ".status_code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    count, status = result.stdout.split()
    assert int(count) >= 6 and status == "503"
    assert "The app is not configured: [DATAVERSE_URL, AzureWebJobsStorage" in result.stderr
