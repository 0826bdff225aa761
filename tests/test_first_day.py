"""A partner's first day, as docs/deploy.md's "Try it on your machine" path tells a CRM admin to spend it, against
the emulators: every command is the real CLI in its own process (``python -m shared ...`` in a folder holding the
admin's ``local.settings.json``), and the app is ``make run``'s local runner serving over HTTP.

setup-crm (check: missing) -> setup-crm --apply -> login (device code, answered by the test as the admin would in a
browser) -> make run -> register-webhook over another endpoint's registration: refused, naming it -> --force: the
signed test event reaches the app and is verified -> a Partner Center referral becomes a CRM opportunity, a flagged
CRM opportunity becomes a referral -> status and history show both.

Only what cannot be real here differs from the doc: the emulators' URLs and certificate settings in the file, the
identity emulator's CA trusted through REQUESTS_CA_BUNDLE, a config folder in the test's tmp dir, and the port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.localhost.azurite import free_port, start_azurite
from devtools.localhost.stack import hermetic_environment
from emulators.dataverse import DataverseEmulator
from emulators.dataverse.schema import INTEGRATION_APP_ID
from emulators.identity import IdentityEmulator
from emulators.identity.emulator import USERNAME
from emulators.partner_center import PartnerCenterEmulator
from emulators.salesforce import SalesforceEmulator
from emulators.salesforce.emulator import DEFAULT_CLIENT_ID
from emulators.salesforce.schema import USER_ID, USERS
from tests.crm_view import DV_TOKEN, CrmView, DataverseView, SalesforceView

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "local.settings.sample.json"
TENANT = "contoso-tenant"
CLIENT_ID = "00000000-0000-0000-0000-00000000c11e"  # the Entra app registration of "Register the Entra app"
PRODUCTION = "https://cosell-prod.azurewebsites.net/api/webhooks/partner-center"
SF_ADMIN_TOKEN = "00Dadmin!session-of-sf-org-display"  # what `sf org display` gives the admin
SF_SECRET = "first-day-consumer-secret"
RUN_AS_USER = USERS[USER_ID][1]
DOC = ROOT / "docs" / "deploy.md"
DOC_SECTIONS = ("## Try it on your machine first", "## Verify it works")
# What the admin is told to run is in the doc's ```bash blocks; prose only mentions commands.
FENCE = re.compile(r"(?ms)^[ \t]*```bash\n(.*?)^[ \t]*```")
# A command on a code line, after any VAR=value the line sets for it; a trailing comment is not part of it.
DOC_COMMAND = re.compile(r"(?m)^[ \t]*(?:[A-Z_]+=\S+[ \t]+)*((?:python -m [\w.]+|make)\b[^#\n]*)")
# Options that name the admin's own identity or org: they differ between the CRMs, not between the steps.
PER_CRM_OPTIONS = {"--application-id", "--run-as-user"}
# The walk below, step by step, as the doc's commands read.
WALK = [
    "python -m shared setup-crm",
    "python -m shared setup-crm --apply",
    "python -m shared login",
    "make run",
    "python -m shared register-webhook --url",
    "python -m shared register-webhook --force --url",
    "python -m devtools.localhost.runner fire poll_crm",
    "python -m shared status",
    "python -m shared history",
]


def step(words: list[str]) -> str:
    """A command as a step: the program and its command words, then its --options sorted, without values or the
    per-CRM identity options; e.g. ``python -m shared register-webhook --force --url``, ``make run``."""
    if words[0] == "make":
        return " ".join(words[:2])
    positional: list[str] = []
    for word in words[3:]:
        if word.startswith("-"):
            break
        positional.append(word)
    two_words = words[2] == "devtools.localhost.runner" or positional[:1] in (["poison"], ["mapping"])
    options = sorted(w for w in words[3:] if w.startswith("--") and w not in PER_CRM_OPTIONS)
    return " ".join([*words[:3], *positional[: 2 if two_words else 1], *options])


def doc_steps() -> list[str]:
    """The commands of the doc's local path and its "Verify it works", in order: those in its ```bash blocks, each
    CRM's variant of a step once."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(DOC_SECTIONS[0])
    end = text.index("\n## ", text.index(DOC_SECTIONS[1]) + 1)
    steps: list[str] = []
    for block in FENCE.findall(text[start:end]):
        # A line ending in a backslash continues on the next.
        for match in DOC_COMMAND.finditer(re.sub(r"\\\n\s*", " ", block)):
            found = step(re.sub(r"<[^>]*>", "X", match.group(1)).split())
            if not steps or steps[-1] != found:
                steps.append(found)
    return steps


