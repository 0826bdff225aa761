"""``make demo``: the connector's main job end to end on the embedded default, with a short report.

    python -m devtools.demo [--crm dynamics|salesforce] [--timeout SECONDS]

Starts Azurite, the Partner Center emulator, the CRM's emulator (Dataverse for Dynamics 365, the default,
or Salesforce) and the real function app under the local runner (a separate process) with
``CRM_PROVIDER`` set to match, then plays a scripted scenario only through what Partner Center would do
(the emulator's control API), what a seller would do in the CRM (the Dataverse Web API, or the Salesforce
REST API with a session from the org's token endpoint) and what an operator may do (fire the ``poll_crm``
timer through the host's admin endpoint), and only observes the results (emulator state and counters,
the app's status endpoint, the audit table):

1. the app is up: ``GET /api/health``;
2. Microsoft shares a co-sell referral -> signed webhook -> queue -> an opportunity in the CRM;
3. the referral is updated -> webhook -> the opportunity follows;
4. Partner Center delivers the same webhook again -> processed, nothing new written;
5. a seller flags an opportunity asking for Microsoft's help -> the poll enqueues it -> the co-sell
   referral and Microsoft's referral in Partner Center; identifier, link, audit line and check mark on
   the opportunity;
6. the seller edits the deal value -> exactly one PATCH reaches Partner Center;
7. Partner Center's webhooks for our writes and one more poll -> no further write on either side;
8. an opportunity without a solution id -> cross mark and the reason in its Audit field, nothing sent;
9. the deal from step 2 (on hold in the CRM): the seller accepts it in the CRM -> Partner Center shows
   Active/Accepted;
10. Microsoft accepts its side -> the CRM shows Microsoft's status, seller, MSX id and notes;
11. the seller closes it won in the CRM -> Partner Center shows Closed/Won.

Steps 5-8 live in ``devtools.demo.steps_crm``, steps 9-11 in ``devtools.demo.steps_lifecycle``; what differs
between CRMs sits behind :class:`devtools.demo.crm.CrmSide` (``devtools.demo.dataverse``,
``devtools.demo.salesforce``). Exit status 0 only if every step was observed. Everything started is stopped on
exit, on Ctrl-C and on SIGTERM; if this process is killed outright, the guards (devtools.localhost.guard) stop
Azurite and the runner.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import requests

from ..localhost.azurite import ROOT, free_port
from ..localhost.guard import Guarded, spawn_guarded
from ..localhost.hostconfig import load_host_config
from ..localhost.stack import Stack, hermetic_environment, project_pythonpath
from .crm import CrmRecord, CrmSeller, short
from .observe import CRM_SIDES, AuditLine, Observer, StepFailed
from .steps_crm import App, is_microsofts_referral, queue_empty, run_crm_scenario
from .steps_lifecycle import run_deal_lifecycle, status_of

T = TypeVar("T")
WEBHOOK_FUNCTION = "partner_center_webhook"
# Queue polling backs off to host.json's maxPollingInterval (2 s) while idle; the demo caps it at 0.5 s so
# its timings show the app's work, not the poll interval. A job that finds its pair leased by another job
# (typically Partner Center's webhook for a referral the app is still creating) fails with PairBusy and
# is retried after visibilityTimeout, 30 s in host.json; the demo shortens that to 1 s, still long enough
# for the lease holder to finish well within maxDequeueCount attempts. Both overrides are the host's own
# mechanism (app settings named AzureFunctionsJobHost__...).
HOST_OVERRIDES = {
    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
}


@dataclass
class Step:
    title: str
    ok: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, timeout: float) -> None:
        self.started = time.monotonic()
        self.timeout = timeout
        self.steps: list[Step] = []
        # Says what died, if a process the demo depends on has exited; checked while waiting.
        self.watch: Callable[[], str | None] = lambda: None

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def wait_for(self, what: str, probe: Callable[[], T | None], since: float) -> tuple[T, float]:
        """Poll ``probe`` until it returns something; the value and the seconds since ``since``."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value, time.monotonic() - since
            problem = self.watch()
            if problem:
                raise StepFailed(f"{problem} while waiting for {what}")
            time.sleep(0.05)
        raise StepFailed(f"not observed within {self.timeout:.0f}s: {what}")

    def observed(self, step: Step, label: str, seconds: float) -> None:
        step.timings.append((label, seconds))
        self.say(f"  {label} ({_ms(seconds)})")

    def step(self, title: str) -> Step:
        step = Step(title)
        self.steps.append(step)
        self.say(f"step {len(self.steps)}: {title}")
        return step


