"""``make chaos``: drive records through the real app while the network misbehaves, then check exactly-once.

    python -m devtools.chaos [--crm dynamics|salesforce] [--records 200] [--seed 1] [--workers 3]

What runs, each in a process of its own: Azurite, the Partner Center emulator, the CRM's emulator
(Dataverse or Salesforce) and ``--workers`` copies of the real ``function_app.py`` under the local runner
(:mod:`devtools.chaos.worker`): the ``sync-jobs`` queue with the host.json semantics in every worker, the
Partner Center webhook route and the poll and reconcile timers (every few seconds) in the first one.
Partner Center delivers signed webhooks to that route.

What happens:

1. seeded random network faults on every emulator (``POST /_faults``): latency, connections reset before a
   request arrives, answers lost after a request took effect, 429/503 bursts with ``Retry-After``;
2. a seller creates opportunities flagged "Sync with Partner Center" (some asking for Microsoft's help)
   through the CRM's API, Microsoft shares co-sell referrals for new customers, and both sides edit name,
   deal value, notes, close date and accept referrals; a few records are deliberately invalid;
3. a worker is killed with SIGKILL while it has a job in flight, and a new one takes its place;
4. some records that both sides agree on are closed (won or lost) on one side or the other;
5. the faults stop; the run waits until the queue is empty and two rounds of poll and reconcile find
   nothing new;
6. the checks of :mod:`devtools.chaos.verify`.

The last line of output is always
``chaos: N records, duplicates=D, lost_updates=L, stuck=S, poisoned_transient=P``; the exit status is 0
only when all four are 0 (2 when the run itself could not be carried out).

Time is compressed so a run fits in a test: workers hold a message for ``--lease-seconds`` (not ten
minutes), failed jobs come back after one second, pair leases last ``JOB_LEASE_SECONDS=25`` seconds (about
the least a 3 s HTTP timeout allows) and the poll re-reads a short overlap window. ``--lose-creates`` makes
sure the answer to a create is lost on every service, whatever the dice say. ``--break`` switches on a
deliberately wrong behaviour in every worker (see :data:`devtools.chaos.worker.BREAKS`) to show the checks
catch it.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from devtools.chaos.actors import EDITED_FIELDS, CrmSnapshot, Portal, Seller, canonical, make_seller, referral_values
from devtools.chaos.scenario import ACCEPTED, CRM, PC, PENDING, Edit, Plan, Record
from devtools.chaos.services import ServiceError, Services, Worker
from devtools.chaos.verify import DETAIL_LIMIT, Findings, verify
from devtools.chaos.worker import BREAK_SETTING, BREAKS

WEBHOOK_PATH = "/api/webhooks/partner-center"
REGISTRATION_PATH = "/webhooks/v1/registration"
SF_APP_CLIENT = "chaos-connector"
# Per request, before --fault-scale: what a bad day on a real network looks like, compressed.
FAULTS: dict[str, Any] = {
    "loseAnswer": 0.03,
    "reset": 0.03,
    "burst": 0.01,
    "burstLength": 3,
    "retryAfter": 1,
    "latency": [0.0, 0.02],
}


# Where each service creates records (referrals; accounts, contacts and opportunities), for --lose-creates.
CREATE_PATHS = {
    "partner-center": r"^/v1\.0/engagements/referrals$",
    "dataverse": r"/api/data/v[0-9.]+/(accounts|contacts|opportunities)$",
    "salesforce": r"/sobjects/(Account|Contact|Opportunity|OpportunityContactRole)$",
}


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Options:
    crm: str
    records: int
    seed: int
    workers: int
    edits_per_record: float
    edit_seconds: float
    fault_scale: float
    lease_seconds: float
    settle_timeout: float
    lose_creates: int
    break_mode: str
    keep: bool


@dataclass
class Activity:
    """What the people did, for the report."""

    created: dict[str, int] = field(default_factory=lambda: {CRM: 0, PC: 0})
    edits: dict[str, int] = field(default_factory=lambda: {CRM: 0, PC: 0})
    closes: dict[str, int] = field(default_factory=lambda: {CRM: 0, PC: 0})
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


# -- set-up ------------------------------------------------------------------------------------------------
def app_settings(options: Options, services: Services, workdir: Path) -> dict[str, str]:
    """The app settings of every worker (and of this process, which reads the same tables and queues)."""
    assert services.azurite is not None
    pc = services.urls["partner-center"]
    pc_token = "chaos-pc-" + secrets.token_hex(8)
    requests.post(
        f"{pc}/_emulator/config",
        json={"requiredToken": pc_token, "deliveryAttempts": 10, "retryDelay": 0.2},
        timeout=10,
    ).raise_for_status()
    bundle = workdir / "partner-center-ca.pem"
    ca = requests.get(f"{pc}/_emulator/ca.pem", timeout=10)
    ca.raise_for_status()
    bundle.write_bytes(ca.content)
    settings = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": services.azurite.connection_string,
        "CRM_PROVIDER": options.crm,
        "PARTNER_CENTER_API_URL": pc,
        "PARTNER_CENTER_WEBHOOK_API_URL": pc,
        "PARTNER_CENTER_ACCESS_TOKEN": pc_token,
        "PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES": f"{pc}/cert/",
        "PARTNER_CENTER_WEBHOOK_CA_BUNDLE": str(bundle),
        "CRM_POLL_SCHEDULE": "*/2 * * * * *",
        "RECONCILE_SCHEDULE": "*/3 * * * * *",
        "CRM_POLL_OVERLAP_SECONDS": "10",
        "JOB_LEASE_SECONDS": "25",
        "BUSY_RETRY_SECONDS": "1",
        "HTTP_TIMEOUT_SECONDS": "3",
        "MAX_INLINE_RETRY_AFTER_SECONDS": "2",
        "MAX_STARTED_JOB_WAIT_SECONDS": "6",
        "QUOTA_PAUSE_SECONDS": "5",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
        "AzureFunctionsJobHost__extensions__queues__batchSize": "4",
        "AzureFunctionsJobHost__extensions__queues__newBatchThreshold": "2",
    }
    if options.break_mode:
        settings[BREAK_SETTING] = options.break_mode
    if options.crm == "salesforce":
        sf = services.urls["salesforce"]
        secret = "chaos-app-" + secrets.token_hex(16)
        control = f"{sf}/_emulator"
        requests.post(
            f"{control}/clients", json={"clientId": SF_APP_CLIENT, "clientSecret": secret}, timeout=10
        ).raise_for_status()
        # The org's daily API allocation is not what this run is about: a long run must not use it up.
        requests.post(f"{control}/quota", json={"max": 100_000_000}, timeout=10).raise_for_status()
        settings.update(
            {
                "SALESFORCE_AUTH_FLOW": "client_credentials",
                "SALESFORCE_LOGIN_URL": sf,
                "SALESFORCE_CLIENT_ID": SF_APP_CLIENT,
                "SALESFORCE_CLIENT_SECRET": secret,
            }
        )
    else:
        dv = services.urls["dataverse"]
        dv_token = "chaos-dv-" + secrets.token_hex(8)
        requests.post(f"{dv}/_emulator/token", json={"token": dv_token}, timeout=10).raise_for_status()
        settings.update({"DATAVERSE_URL": dv, "DATAVERSE_ACCESS_TOKEN": dv_token})
    return settings


def worker_settings(settings: dict[str, str], timers: bool) -> dict[str, str]:
    if timers:
        return settings
    # Timers are singletons on the Functions host; only the first worker runs them.
    return {**settings, "AzureWebJobs.poll_crm.Disabled": "true", "AzureWebJobs.reconcile.Disabled": "true"}


def register_webhook(pc: str, token: str, url: str) -> None:
    from shared.sync.webhook_intake import REFERRAL_EVENTS, TEST_EVENT

    response = requests.post(
        pc + REGISTRATION_PATH,
        json={"WebhookUrl": url, "WebhookEvents": [TEST_EVENT, *sorted(REFERRAL_EVENTS)]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()


def faults_on(services: Services, seed: int, scale: float, lose_creates: int) -> None:
    for number, (name, url) in enumerate(services.urls.items()):
        mix = {
            **FAULTS,
            "seed": seed * 100 + number,
            "loseAnswer": FAULTS["loseAnswer"] * scale,
            "reset": FAULTS["reset"] * scale,
            "burst": FAULTS["burst"] * scale,
        }
        requests.post(f"{url}/_faults", json={"random": mix}, timeout=10).raise_for_status()
        if lose_creates:
            # Whatever the dice say, the first creates' answers are lost after the record was made.
            rule = {"kind": "lose_answer", "count": lose_creates, "method": "POST", "path": CREATE_PATHS[name]}
            requests.post(f"{url}/_faults", json=rule, timeout=10).raise_for_status()


def faults_off(services: Services) -> dict[str, dict[str, int]]:
    injected = {}
    for name, url in services.urls.items():
        injected[name] = dict(requests.get(f"{url}/_faults", timeout=10).json().get("injected", {}))
        requests.delete(f"{url}/_faults", timeout=10).raise_for_status()
    return injected


# -- the people ----------------------------------------------------------------------------------------------
class People:
    """The seller and Partner Center's portal, each working through a list of actions in its own thread."""

    def __init__(self, plan: Plan, seller: Seller, portal: Portal, seconds: float, rng: random.Random) -> None:
        self.plan, self.seller, self.portal, self.seconds, self.rng = plan, seller, portal, seconds, rng
        self.activity = Activity()
        self.lock = threading.Lock()
        self.failed = threading.Event()

    def _actions(self, side: str) -> list[tuple[float, Record | None]]:
        """(when, record to create) or (when, None) for an edit by this side, spread over the edit phase."""
        creates = [r for r in self.plan.records if r.origin == side]
        edits = self.plan.edit_count // 2 + (self.plan.edit_count % 2 if side == CRM else 0)
        timed: list[tuple[float, Record | None]] = [(self.rng.uniform(0.0, 0.45), r) for r in creates]
        timed += [(self.rng.uniform(0.15, 1.0), None) for _ in range(edits)]
        return sorted(timed, key=lambda item: item[0])

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._work, args=(side, self._actions(side)), name=f"people-{side}", daemon=True)
            for side in (CRM, PC)
        ]
        for thread in threads:
            thread.start()
        return threads

    def _work(self, side: str, actions: list[tuple[float, Record | None]]) -> None:
        started = time.monotonic()
        try:
            for when, record in actions:
                if self.failed.is_set():
                    return
                delay = started + when * self.seconds - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if record is not None:
                    self.create(record)
                else:
                    self.edit(side)
        except Exception as exc:  # a harness failure: stop the run with the reason
            self.activity.errors.append(f"{side}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            self.failed.set()

    def create(self, record: Record) -> None:
        started = time.monotonic()
        if record.origin == CRM:
            record.crm_id = self.seller.create(self.plan.new_opportunity(record))
        else:
            record.referral_id = str(self.portal.share_referral(self.plan.referral_overrides(record))["id"])
        self.plan.log_creation(record, started)
        with self.lock:
            self.activity.created[record.origin] += 1

    def editable(self) -> list[Record]:
        return [r for r in self.plan.valid if r.created and r.crm_id and r.referral_id and not r.closed]

    def edit(self, side: str) -> None:
        with self.lock:
            candidates = self.editable()
            if not candidates:
                self.activity.skipped += 1
                return
            record = self.rng.choice(candidates)
            names = [n for n in EDITED_FIELDS if n != "status" or record.current("status") == PENDING]
            name = self.rng.choice(names)
            value = ACCEPTED if name == "status" else self.plan.new_value(name, record)
        started = time.monotonic()
        if side == CRM:
            assert record.crm_id is not None
            if name == "status":
                self.seller.accept(record.crm_id)
            else:
                self.seller.edit(record.crm_id, name, value)
        else:
            assert record.referral_id is not None
            if name == "status":
                self.portal.set_status(record.referral_id, "Active", "Accepted")
            else:
                self.portal.edit(record.referral_id, name, value)
        record.log(name, Edit(side, canonical(name, value), started, time.monotonic()))
        with self.lock:
            self.activity.edits[side] += 1

    def close(self, record: Record, side: str, won: bool) -> None:
        started = time.monotonic()
        record.closed = True  # no more edits: Partner Center takes none for a closed referral
        if side == CRM:
            assert record.crm_id is not None
            self.seller.close(record.crm_id, won)
        else:
            assert record.referral_id is not None
            self.portal.set_status(record.referral_id, "Closed", "Won" if won else "Lost")
        record.log("status", Edit(side, "Closed/Won" if won else "Closed/Lost", started, time.monotonic()))
        self.activity.closes[side] += 1


def learn_ids(
    plan: Plan, portal: Portal, seller: Seller, customers: bool = False
) -> tuple[list[dict[str, Any]], CrmSnapshot]:
    """Fill in each record's counterpart id from the emulators' state; returns what was read."""
    from shared.domain.referral import Referral
    from shared.domain.referral_rules import is_microsoft_copy

    referrals = portal.referrals()
    snapshot = seller.snapshot(customers)
    by_external: dict[str, str] = {}
    for raw in referrals:
        external = raw.get("externalReferenceId")
        if external and external not in by_external and not is_microsoft_copy(Referral.model_validate(raw).target):
            by_external[external] = str(raw["id"])
    by_referral: dict[str, str] = {}
    for opp in snapshot.opportunities:
        if opp.referral_id and opp.referral_id not in by_referral:
            by_referral[opp.referral_id] = opp.crm_id
    for record in plan.records:
        if record.origin == CRM and record.crm_id and not record.referral_id:
            record.referral_id = by_external.get(record.crm_id)
        if record.origin == PC and record.referral_id and not record.crm_id:
            record.crm_id = by_referral.get(record.referral_id)
    return referrals, snapshot


def close_some(plan: Plan, people: People, portal: Portal, seller: Seller, rng: random.Random, timeout: float) -> None:
    """Close a share of the records, each once both sides agree on it (so no edit is still on its way)."""
    candidates = people.editable()
    rng.shuffle(candidates)
    pending = candidates[: max(1, len(candidates) // 6)] if candidates else []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        referrals, snapshot = learn_ids(plan, portal, seller)
        pc_values = {str(r["id"]): referral_values(r) for r in referrals}
        crm_values = {o.crm_id: o.values for o in snapshot.opportunities}
        for record in list(pending):
            pc_side = pc_values.get(record.referral_id or "")
            crm_side = crm_values.get(record.crm_id or "")
            if pc_side is not None and pc_side == crm_side:
                people.close(record, rng.choice((CRM, PC)), rng.random() < 0.5)
                pending.remove(record)
        time.sleep(1.0)


# -- worker crash ------------------------------------------------------------------------------------------------
def kill_mid_job(victim: Worker, timeout: float) -> int:
    """SIGKILL the worker as soon as its log shows a job started and not finished; the jobs it had in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and victim.jobs_in_flight() <= 0:
        time.sleep(0.005)
    victim.kill()
    victim.guarded.process.wait(timeout=10)
    return victim.jobs_in_flight()


# -- settling ------------------------------------------------------------------------------------------------------
@dataclass
class Settled:
    quiet: bool
    seconds: float
    last_enqueued: dict[str, int]  # by the latest run of each timer


def settle(container: Any, portal: Portal, timeout: float, watch: Callable[[], str | None]) -> Settled:
    """Wait for an empty queue, no webhook being delivered, and two poll and two reconcile runs after that
    which enqueued nothing."""
    started = time.monotonic()
    quiet_since: datetime | None = None
    runs: dict[str, set[Any]] = {"crm-poll": set(), "reconcile": set()}
    while time.monotonic() - started < timeout:
        problem = watch()
        if problem:
            raise ServiceError(problem)
        # Deliveries are listed only once the queue is empty: the list holds every webhook of the run.
        busy = container.queue.depth() > 0 or portal.pending_deliveries() > 0
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = datetime.now(UTC)
            runs = {key: set() for key in runs}
        else:
            for key in runs:
                state = container.store.get_state(key) or {}
                at = state.get("LastRunAt")
                if isinstance(at, datetime) and at > quiet_since:
                    if state.get("LastEnqueued"):
                        quiet_since = None
                        break
                    runs[key].add(at)
            if quiet_since is not None and all(len(seen) >= 2 for seen in runs.values()):
                return Settled(True, time.monotonic() - started, {key: 0 for key in runs})
        time.sleep(0.5)
    last = {key: int((container.store.get_state(key) or {}).get("LastEnqueued") or 0) for key in runs}
    return Settled(False, time.monotonic() - started, last)


# -- report ---------------------------------------------------------------------------------------------------------
def describe_faults(injected: dict[str, dict[str, int]]) -> list[str]:
    lines = []
    for name, counts in injected.items():
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "none"
        lines.append(f"  {name}: {parts}")
    return lines


def report(findings: Findings) -> None:
    for kind, lines in findings.details.items():
        say(f"{kind} ({len(lines)}):")
        for line in lines[:DETAIL_LIMIT]:
            say(f"  {line}")
        if len(lines) > DETAIL_LIMIT:
            say(f"  ... and {len(lines) - DETAIL_LIMIT} more")


def final_line(records: int, findings: Findings) -> str:
    return (
        f"chaos: {records} records, duplicates={findings.duplicates}, lost_updates={findings.lost_updates}, "
        f"stuck={findings.stuck}, poisoned_transient={findings.poisoned_transient}"
    )


# -- the run --------------------------------------------------------------------------------------------------------
def run(options: Options, workdir: Path) -> Findings:
    t0 = time.monotonic()

    def elapsed() -> str:
        return f"[{time.monotonic() - t0:6.1f}s]"

    services = Services(workdir)
    rng = random.Random(options.seed)
    plan = Plan(options.seed, options.records, options.edits_per_record)
    try:
        services.start_backends(options.crm)
        settings = app_settings(options, services, workdir)
        os.environ.update(settings)  # this process reads the app's tables and queues with the same settings
        workers = [
            services.spawn_worker(f"worker-{n}", worker_settings(settings, n == 0), options.lease_seconds)
            for n in range(options.workers)
        ]
        for worker in workers:
            services.wait_started(worker)
        pc = services.urls["partner-center"]
        register_webhook(pc, settings["PARTNER_CENTER_ACCESS_TOKEN"], workers[0].url + WEBHOOK_PATH)
        say(
            f"{elapsed()} {options.crm}: Azurite, {', '.join(services.urls)} emulators and {len(workers)} workers up "
            f"(logs in {workdir}); seed {options.seed}"
            + (f"; deliberately broken: {BREAKS[options.break_mode]}" if options.break_mode else "")
        )
        from shared import wiring

        wiring.reset()
        container = wiring.container()
        container.queue.ensure()
        portal = Portal(pc)
        seller = make_seller(
            options.crm,
            services.urls[options.crm if options.crm == "salesforce" else "dataverse"],
            settings,
            random.Random(options.seed + 1),
        )
        faults_on(services, options.seed, options.fault_scale, options.lose_creates)
        say(
            f"{elapsed()} faults on: {FAULTS} x {options.fault_scale}, and the answers to the first "
            f"{options.lose_creates} creates on each service lost"
        )

        people = People(plan, seller, portal, options.edit_seconds, rng)
        threads = people.start()
        stop_learning = threading.Event()

        def keep_learning() -> None:
            while not stop_learning.wait(1.0):
                if all(r.crm_id and r.referral_id for r in plan.valid if r.created):
                    continue
                try:
                    learn_ids(plan, portal, seller)
                except requests.RequestException:
                    pass

        learner = threading.Thread(target=keep_learning, name="learn-ids", daemon=True)
        learner.start()
        time.sleep(options.edit_seconds * 0.3)
        victim = workers[-1] if len(workers) > 1 else workers[0]
        in_flight = kill_mid_job(victim, timeout=options.edit_seconds)
        say(
            f"{elapsed()} killed {victim.name} (pid {victim.pid}) with SIGKILL after it started "
            f"{victim.jobs_started()} jobs, {in_flight} of them in flight"
        )
        replacement = services.wait_started(
            services.spawn_worker(
                f"worker-{options.workers}", worker_settings(settings, victim is workers[0]), options.lease_seconds
            )
        )
        say(f"{elapsed()} {replacement.name} (pid {replacement.pid}) took its place")
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
                problem = services.dead()
                if problem:
                    raise ServiceError(problem)
        if people.failed.is_set():
            raise RuntimeError("a person's action failed:\n" + "\n".join(people.activity.errors))
        a = people.activity
        say(
            f"{elapsed()} created {a.created[CRM]} opportunities in the CRM and {a.created[PC]} referrals in "
            f"Partner Center ({len(plan.invalid)} deliberately invalid); edits: {a.edits[CRM]} in the CRM, "
            f"{a.edits[PC]} in Partner Center, {a.skipped} skipped (nothing to edit yet)"
        )
        close_some(plan, people, portal, seller, rng, timeout=max(5.0, options.edit_seconds))
        stop_learning.set()
        learner.join(5)
        say(f"{elapsed()} closed {a.closes[CRM]} in the CRM and {a.closes[PC]} in Partner Center")
        injected = faults_off(services)
        say(f"{elapsed()} faults off; injected (the seller's requests included):")
        for line in describe_faults(injected):
            say(line)
        say(f"{elapsed()} seller retried {seller.careful.retries} requests")
        settled = settle(container, portal, options.settle_timeout, services.dead)
        say(f"{elapsed()} " + ("settled" if settled.quiet else "NOT settled") + f" after {settled.seconds:.1f}s")
        referrals, snapshot = learn_ids(plan, portal, seller, customers=True)
        findings = verify(plan, container, referrals, snapshot, t0)
        if not settled.quiet:
            # Work that never stops coming is a record (or several) the system cannot put to rest.
            churn = sum(settled.last_enqueued.values())
            findings.stuck += max(1, churn)
            runs = ", ".join(f"{key} {n}" for key, n in settled.last_enqueued.items())
            findings.note(
                "stuck", f"never quiet within {options.settle_timeout:.0f}s; jobs enqueued by the last runs: {runs}"
            )
        say(
            f"{elapsed()} checked {len(plan.valid)} valid records; {findings.refused_as_expected} of "
            f"{len(plan.invalid)} invalid ones refused as expected"
            + (f", {findings.poisoned_invalid} of them in poison" if findings.poisoned_invalid else "")
        )
        return findings
    finally:
        services.stop()


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--crm", choices=("dynamics", "salesforce"), default="dynamics")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3, help="worker processes (one of them is killed)")
    parser.add_argument("--edits-per-record", type=float, default=2.0)
    parser.add_argument("--edit-seconds", type=float, default=None, help="length of the create and edit phase")
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiplies the fault probabilities")
    parser.add_argument("--lease-seconds", type=float, default=10.0, help="how long a worker holds a message")
    parser.add_argument("--settle-timeout", type=float, default=None)
    parser.add_argument(
        "--lose-creates", type=int, default=2, help="lose the answers to the first N creates on each service"
    )
    parser.add_argument("--break", dest="break_mode", choices=sorted(BREAKS), default="")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if args.records < 4:
        parser.error("--records must be at least 4")
    return Options(
        crm=args.crm,
        records=args.records,
        seed=args.seed,
        workers=max(2, args.workers),
        edits_per_record=args.edits_per_record,
        edit_seconds=args.edit_seconds or max(8.0, args.records * 0.08),
        fault_scale=args.fault_scale,
        lease_seconds=args.lease_seconds,
        settle_timeout=args.settle_timeout or 60.0 + args.records * 0.15,
        lose_creates=args.lose_creates,
        break_mode=args.break_mode,
        keep=args.keep_logs,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # This process only reads the app's state; the workers' logs say what the app did.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    try:
        findings = run(options, workdir)
    except Exception as exc:  # the run itself failed: say why, keep the logs
        traceback.print_exc()
        say(f"chaos: the run could not be completed: {type(exc).__name__}: {exc} (logs in {workdir})")
        return 2
    report(findings)
    if findings.ok() and not options.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not findings.ok():
        say(f"logs of every process: {workdir}")
    say(final_line(options.records, findings))
    return 0 if findings.ok() else 1