def _queue_empty(workdir: Path) -> bool:
    """The app's queue holds nothing, in flight included (the approximate count has invisible messages too)."""
    from azure.storage.queue import QueueClient

    values = json.loads((workdir / "local.settings.json").read_text())["Values"]
    queue = QueueClient.from_connection_string(values["AzureWebJobsStorage"], "sync-jobs")
    return queue.get_queue_properties().approximate_message_count == 0


def wait_until(condition: Callable[[], Any], timeout: float, what: str, log: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log()}")


@dataclass
class Org:
    """The CRM the admin sets up: its settings (file and shell), the setup-crm identity option, a view for asserts."""

    name: str
    file_values: dict[str, str]
    admin_shell: dict[str, str]  # exported for setup-crm only (the admin's own session), as the doc says
    app_shell: dict[str, str]  # exported for every command and the app
    identity_option: list[str]
    view: CrmView
    referral_column: str


@dataclass
class FirstDay:
    workdir: Path
    env: dict[str, str]
    org: Org
    pc: PartnerCenterEmulator
    identity: IdentityEmulator
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # what the admin ran, as `step()` names the doc's commands

    def cli(self, *args: str, admin: bool = False, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        self.steps.append(step(["python", "-m", "shared", *args]))
        env = {**self.env, **self.org.app_shell, **(self.org.admin_shell if admin else {})}
        return subprocess.run(
            [sys.executable, "-m", "shared", *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _settings_file(workdir: Path, values: dict[str, str]) -> Path:
    """``cp local.settings.sample.json local.settings.json``, then the admin fills in the values the doc names."""
    settings = json.loads(SAMPLE.read_text())
    unknown = set(values) - set(settings["Values"])
    assert not unknown, f"the doc's local path names settings the sample lacks: {sorted(unknown)}"
    settings["Values"].update(values)
    target = workdir / "local.settings.json"
    target.write_text(json.dumps(settings, indent=2))
    return target


@pytest.fixture(params=["dynamics", "salesforce"])
def crm(request) -> str:
    return request.param


@pytest.fixture
def org(crm: str) -> Iterator[Org]:
    """An org nobody has set up for the connector yet (no custom fields, key, role or permission set)."""
    if crm == "dynamics":
        dv = DataverseEmulator(required_token=DV_TOKEN, custom_columns=False).start()
        yield Org(
            "dynamics",
            {"CRM_PROVIDER": "dynamics", "DATAVERSE_URL": dv.url},
            {},
            {"DATAVERSE_ACCESS_TOKEN": DV_TOKEN},  # `az account get-access-token` in the doc
            ["--application-id", INTEGRATION_APP_ID],
            DataverseView(dv),
            "new_referralidentifier",
        )
        dv.stop()
        return
    sf = SalesforceEmulator(
        custom_fields=False, clients={DEFAULT_CLIENT_ID: SF_SECRET}, static_token=SF_ADMIN_TOKEN
    ).start()
    yield Org(
        "salesforce",
        {
            "CRM_PROVIDER": "salesforce",
            "SALESFORCE_AUTH_FLOW": "client_credentials",
            "SALESFORCE_LOGIN_URL": sf.url,
            "SALESFORCE_CLIENT_ID": DEFAULT_CLIENT_ID,
            "SALESFORCE_CLIENT_SECRET": SF_SECRET,
        },
        {"SALESFORCE_INSTANCE_URL": sf.url, "SALESFORCE_ACCESS_TOKEN": SF_ADMIN_TOKEN},
        {},
        ["--run-as-user", RUN_AS_USER],
        SalesforceView(sf),
        "Opportunity.Referral_Identfier__c",
    )
    sf.stop()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def first_day(org: Org, tmp_path: Path) -> Iterator[FirstDay]:
    with contextlib.ExitStack() as running:
        # An Azurite of its own, as in the doc's first step (and the app's queue is always 'sync-jobs': jobs other
        # tests left on a shared one would be worked, and poisoned, by this app).
        azurite = start_azurite()
        running.callback(azurite.stop)
        pc = PartnerCenterEmulator().start()
        running.callback(pc.stop)
        # Entra does not revoke a refresh token when it is redeemed (learn.microsoft.com/entra/identity-platform/
        # refresh-tokens), so the CLI and the app may both start from the token `login` stored; the emulator's
        # rotation revokes the old one, which no Entra tenant does.
        identity = IdentityEmulator(client_id=CLIENT_ID, rotate=False).start()
        running.callback(identity.stop)
        workdir = tmp_path / "admin"
        workdir.mkdir()
        ca = identity.write_ca_bundle(tmp_path / "identity-ca.pem")
        _settings_file(
            workdir,
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "PARTNER_CENTER_TENANT_ID": TENANT,
                "PARTNER_CENTER_CLIENT_ID": CLIENT_ID,
                **org.file_values,
                # The emulators in place of Microsoft's endpoints, which the doc names.
                "PARTNER_CENTER_API_URL": pc.url,
                "PARTNER_CENTER_WEBHOOK_API_URL": pc.url,
                # What the doc leaves as the sample has it (Microsoft's sign-in and certificates), emulated.
                "PARTNER_CENTER_AUTHORITY": identity.url,
                "PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES": f"{pc.url}/cert/",
                "PARTNER_CENTER_WEBHOOK_CA_BUNDLE": str(pc.write_ca_bundle(tmp_path / "pc-ca.pem")),
            },
        )
        env = hermetic_environment(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            XDG_CONFIG_HOME=str(tmp_path / "config"),  # the admin's config folder, where `login` keeps the token
            REQUESTS_CA_BUNDLE=str(ca),  # the identity emulator's CA, trusted as a corporate one would be
            PYTHONUNBUFFERED="1",
        )
        day = FirstDay(workdir, env, org, pc, identity)
        running.callback(lambda: [_stop(process) for process in day.processes])  # first: callbacks run last-in first
        yield day


def _registered_url(day: FirstDay) -> str | None:
    registration = day.pc.webhooks.registration
    return str(registration["WebhookUrl"]) if registration else None


def _first(lines: str, word: str) -> list[str]:
    return [line for line in lines.splitlines() if line.split()[:1] == [word]]


def _login(day: FirstDay) -> tuple[int, str]:
    """`python -m shared login`: the admin opens the address shown and enters the code (here: the emulator approves)."""
    day.steps.append(step(["python", "-m", "shared", "login"]))
    process = subprocess.Popen(
        [sys.executable, "-m", "shared", "login"],
        cwd=day.workdir,
        env={**day.env, **day.org.app_shell},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    day.processes.append(process)
    shown: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            shown.append(line)
            if "enter the code" in line:
                day.identity.approve()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = process.wait(timeout=90)
    reader.join(timeout=5)
    return code, "".join(shown)


class App:
    """`make run`: the local runner serving the app on HTTP with the admin's local.settings.json."""

    def __init__(self, day: FirstDay) -> None:
        day.steps.append("make run")  # which runs `python -m devtools.localhost.run --host runner` without Core Tools
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = day.workdir.parent / "app.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "devtools.localhost.run", "--host", "runner"),
                    *("--port", str(self.port), "--settings-file", str(day.workdir / "local.settings.json")),
                ],
                cwd=ROOT,
                env={**day.env, **day.org.app_shell},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        day.processes.append(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_healthy(self) -> dict[str, Any]:
        def healthy() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the app exited with {self.process.returncode}:\n{self.log()}")
            try:
                answer = requests.get(f"{self.base}/api/health", timeout=2)
            except requests.RequestException:
                return None
            return answer.json() if answer.status_code == 200 else None

        return wait_until(healthy, 60, "the app's /api/health", self.log)


def test_first_day_on_the_local_path(first_day: FirstDay) -> None:
    day, org = first_day, first_day.org
    assert doc_steps() == WALK, "docs/deploy.md's local path is not the walk below: change both together"

    # 1. What the org lacks: check mode changes nothing and exits 1.
    check = day.cli("setup-crm", *org.identity_option, admin=True)
    assert check.returncode == 1, check.stdout + check.stderr
    assert any(org.referral_column in line for line in _first(check.stdout, "MISSING")), check.stdout
    assert "something required is missing" in check.stdout + check.stderr

    # 2. --apply creates it; a second run would create nothing (tests/test_setup_crm.py).
    apply = day.cli("setup-crm", *org.identity_option, "--apply", admin=True)
    assert apply.returncode == 0, apply.stdout + apply.stderr
    assert any(org.referral_column in line for line in _first(apply.stdout, "created")), apply.stdout
    assert not _first(apply.stdout, "MISSING") and not _first(apply.stdout, "FAILED"), apply.stdout

    # 3. Sign in once as the Referrals admin, with MFA; the token goes to the config folder, never to the screen.
    code, shown = _login(day)
    assert code == 0, shown
    assert "enter the code ABCD-EFGH" in shown and f"Signed in as {USERNAME}" in shown
    token_file = Path(day.env["XDG_CONFIG_HOME"]) / "cosell-connector" / "refresh-token.txt"
    token = token_file.read_text().strip()
    assert token in day.identity.refresh_tokens and token not in shown

    # 4. make run, in a second terminal.
    app = App(day)
    health = app.wait_healthy()
    assert not health.get("notConfigured"), health
    webhook_url = f"{app.base}/api/webhooks/partner-center"

    # 5. The tenant already sends its events elsewhere (production): refused, and the message names it.
    answer = requests.post(
        f"{day.pc.url}/webhooks/v1/registration",
        headers={"Authorization": "Bearer production-operator"},
        json={"WebhookUrl": PRODUCTION, "WebhookEvents": ["referral-created", "referral-updated"]},
        timeout=5,
    )
    assert answer.status_code in (200, 201), answer.text
    day.pc.require_mfa = True  # from here on Partner Center refuses any call whose sign-in lacked MFA (900421)
    refused = day.cli("register-webhook", "--url", webhook_url)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"Current registration: {PRODUCTION}" in refused.stdout
    assert f"refused: Partner Center already sends this tenant's events to {PRODUCTION}" in refused.stderr
    assert "--force" in refused.stderr
    assert _registered_url(day) == PRODUCTION, "production keeps its events"

    # 6. --force: registered, and the signed test event reached the running app and passed its signature check.
    forced = day.cli("register-webhook", "--url", webhook_url, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr + app.log()
    assert f"Replaced the registration that pointed to {PRODUCTION}" in forced.stdout
    assert "reached the app and passed the signature check" in forced.stdout and "deliveries work." in forced.stdout
    assert _registered_url(day) == webhook_url
    assert token not in forced.stdout + forced.stderr + app.log()

    # 7. Partner Center -> CRM: a referral Microsoft shares becomes an opportunity within seconds.
    referral = day.pc.seed_referral(kind="cosell")
    opportunity = wait_until(
        lambda: next((o for o in org.view.opportunities() if o["referral_id"] == referral["id"]), None),
        60,
        "the referral's opportunity in the CRM",
        app.log,
    )
    assert opportunity["sync"] is True and "Created from Partner Center referral" in opportunity["audit"]

    # 8. CRM -> Partner Center: a seller flags an opportunity; the next poll (fired now instead of in 30 s) sends it.
    crm_id = org.view.seller().create_flagged(name="Fabrikam - first co-sell")
    day.steps.append(step(["python", "-m", "devtools.localhost.runner", "fire", "poll_crm"]))
    fire = subprocess.run(
        [sys.executable, "-m", "devtools.localhost.runner", "fire", "poll_crm", "--url", app.base],
        cwd=ROOT,
        env=day.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fire.returncode == 0, fire.stdout + fire.stderr
    sent = wait_until(
        lambda: next((r for r in day.pc.referrals() if r.get("externalReferenceId") == crm_id), None),
        60,
        "the flagged opportunity's referral in Partner Center",
        app.log,
    )
    written_back = wait_until(
        lambda: org.view.opportunity(crm_id)["referral_id"], 30, "the referral id written back", app.log
    )
    assert written_back == sent["id"] and sent["name"] == "Fabrikam - first co-sell"
    flagged = org.view.opportunity(crm_id)
    assert flagged["referral_link"] and flagged["name"] == "Fabrikam - first co-sell \u2714", flagged
    assert "referral created in Partner Center" in (flagged["audit"] or ""), flagged

    # 9. Verify it works: status counts both pairs, nothing waits or failed; history tells each record's story.
    # (What a person does: look once the app has worked the jobs the write-back's echo made.)
    wait_until(lambda: _queue_empty(day.workdir), 60, "the app to work every job", app.log)
    status = day.cli("status")
    assert status.returncode == 0, status.stderr
    shown_status = json.loads(status.stdout)
    assert shown_status["links"]["total"] == 2 and shown_status["links"]["ok"] == 2, shown_status
    assert shown_status["queue"] == {"depth": 0, "poison": 0}, shown_status
    assert not shown_status["recentFailures"] and shown_status["credentials"]["lastFailure"] is None, shown_status
    # The app's own /api/status also has what it counted in memory and writes at most once a minute.
    live = requests.get(f"{app.base}/api/status", timeout=10)
    assert live.status_code == 200, live.text
    live_status = live.json()
    assert live_status["lastWebhookAt"] and live_status["lastSyncAt"], live_status
    assert live_status["jobs"]["byDirection"]["pc->crm"] and live_status["jobs"]["byDirection"]["crm->pc"], live_status
    assert not live_status["recentFailures"] and live_status["poison"]["depth"] == 0, live_status
    history = day.cli("history", referral["id"])
    assert history.returncode == 0, history.stderr
    pair = f"History of referral {referral['id']} <-> CRM opportunity {opportunity['id']}: 1 entry, oldest first"
    assert pair in history.stdout, history.stdout
    assert re.search(r"\bcreated +Partner Center -> CRM", history.stdout), history.stdout
    history = day.cli("history", crm_id)
    assert history.returncode == 0 and f"<-> CRM opportunity {crm_id}: 1 entry" in history.stdout, history.stdout
    assert re.search(r"\bcreated +CRM -> Partner Center", history.stdout), history.stdout

    # The walk was the doc's: the same commands, in the same order.
    walked = [name for i, name in enumerate(day.steps) if i == 0 or day.steps[i - 1] != name]
    assert walked == WALK