# -- the runner process --------------------------------------------------------------------------------------
def start_runner(stack: Stack, workdir: Path, demo: Demo) -> tuple[Guarded, str, Path]:
    port = free_port()
    log_path = workdir / "runner.log"
    empty = workdir / "no-local-settings.json"
    empty.write_text('{"IsEncrypted": false, "Values": {}}')
    env = {**hermetic_environment(os.environ), **stack.settings, **HOST_OVERRIDES}
    env["PYTHONPATH"] = project_pythonpath(os.environ)
    cmd = [
        sys.executable,
        "-m",
        "devtools.localhost.runner",
        "serve",
        "--port",
        str(port),
        "--settings-file",
        str(empty),
    ]
    with open(log_path, "ab") as log:
        runner = spawn_guarded(cmd, "runner", env=env, cwd=ROOT, output=log)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not runner.running():
            raise StepFailed("the local runner exited during start-up:\n" + tail(log_path))
        try:
            return requests.get(f"{base}/admin/host/status", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    _, took = demo.wait_for("the local runner to start", ready, time.monotonic())
    demo.say(f"local runner serving the real function_app.py on {base} (guard pid {runner.pid}, {took:.1f}s)")
    return runner, base, log_path


def webhook_url(base: str, settings: dict[str, str]) -> str:
    """The webhook's URL from the app's own registration, as listed by the runner's admin endpoint."""
    listed = requests.get(f"{base}/admin/functions", timeout=10).json()["functions"]
    trigger = next((f["trigger"] for f in listed if f["name"] == WEBHOOK_FUNCTION), None)
    if trigger is None:
        raise StepFailed(f"the app registers no {WEBHOOK_FUNCTION} function")
    prefix = load_host_config(ROOT, settings).route_prefix
    return base + "/" + "/".join(p for p in (prefix, str(trigger["route"]).strip("/")) if p)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the scenario --------------------------------------------------------------------------------------------
def _delivered(observer: Observer, referral_id: str, count: int) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        found = observer.deliveries_for(referral_id)
        if len(found) >= count and found[count - 1]["status"] != "pending":
            return found[count - 1]
        return None

    return probe


def _accepted(delivery: dict[str, Any]) -> None:
    if delivery["status_code"] != 202:
        raise StepFailed(f"webhook answered {delivery['status_code']} ({delivery['status']}), expected 202")


def run_scenario(demo: Demo, observer: Observer, seller: CrmSeller, base: str) -> None:
    store = observer.crm.store
    step = demo.step("the app is up: GET /api/health")
    started = time.monotonic()
    health = requests.get(f"{base}/api/health", timeout=10)
    if health.status_code != 200:
        raise StepFailed(f"GET /api/health answered {health.status_code}")
    demo.observed(step, "answered 200", time.monotonic() - started)
    step.ok = True

    step = demo.step(f"Microsoft shares a co-sell referral -> signed webhook -> opportunity in {store}")
    started = time.monotonic()
    referral = observer.create_cosell_referral()
    referral_id = referral["id"]
    delivery, took = demo.wait_for("the referral-created webhook", _delivered(observer, referral_id, 1), started)
    _accepted(delivery)
    demo.observed(step, f"signed {delivery['event']} webhook answered 202", took)
    opportunity, took = demo.wait_for(
        f"the opportunity in the {store} emulator", lambda: observer.opportunity_for(referral_id), started
    )
    demo.observed(step, f"opportunity created in {store}", took)
    on_hold = observer.crm.shows("New", "Pending")
    if opportunity["state"] != on_hold or status_of(referral) != "New/Pending":
        raise StepFailed(
            f"a referral not yet accepted should be {on_hold} in {store}, it is {opportunity['state']} "
            f"(referral {status_of(referral)})"
        )
    step.notes.append(f"referral {referral_id} -> opportunity {opportunity['id']}")
    step.notes.append(f'{store}: "{opportunity["name"]}" {opportunity["state"]}; Partner Center: {status_of(referral)}')
    step.ok = True

    step = demo.step("the referral is updated in Partner Center -> the opportunity follows")
    new_value = float(referral["details"]["dealValue"]) + 60000.0
    writes_before = len(observer.writes())
    started = time.monotonic()
    observer.update_referral(referral_id, {"details": {"dealValue": new_value}})
    delivery, took = demo.wait_for("the referral-updated webhook", _delivered(observer, referral_id, 2), started)
    _accepted(delivery)
    demo.observed(step, f"signed {delivery['event']} webhook answered 202", took)

    def followed() -> CrmRecord | None:
        current = observer.opportunity_for(referral_id)
        if current and current["deal_value"] == new_value and len(observer.writes()) > writes_before:
            return current
        return None

    what = f"the opportunity's {observer.crm.deal_value_label} to become {new_value:,.0f}"
    opportunity, took = demo.wait_for(what, followed, started)
    demo.observed(step, f"opportunity updated in {store}", took)
    step.notes.append(f"deal value {float(referral['details']['dealValue']):,.0f} -> {new_value:,.0f}")
    step.ok = True

    step = demo.step("Partner Center delivers the same webhook again -> nothing new")
    writes_before = len(observer.writes())
    opportunities_before = len(observer.opportunities())
    audit_before = len(observer.audit_trail(referral_id))
    started = time.monotonic()
    observer.redeliver(referral_id)
    delivery, took = demo.wait_for("the duplicate webhook", _delivered(observer, referral_id, 3), started)
    _accepted(delivery)
    demo.observed(step, "duplicate webhook answered 202", took)

    _, took = demo.wait_for("the duplicate job to finish (queue empty)", queue_empty(App(base)), started)
    demo.observed(step, "job processed (queue empty)", took)
    time.sleep(0.5)  # a late write would show up here; there must be none
    writes_after, opportunities_after = len(observer.writes()), len(observer.opportunities())
    audit_after = len(observer.audit_trail(referral_id))
    if writes_after != writes_before or opportunities_after != opportunities_before or audit_after != audit_before:
        raise StepFailed(
            f"the duplicate changed something: {store} writes {writes_before} -> {writes_after}, opportunities "
            f"{opportunities_before} -> {opportunities_after}, audit entries {audit_before} -> {audit_after}"
        )
    step.notes.append(
        f"{store} writes stayed at {writes_after}, opportunities at {opportunities_after}; "
        "a job with nothing to do is logged, not audited"
    )
    step.ok = True
    run_crm_scenario(demo, observer, seller, base)
    run_deal_lifecycle(demo, observer, seller, App(base), referral_id, opportunity["id"])


# -- the report ----------------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def report(demo: Demo, crm: str, observer: Observer | None, seller: CrmSeller | None) -> None:
    side = CRM_SIDES[crm]
    print("\n" + "=" * 78)
    print(f"Co-sell connector demo: Partner Center <-> queue <-> {side.store}, both ways (all local)")
    print("=" * 78)
    print(f"CRM: {side.product} (CRM_PROVIDER={crm}) on the bundled {side.store} emulator; the app signs in")
    print(f"with {side.sign_in}.")
    print("Timings run from each step's action until the demo saw the result (it polls every 50 ms).")
    print("Queue polling is capped at 0.5 s for the demo (AzureFunctionsJobHost__extensions__queues__")
    print("maxPollingInterval); host.json allows 2 s between polls of an idle queue. A job that finds its")
    print("record busy with another job is retried after 1 s here (visibilityTimeout; 30 s in host.json).")
    print("The CRM poll runs on CRM_POLL_SCHEDULE (every 30 s by default); the demo fires it through")
    print("the host's admin endpoint (POST /admin/functions/poll_crm) instead of waiting.\n")
    for position, step in enumerate(demo.steps, start=1):
        print(f"{'PASS' if step.ok else 'FAIL'}  {position}. {step.title}")
        for label, seconds in step.timings:
            print(f"        {label:<50} {_ms(seconds):>10}")
        for note in step.notes:
            print(f"        {note}")
    if observer is not None:
        _report_records(observer, seller.writes if seller is not None else 0)
    passed = sum(step.ok for step in demo.steps)
    total = time.monotonic() - demo.started
    verdict = "every step observed" if demo.steps and passed == len(demo.steps) else "NOT every step observed"
    print(f"\nResult: {passed}/{len(demo.steps)} steps passed, {verdict} (total {total:.1f} s)")


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _report_records(observer: Observer, seller_writes: int) -> None:
    try:
        referrals = observer.referrals()
        opportunities = observer.opportunities()
        writes = observer.writes()
        counters = observer.pc_counters()
        crm_notes = observer.crm.report_notes()
        # Audit rows are keyed by referral id, or by the opportunity id while no referral exists.
        keys = [str(r["id"]) for r in referrals] + [o["id"] for o in opportunities if not o["referral_id"]]
        trails = {key: observer.audit_trail(key) for key in keys}
    except Exception as exc:  # the report must not hide the steps' verdict behind a read error
        print(f"\n(records unavailable: {exc})")
        return
    print(f"\nPartner Center (emulator): {_plural(len(referrals), 'referral', 'referrals')}")
    for referral in referrals:
        details = referral.get("details") or {}
        print(
            f'  {referral["id"]}  "{referral.get("name")}"  {referral.get("type")}  '
            f"{referral.get('status')}/{referral.get('substatus')}  "
            f"{float(details.get('dealValue') or 0):,.0f} {details.get('currency', '')}"
        )
        print(f"      {_origin(referral)}")
    calls = ", ".join(f"{counters[k]} {k}" for k in ("create", "patch", "update") if counters.get(k)) or "none"
    print(f"  writes by the app: {counters.get('writes', 0)} ({calls})")
    crm = observer.crm
    print(f"\n{crm.store} (emulator): {_plural(len(opportunities), 'opportunity', 'opportunities')}")
    for record in opportunities:
        for line in crm.render(record):
            print(line)
    kinds: dict[str, int] = {}
    for write in writes:
        kind = crm.write_kind(write)
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"  writes: {len(writes)} ({', '.join(f'{n} {k}' for k, n in kinds.items())})")
    print(f"          {seller_writes} by the seller ({crm.seller_api}), {len(writes) - seller_writes} by the app")
    for note in crm_notes:
        print(note)
    print("\nAudit trail (SyncAudit, oldest first)")
    by_referral = {str(r["id"]): r for r in referrals}
    for key, trail in sorted(trails.items(), key=lambda item: _first_time(item[1])):
        if not trail:
            continue
        referral = by_referral.get(key)
        print(f"  {'referral' if referral else 'opportunity'} {key}" + (f" ({_role(referral)})" if referral else ""))
        for line in trail:
            stamp = line.at.strftime("%H:%M:%S.%f")[:-3] if line.at else "?"
            print(f"    {stamp}  {line.direction:<7}  {line.action:<10} {short(line.message, 80)}")


