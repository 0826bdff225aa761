"""The function app as the Functions host indexes it: names, routes, auth levels, queue, host.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.localhost.hostconfig import parse_timespan
from shared.functions.worker import MAX_DEQUEUE_COUNT
from tests.harness import load_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(monkeypatch, azurite):
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("DATAVERSE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PARTNER_CENTER_ACCESS_TOKEN", "t")
    return load_app()


def _bindings(app) -> dict[str, list[dict]]:
    return {f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in app.get_functions()}


def test_functions_and_bindings(app):
    bindings = _bindings(app)
    assert set(bindings) >= {"partner_center_webhook", "health", "status", "sync_worker"}
    webhook = bindings["partner_center_webhook"][0]
    assert (webhook["route"], webhook["methods"], webhook["authLevel"]) == (
        "webhooks/partner-center",
        ["POST"],
        "ANONYMOUS",
    )
    assert bindings["health"][0]["authLevel"] == "ANONYMOUS"
    assert bindings["status"][0]["authLevel"] == "FUNCTION"
    queue = bindings["sync_worker"][0]
    assert (queue["type"], queue["queueName"], queue["connection"]) == (
        "queueTrigger",
        "sync-jobs",
        "AzureWebJobsStorage",
    )


def test_host_json_queue_semantics_match_the_code():
    host = json.loads((ROOT / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["maxDequeueCount"] == MAX_DEQUEUE_COUNT
    assert queues["messageEncoding"] == "base64"  # the app enqueues with TextBase64EncodePolicy
    assert queues["visibilityTimeout"] and queues["batchSize"] <= 32
    assert host["extensionBundle"]["version"].startswith("[4.")


def test_an_idle_queue_is_polled_at_least_every_two_seconds():
    """A running worker with nothing to do backs off between empty polls up to maxPollingInterval; that cap
    bounds how long a webhook's job waits on the queue after sparse events (10 s made webhook -> CRM p95 ~11 s).
    Every poll is a storage transaction, so not below 1 s either (docs/deploy.md has the count)."""
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    interval = parse_timespan(queues["maxPollingInterval"], "maxPollingInterval")
    assert 1 <= interval <= 2


def test_missing_settings_are_logged_at_start_up_with_a_named_reason():
    # The app stays loaded (tests/test_not_configured.py): the start-up log says what is missing and why.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DATAVERSE", "AZUREWEBJOBS", "PARTNER"))}
    result = subprocess.run(
        [sys.executable, "-c", "import function_app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    logged = result.stderr.strip().splitlines()[-1]
    assert logged.startswith("The app is not configured: [DATAVERSE_URL, AzureWebJobsStorage")
    assert "Invalid configuration: DATAVERSE_URL: is required" in logged
