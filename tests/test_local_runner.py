"""The local runner (devtools/localhost/runner.py): NCRONTAB, settings precedence, host.json, routes, and the
runner itself as a subprocess serving a fixture app (HTTP, queue output, poison queue, timers) and the
real app (health, a signed webhook that ends as a Dataverse opportunity)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.queue import QueueClient

from devtools.localhost.azurite import Azurite, free_port
from devtools.localhost.hostconfig import HostConfigError, load_host_config, parse_timespan
from devtools.localhost.http_host import compile_route
from devtools.localhost.settings_loader import LocalSettingsError, merge_settings, resolve
from shared import schedule as ncrontab

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_APP = ROOT / "tests" / "fixtures" / "runner_app"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- NCRONTAB -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 */2 * * * *", utc(2026, 3, 1, 10, 1, 30), utc(2026, 3, 1, 10, 2, 0)),
        ("0 */2 * * * *", utc(2026, 3, 1, 10, 2, 0), utc(2026, 3, 1, 10, 4, 0)),
        ("0 0 * * * *", utc(2026, 3, 1, 23, 0, 1), utc(2026, 3, 2, 0, 0, 0)),
        ("*/15 * * * * *", utc(2026, 3, 1, 10, 0, 16), utc(2026, 3, 1, 10, 0, 30)),
        ("5/20 * * * * *", utc(2026, 3, 1, 10, 0, 26), utc(2026, 3, 1, 10, 0, 45)),
        ("0 30 9 * * Mon-Fri", utc(2026, 3, 6, 9, 30, 0), utc(2026, 3, 9, 9, 30, 0)),  # Friday -> Monday
        ("0 0 12 1 jan,JUL *", utc(2026, 3, 1), utc(2026, 7, 1, 12)),
        ("0 0 0 13 * 5", utc(2026, 1, 1), utc(2026, 2, 13)),  # day AND weekday: the next Friday the 13th
        ("0 0 0 29 2 *", utc(2026, 3, 1), utc(2028, 2, 29)),
        ("0 10-20/5 8 * * *", utc(2026, 3, 1, 8, 11), utc(2026, 3, 1, 8, 15)),
        ("*/5 * * * *", utc(2026, 3, 1, 10, 1), utc(2026, 3, 1, 10, 5)),  # five fields: seconds are 0
    ],
)
def test_ncrontab_next_occurrence(expression: str, after: datetime, expected: datetime) -> None:
    assert ncrontab.parse(expression).next_after(after) == expected


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("* * * *", "six"),
        ("60 * * * * *", "second: '60' is outside"),
        ("0 0 24 * * *", "hour"),
        ("0 0 0 0 * *", "day"),
        ("0 0 0 * 13 *", "month"),
        ("0 0 0 * * 7", "day-of-week"),
        ("*/0 * * * * *", "step"),
        ("0 20-10 * * * *", "backwards"),
        ("0 0 0 * * Funday", "not a number"),
        ("0 1,,2 * * * *", "minute: '' in '1,,2'"),
        ("0 0 0 L * *", "day: 'L' is not a number"),  # croniter extensions the host refuses
        ("0 0 0 * * 5#3", "day-of-week"),
        ("H * * * * *", "second"),
    ],
)
def test_ncrontab_rejects_invalid_expressions(expression: str, complaint: str) -> None:
    with pytest.raises(ncrontab.ScheduleError, match=complaint):
        ncrontab.parse(expression)


def test_ncrontab_impossible_date_never_fires() -> None:
    with pytest.raises(ncrontab.ScheduleError, match="never fires"):
        ncrontab.parse("0 0 0 30 2 *").next_after(utc(2026, 1, 1))


def test_ncrontab_matches_and_naive_times_are_utc() -> None:
    schedule = ncrontab.parse("30 15 10 * * *")
    assert schedule.matches(utc(2026, 5, 5, 10, 15, 30))
    assert not schedule.matches(utc(2026, 5, 5, 10, 15, 31))
    assert schedule.next_after(datetime(2026, 5, 5, 10, 0)) == utc(2026, 5, 5, 10, 15, 30)


# -- settings, host.json, routes ------------------------------------------------------------------------------
def _settings_file(tmp_path: Path, values: dict[str, Any], **extra: Any) -> Path:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values, **extra}))
    return path


def test_environment_wins_over_local_settings_json(tmp_path: Path) -> None:
    path = _settings_file(tmp_path, {"A": "file", "B": "file", "EMPTY": "", "NUMBER": 5})
    merged = merge_settings({"A": "env", "C": "env"}, path)
    assert merged["A"] == "env"
    assert merged["B"] == "file"
    assert merged["C"] == "env"
    assert merged["NUMBER"] == "5"
    assert "EMPTY" not in merged  # an empty value in the file counts as unset


def test_missing_settings_file_is_fine_and_bad_ones_are_named(tmp_path: Path) -> None:
    assert merge_settings({"A": "1"}, tmp_path / "absent.json") == {"A": "1"}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(LocalSettingsError, match=r"broken\.json"):
        merge_settings({}, broken)
    encrypted = _settings_file(tmp_path, {}, IsEncrypted=True)
    with pytest.raises(LocalSettingsError, match="encrypted"):
        merge_settings({}, encrypted)


def test_binding_expressions_resolve_from_app_settings() -> None:
    assert resolve("%CRM_POLL_SCHEDULE%", {"CRM_POLL_SCHEDULE": "0 */2 * * * *"}) == "0 */2 * * * *"
    assert resolve("jobs-%ENV%-x", {"ENV": "dev"}) == "jobs-dev-x"
    assert resolve("sync-jobs", {}) == "sync-jobs"
    with pytest.raises(LocalSettingsError, match="MISSING"):
        resolve("%MISSING%", {})


def test_host_json_is_read_and_app_settings_override_it() -> None:
    config = load_host_config(ROOT, {})
    assert config.route_prefix == "api"
    assert config.queues.max_dequeue_count == 5
    assert config.queues.visibility_timeout == 30
    assert config.queues.batch_size == 8
    assert config.queues.new_batch_threshold == 4
    assert config.queues.max_polling_interval == 2
    assert config.queues.message_encoding == "base64"
    overridden = load_host_config(
        ROOT,
        {
            "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
            "AzureFunctionsJobHost__extensions__http__routePrefix": "",
        },
    )
    assert overridden.queues.visibility_timeout == 1
    assert overridden.route_prefix == ""
    assert parse_timespan("1.02:03:04.5", "x") == 93784.5
    with pytest.raises(HostConfigError, match="TimeSpan"):
        parse_timespan("30s", "visibilityTimeout")


def _function(route: str | None, methods: list[str] | None = None) -> Any:
    from devtools.localhost.appload import LoadedFunction

    trigger = {"type": "httpTrigger", "name": "req", "route": route, "methods": methods}
    return LoadedFunction("fn", trigger, [], lambda req: None, {})


def test_route_templates_follow_the_host_rules() -> None:
    route = compile_route(_function("orders/{id:int}/{part?}", ["GET"]), "api")
    assert route.pattern.match("/api/orders/42").groupdict() == {"id": "42", "part": None}
    assert route.pattern.match("/API/Orders/42/lines")["part"] == "lines"
    assert route.pattern.match("/api/orders/abc") is None
    assert route.methods == {"GET"}
    catch_all = compile_route(_function("files/{*path}"), "")
    assert catch_all.pattern.match("/files/a/b/c.txt")["path"] == "a/b/c.txt"
    default = compile_route(_function(None), "api")
    assert default.pattern.match("/api/fn")


def test_sample_settings_list_every_app_setting() -> None:
    from shared.settings import Settings, load_settings

    sample = json.loads((ROOT / "local.settings.sample.json").read_text())
    values = sample["Values"]
    expected = {f.validation_alias.choices[0] for f in Settings.model_fields.values()}
    assert expected - set(values) == set()
    # Every sample value parses; empty ones are unset, as the runner and stack read them.
    filled = {k: v for k, v in values.items() if v != ""}
    required = {"DATAVERSE_URL": "https://contoso.crm.dynamics.com", "PARTNER_CENTER_ACCESS_TOKEN": "t"}
    settings = load_settings(**{name: value for name, value in {**filled, **required}.items()})
    assert settings.crm_poll_schedule == values["CRM_POLL_SCHEDULE"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert sample["IsEncrypted"] is False


def test_stack_starts_only_what_the_settings_leave_unset(azurite: Azurite, tmp_path: Path) -> None:
    from devtools.localhost.stack import Stack, needs_azurite

    assert needs_azurite({})
    assert needs_azurite({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert not needs_azurite({"AzureWebJobsStorage__accountName": "prodstore"})
    assert not needs_azurite({"AzureWebJobsStorage": azurite.connection_string})
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PARTNER_CENTER_API_URL": "https://api.partner.microsoft.com",
        "DATAVERSE_FIELD_AUDIT": "new_audit",
        "CRM_POLL_SCHEDULE": "0 */5 * * * *",
    }
    with Stack(settings, workdir=tmp_path) as stack:
        assert stack.azurite is None
        assert stack.partner_center is None
        assert stack.dataverse is not None
        assert stack.settings["DATAVERSE_URL"] == stack.dataverse.url
        assert stack.settings["AzureWebJobsStorage"] == azurite.connection_string
        assert not any(name.startswith("PARTNER_CENTER") for name in stack.written)
        assert stack.settings["CRM_POLL_SCHEDULE"] == "0 */5 * * * *"  # set values are kept
        assert stack.settings["RECONCILE_SCHEDULE"] == "0 0 * * * *"  # the app's default, written
        assert stack.register_webhook("http://127.0.0.1:1/api/webhooks/partner-center") is None


def test_stack_points_every_partner_center_setting_at_its_emulator(tmp_path: Path) -> None:
    from devtools.localhost.stack import Stack

    settings = {
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;QueueEndpoint=http://127.0.0.1:1/x",
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
        # From a copied local.settings.json: Microsoft's prefix could never verify the emulator's callbacks.
        "PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES": "https://3psostorageacct.blob.core.windows.net/cert/",
    }
    with Stack(settings, workdir=tmp_path) as stack:
        url = stack.partner_center.url
        assert stack.settings["PARTNER_CENTER_API_URL"] == url
        assert stack.settings["PARTNER_CENTER_WEBHOOK_API_URL"] == url
        assert stack.settings["PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES"] == url + "/cert/"
        assert Path(stack.settings["PARTNER_CENTER_WEBHOOK_CA_BUNDLE"]).read_bytes().startswith(b"-----BEGIN")
        assert stack.settings["PARTNER_CENTER_ACCESS_TOKEN"]
        assert stack.dataverse is None
        registered = stack.register_webhook("http://127.0.0.1:7071/api/webhooks/partner-center")
        assert registered is not None
        assert registered["WebhookUrl"] == "http://127.0.0.1:7071/api/webhooks/partner-center"
        assert "referral-created" in registered["WebhookEvents"]
        assert stack.register_webhook("http://127.0.0.1:7072/api/webhooks/partner-center") is not None  # re-run


SF_ELSEWHERE = {
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;QueueEndpoint=http://127.0.0.1:1/x",
    "PARTNER_CENTER_API_URL": "https://api.partner.microsoft.com",
    "PARTNER_CENTER_ACCESS_TOKEN": "pc-token",
    "CRM_PROVIDER": "salesforce",
}


def test_stack_starts_the_salesforce_emulator_and_the_app_signs_in_with_client_credentials(tmp_path: Path) -> None:
    from devtools.localhost.stack import Stack
    from emulators.salesforce.emulator import DEFAULT_CLIENT_SECRET, TOKEN_PATH
    from shared import wiring
    from shared.settings import load_settings

    settings = {
        **SF_ELSEWHERE,
        # From a copied local.settings.json: neither can work with the emulator.
        "SALESFORCE_AUTH_FLOW": "jwt_bearer",
        "SALESFORCE_ACCESS_TOKEN": "00Dxx!copied-token",
        # A renamed custom field, a stage the standard org lacks and own picklist values: the emulated org has them.
        "SALESFORCE_FIELD_AUDIT": "Sync_Audit__c",
        "SALESFORCE_WON_STAGE": "Closed - Won",
        "SALESFORCE_HELP_PICKLIST_VALUES": "ProofOfConceptOrDemo=PoC, GeneralOrOther=Other",
    }
    with Stack(settings, workdir=tmp_path) as stack:
        emulator = stack.salesforce
        assert emulator is not None and stack.dataverse is None and stack.azurite is None
        written = stack.settings
        assert written["SALESFORCE_LOGIN_URL"] == emulator.url
        assert written["SALESFORCE_AUTH_FLOW"] == "client_credentials"
        assert written["SALESFORCE_ACCESS_TOKEN"] == ""  # blank counts as unset for the app
        secret = written["SALESFORCE_CLIENT_SECRET"]
        assert secret and secret != DEFAULT_CLIENT_SECRET  # a fresh secret per run
        assert "DATAVERSE_URL" not in written
        token_url = emulator.url + TOKEN_PATH
        refused = requests.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": written["SALESFORCE_CLIENT_ID"],
                "client_secret": DEFAULT_CLIENT_SECRET,
            },
            timeout=5,
        )
        assert refused.status_code == 400
        # The app, configured from the written settings (the environment ignores blank values), signs in.
        app_settings = load_settings(**{k: v for k, v in written.items() if v})
        crm = wiring.build_crm(app_settings, wiring.load_crm_mapping(app_settings).mapping)
        assert list(crm.query("SELECT Id, Sync_Audit__c FROM Opportunity")) == []
        assert emulator.counters()["tokenRequests"]["client_credentials"] == 1
        assert emulator.stages["Closed - Won"] == (True, True)
        assert emulator.objects["Opportunity"].field("How_can_Microsoft_help__c").picklist == ("PoC", "Other")


def test_stack_leaves_a_configured_salesforce_org_alone(tmp_path: Path) -> None:
    from devtools.localhost.stack import Stack

    for endpoint in ("SALESFORCE_LOGIN_URL", "SALESFORCE_TOKEN_URL", "SALESFORCE_INSTANCE_URL"):
        settings = {**SF_ELSEWHERE, endpoint: "https://contoso.my.salesforce.com"}
        with Stack(settings, workdir=tmp_path) as stack:
            assert stack.salesforce is None and stack.dataverse is None
            assert not any(name.startswith("SALESFORCE") for name in stack.written)


# -- the runner as a subprocess ---------------------------------------------------------------------------------
def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RunnerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.localhost.runner", *args, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"runner exited with {self.process.returncode}:\n{self.log()}")
            try:
                return requests.get(f"{self.base}/admin/host/status", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout, "the runner to start")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def runner_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AzureFunctionsJobHost__")}
    env.update(values)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fixture_runner(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("runner")
    out = work / "out"
    out.mkdir()
    suffix = uuid.uuid4().hex[:8]
    queues = {"ECHO_QUEUE": f"echo-{suffix}", "FAIL_QUEUE": f"fail-{suffix}"}
    file_values = {"PRECEDENCE_A": "file", "PRECEDENCE_B": "file", "TICK_SCHEDULE": "*/1 * * * * *"}
    settings_file = _settings_file(work, file_values)
    env = runner_env(
        AzureWebJobsStorage=azurite.connection_string,
        FIXTURE_OUT_DIR=str(out),
        PRECEDENCE_A="env",
        AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:01",
        AzureFunctionsJobHost__extensions__queues__maxPollingInterval="00:00:00.300",
        **queues,
    )
    runner = RunnerProcess(
        ["--app-dir", str(FIXTURE_APP), "--settings-file", str(settings_file)], env, work / "runner.log", free_port()
    )
    try:
        runner.wait_ready()
        yield {"runner": runner, "out": out, "queues": queues, "azurite": azurite}
    finally:
        code = runner.stop()
    assert code == 0, f"the runner should stop cleanly on SIGTERM:\n{runner.log()}"


def test_runner_serves_http_routes_with_params_query_and_headers(fixture_runner: dict[str, Any]) -> None:
    base = fixture_runner["runner"].base
    response = requests.get(f"{base}/api/hello/ada/3?lang=en", headers={"X-Demo": "yes"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "name": "ada",
        "count": "3",
        "query": {"lang": "en"},
        "header": "yes",
        "url": f"{base}/api/hello/ada/3?lang=en",
    }
    assert requests.get(f"{base}/api/hello/ada", timeout=5).json()["count"] is None
    assert requests.get(f"{base}/api/hello/ada/three", timeout=5).status_code == 404
    assert requests.post(f"{base}/api/hello/ada", timeout=5).status_code == 405
    assert requests.get(f"{base}/api/nowhere", timeout=5).status_code == 404
    listed = requests.get(f"{base}/admin/functions", timeout=5).json()["functions"]
    assert {f["name"] for f in listed} == {
        "hello",
        "setting",
        "enqueue",
        "echo_worker",
        "always_fails",
        "tick",
        "yearly",
    }


def test_runner_settings_come_from_environment_then_local_settings(fixture_runner: dict[str, Any]) -> None:
    base = fixture_runner["runner"].base
    assert requests.get(f"{base}/api/settings/PRECEDENCE_A", timeout=5).json() == {"value": "env"}
    assert requests.get(f"{base}/api/settings/PRECEDENCE_B", timeout=5).json() == {"value": "file"}


def test_queue_output_binding_feeds_a_queue_trigger(fixture_runner: dict[str, Any]) -> None:
    base, out = fixture_runner["runner"].base, fixture_runner["out"]
    text = f"hello {uuid.uuid4().hex}"
    assert requests.post(f"{base}/api/enqueue", data=text.encode(), timeout=5).status_code == 202
    seen = wait_until(lambda: [r for r in lines(out / "echo_worker.jsonl") if r["body"] == text], 10, "echo_worker")
    assert seen[0]["dequeue_count"] == 1


def test_failing_message_reaches_poison_queue_after_max_dequeue_count(fixture_runner: dict[str, Any]) -> None:
    azurite, out = fixture_runner["azurite"], fixture_runner["out"]
    name = fixture_runner["queues"]["FAIL_QUEUE"]
    queue = QueueClient.from_connection_string(azurite.connection_string, name)
    queue.create_queue()
    body = json.dumps({"job": uuid.uuid4().hex})
    sent = queue.send_message(base64.b64encode(body.encode()).decode())
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{name}-poison")

    def poisoned() -> list[Any]:
        try:
            return list(poison.peek_messages(max_messages=5))
        except Exception:
            return []

    messages = wait_until(poisoned, 30, "the message to reach the poison queue", interval=0.3)
    assert [base64.b64decode(m.content).decode() for m in messages] == [body]
    attempts = [r["dequeue_count"] for r in lines(out / "always_fails.jsonl") if r["id"] == sent.id]
    assert attempts == [1, 2, 3, 4, 5]
    assert queue.get_queue_properties().approximate_message_count == 0
    assert "MaxDequeueCount of 5" in fixture_runner["runner"].log()


def test_timers_fire_on_schedule_and_on_demand(fixture_runner: dict[str, Any]) -> None:
    runner, out = fixture_runner["runner"], fixture_runner["out"]
    wait_until(lambda: len(lines(out / "tick.jsonl")) >= 2, 10, "two scheduled ticks (*/1 * * * * *)")
    assert not lines(out / "yearly.jsonl")
    fire = subprocess.run(
        [sys.executable, "-m", "devtools.localhost.runner", "fire", "yearly", "--url", runner.base],
        cwd=ROOT,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert fire.returncode == 0, fire.stdout + fire.stderr
    assert "202" in fire.stdout
    fired = wait_until(lambda: lines(out / "yearly.jsonl"), 10, "the yearly timer fired on demand")
    assert fired == [{"past_due": False}]
    unknown = requests.post(f"{runner.base}/admin/functions/nope", json={}, timeout=5)
    assert unknown.status_code == 404
    http_fn = requests.post(f"{runner.base}/admin/functions/hello", json={}, timeout=5)
    assert http_fn.status_code == 400


def test_runner_reports_a_missing_binding_setting(tmp_path: Path, azurite: Azurite) -> None:
    env = runner_env(
        AzureWebJobsStorage=azurite.connection_string, FIXTURE_OUT_DIR=str(tmp_path), ECHO_QUEUE="e", FAIL_QUEUE="f"
    )
    env.pop("TICK_SCHEDULE", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.localhost.runner",
            "--app-dir",
            str(FIXTURE_APP),
            "--port",
            str(free_port()),
            "--settings-file",
            str(tmp_path / "none.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "%TICK_SCHEDULE%" in result.stderr


# -- the real app through the runner ------------------------------------------------------------------------------
def _real_app_ready() -> bool:
    needed = ("emulators.dataverse", "emulators.partner_center", "shared.crm.dynamics", "shared.partner_center.client")
    return all(importlib.util.find_spec(name) is not None for name in needed)


@pytest.mark.skipif(not _real_app_ready(), reason="Partner Center / Dataverse adapters or emulators not present yet")
def test_real_app_health_and_signed_webhook_become_an_opportunity(
    azurite: Azurite, storage_names: dict[str, str], tmp_path: Path
) -> None:
    from devtools.demo.observe import Observer
    from devtools.localhost.stack import Stack, hermetic_environment

    settings = {"AzureWebJobsStorage": azurite.connection_string, **storage_names}
    with Stack(settings, workdir=tmp_path) as stack:
        env = runner_env(
            **hermetic_environment(os.environ),
            **stack.settings,
            AzureFunctionsJobHost__extensions__queues__maxPollingInterval="00:00:00.300",
        )
        runner = RunnerProcess(
            ["--settings-file", str(tmp_path / "none.json")], env, tmp_path / "runner.log", free_port()
        )
        try:
            runner.wait_ready()
            assert requests.get(f"{runner.base}/api/health", timeout=5).status_code == 200
            stack.register_webhook(f"{runner.base}/api/webhooks/partner-center")
            observer = Observer(stack)
            referral = observer.create_cosell_referral(name="Runner test - signed webhook")
            try:
                opportunity = wait_until(
                    lambda: observer.opportunity_for(referral["id"]),
                    30,
                    "the opportunity in the Dataverse emulator",
                    interval=0.2,
                )
            except AssertionError as exc:
                pytest.fail(f"{exc}\nrunner log:\n{runner.log()[-4000:]}")
            assert opportunity["name"].startswith("Runner test - signed webhook")
            deliveries = observer.deliveries_for(referral["id"])
            assert deliveries and deliveries[0]["status_code"] == 202
        finally:
            runner.stop()


def test_use_development_storage_means_the_azurite_the_operator_commands_also_reach(tmp_path: Path) -> None:
    # Found by the first-day walk: `make run` put its Azurite on random ports, so `cosell status` with the same
    # UseDevelopmentStorage=true (ports 10000-10002) never saw the app's data.
    from azure.data.tables import TableServiceClient

    from devtools.localhost.stack import STANDARD_AZURITE_PORTS, Stack, _free

    if not all(_free(port) for port in STANDARD_AZURITE_PORTS):
        pytest.skip("Azurite's standard ports are in use on this machine")
    settings = {**SF_ELSEWHERE, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    settings["SALESFORCE_LOGIN_URL"] = "https://contoso.my.salesforce.com"
    for name in ("second", "third"):
        (tmp_path / name).mkdir()
    with Stack(settings, workdir=tmp_path) as stack:
        assert stack.azurite is not None and stack.azurite.table_port == 10002
        TableServiceClient.from_connection_string(stack.settings["AzureWebJobsStorage"]).create_table("SyncLinks")
        # What the operator's command builds from the same setting sees the app's table.
        operator = TableServiceClient.from_connection_string("UseDevelopmentStorage=true")
        assert [t.name for t in operator.list_tables()] == ["SyncLinks"]
        # A second `make run` beside it uses that Azurite rather than a private one.
        with Stack(settings, workdir=tmp_path / "second") as second:
            assert second.azurite is None
            assert ":10002/" in second.settings["AzureWebJobsStorage"]
    # Storage left unset (the demo) stays private: never the standard ports.
    with Stack({**settings, "AzureWebJobsStorage": ""}, workdir=tmp_path / "third") as private:
        assert private.azurite is not None and private.azurite.table_port not in STANDARD_AZURITE_PORTS