def _role(referral: dict[str, Any]) -> str:
    if is_microsofts_referral(referral):
        return "Microsoft's referral"
    if referral.get("externalReferenceId"):
        return "our co-sell referral"
    return "shared by Microsoft"


def _origin(referral: dict[str, Any]) -> str:
    # A prefix is enough to see which referrals share an engagement; the full ids are in the step notes.
    engagement = f"engagement {str(referral.get('engagementId'))[:8]}…"
    role = _role(referral)
    if role == "Microsoft's referral":
        return f"{role} (target {referral['target'][0].get('id')}), {engagement}"
    if role == "our co-sell referral":
        solutions = ", ".join(str(t.get("id")) for t in referral.get("target") or [])
        return f"{role} for opportunity {referral['externalReferenceId']} ({solutions}), {engagement}"
    invited = ((referral.get("inviteContext") or {}).get("invitedBy") or {}).get("organizationName")
    return f"{role}, invited by {invited}, {engagement}"


def _first_time(trail: list[AuditLine]) -> float:
    stamps = [line.at.timestamp() for line in trail if line.at]
    return min(stamps) if stamps else float("inf")


# -- entry point ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--crm", choices=sorted(CRM_SIDES), default="dynamics", help="the CRM to sync with (CRM_PROVIDER)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each observation")
    args = parser.parse_args(argv)
    side = CRM_SIDES[args.crm]

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks below, which stop everything

    signal.signal(signal.SIGTERM, on_sigterm)
    demo = Demo(args.timeout)
    workdir = Path(tempfile.mkdtemp(prefix="cosell-demo-"))
    runner: Guarded | None = None
    observer: Observer | None = None
    seller: CrmSeller | None = None
    failure: str | None = None
    log_path: Path | None = None
    demo.say(f"CRM: {side.product} (CRM_PROVIDER={args.crm})")
    demo.say(f"starting Azurite, the Partner Center and {side.store} emulators (nothing from your settings is used)")
    try:
        # Hermetic: the demo never reads local.settings.json or app settings from the environment; the
        # stack starts the chosen CRM's emulator because no endpoint for it is set.
        with Stack({"CRM_PROVIDER": args.crm}, progress=demo.say, workdir=workdir) as stack:
            try:
                runner, base, log_path = start_runner(stack, workdir, demo)
                demo.watch = lambda: None if runner.running() else "the local runner exited"
                stack.register_webhook(webhook_url(base, stack.settings))
                observer = Observer(stack)
                seller = observer.crm.seller()
                run_scenario(demo, observer, seller, base)
            except (StepFailed, requests.RequestException) as exc:
                time.sleep(0.3)  # a refused request is often the first sign of a dead runner: let it show
                died = demo.watch()
                failure = f"{died}: {exc}" if died and died not in str(exc) else str(exc)
                if demo.steps:
                    demo.steps[-1].notes.append(f"failed: {failure}")
                demo.say(f"FAILED: {failure}")
            report(demo, args.crm, observer, seller)
            if failure and log_path is not None:
                print("\nLast lines of the runner's log:\n" + tail(log_path))
            if runner is not None:
                demo.say("stopping the runner, the emulators and Azurite")
                runner.stop()
    except KeyboardInterrupt:
        demo.say("interrupted")
        return 130
    finally:
        if runner is not None:
            runner.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    ok = failure is None and bool(demo.steps) and all(step.ok for step in demo.steps)
    return 0 if ok else 1
