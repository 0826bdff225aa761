"""The bench run and its command line; see :mod:`devtools.bench` for what is measured and how."""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from devtools.chaos.actors import Portal, canonical, make_seller
from devtools.chaos.run import WEBHOOK_PATH, People, app_settings, learn_ids, register_webhook, say, worker_settings
from devtools.chaos.run import Options as ChaosOptions
from devtools.chaos.scenario import CRM, HELP_CODES, PC, Edit, Plan, Record
from devtools.chaos.services import Process, ServiceError, Services, Worker
from devtools.chaos.verify import verify
from shared.sync.poller import POLL_STATE_KEY

from .meter import LogCount, Meter, peak_rss_mb
from .report import Phase, Results, table

DEFAULT_RECORDS = 1000
DEFAULT_LATENCY_MS = 100.0
DEFAULT_WORKERS = 4
UPDATE_SAMPLE = 200  # the update and echo-of-update paths run on min(N, this) records
LATENCY_SAMPLES = 40  # records timed for each latency, one every LATENCY_PACE_SECONDS
LATENCY_PACE_SECONDS = 0.5
POLL_EVERY_SECONDS = 1.0  # how often the CRM poll runs while flags are timed (production: CRM_POLL_SCHEDULE)
DATAVERSE_LIMIT = "6000/300"  # the real service protection limit: 6000 requests in any 300 s per user
OVERLAP_SECONDS = 10  # CRM_POLL_OVERLAP_SECONDS; the unchanged poll waits this long after the last change
NEVER = "0 0 0 1 1 *"  # poll_crm's schedule: the bench fires it itself (left alone, once a year)
MESSAGE_LEASE_SECONDS = 600.0  # how long a worker holds a message, as the Functions host does
POLL_RETRY_SECONDS = 10.0  # a throttled poll is run again after this (production: the next timer tick)
SETTLE_ROUNDS = 10
CREATE_THREADS = 8
POLL_DONE = "Executed 'Functions.poll_crm'"
TIMEOUT = 30
# chaos compresses time with these; the bench runs the app's own defaults and host.json instead.
COMPRESSED = (
    "JOB_LEASE_SECONDS",
    "BUSY_RETRY_SECONDS",
    "HTTP_TIMEOUT_SECONDS",
    "MAX_INLINE_RETRY_AFTER_SECONDS",
    "MAX_STARTED_JOB_WAIT_SECONDS",
    "QUOTA_PAUSE_SECONDS",
)
_PROXIES = re.compile(r"tables on (?P<tables>http://[^\s,]+), queues on (?P<queues>http://\S+)")


@dataclass(frozen=True)
class Options:
    crm: str
    records: int
    latency_ms: float
    workers: int
    sample: int
    latency_samples: int
    dataverse_limit: tuple[int, float] | None
    output: Path
    seed: int
    keep_logs: bool

    @property
    def phase_timeout(self) -> float:
        # Generous: the request limit alone can hold a large run back for several 300 s windows.
        return 600.0 + 2.0 * self.records


class BenchServices(Services):
    """chaos's processes, plus the proxies in front of Azurite's Table and Queue endpoints."""

    proxy: Process | None = None

    def start_storage_proxy(self, timeout: float = 30.0) -> tuple[str, str]:
        """The proxies' URLs: (tables, queues)."""
        assert self.azurite is not None
        a = self.azurite
        cmd = [sys.executable, "-m", "devtools.bench.storage_proxy"]
        cmd += ["--table", f"http://127.0.0.1:{a.table_port}", "--queue", f"http://127.0.0.1:{a.queue_port}"]
        self.proxy = self._spawn("storage-proxy", cmd, self._base_env())
        found = self.proxy.wait_for(_PROXIES, timeout)
        return found.group("tables"), found.group("queues")

    def dead(self) -> str | None:
        if self.proxy is not None and not self.proxy.guarded.running():
            return f"the storage proxy exited:\n{self.proxy.tail()}"
        return super().dead()

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None:
            self.proxy.guarded.stop()


def _check(response: requests.Response) -> Any:
    response.raise_for_status()
    return response.json() if response.content else None


class Bench:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.o = options
        self.workdir = workdir
        self.services = BenchServices(workdir)
        self.results = Results(options.records, options.crm)
        self.plan = Plan(options.seed, 0, 0)
        self.plan.records = []  # the bench's own records, all valid (chaos's plan would add invalid ones)
        self.workers: list[Worker] = []
        self.t0 = time.monotonic()

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> Results:
        try:
            self.start()
            timed = self.latencies()
            self.creates()
            sample = self.updates()
            self.unchanged_poll()
            self.results.rss_mb = {w.name: peak_rss_mb(w.pid) for w in self.workers}
            self.check([*timed, *sample])
            return self.results
        finally:
            self.services.stop()

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.t0:7.1f}s]"

    def start(self) -> None:
        o, s = self.o, self.services
        s.start_backends(o.crm)
        tables, self.queues = s.start_storage_proxy()
        # chaos's settings for the workers: its options beyond the CRM play no part in them.
        chaos = ChaosOptions(o.crm, o.records, o.seed, o.workers, 0, 0, 0, MESSAGE_LEASE_SECONDS, 0, 0, "", False)
        settings = {k: v for k, v in app_settings(chaos, s, self.workdir).items() if k not in COMPRESSED}
        # The queue's batch size, polling interval and retry delay are host.json's, as in production.
        settings = {k: v for k, v in settings.items() if not k.startswith("AzureFunctionsJobHost__")}
        settings.update(
            {
                "CRM_POLL_SCHEDULE": NEVER,
                "CRM_POLL_OVERLAP_SECONDS": str(OVERLAP_SECONDS),
                "AzureWebJobs.reconcile.Disabled": "true",  # the recovery path for lost webhooks: not measured
            }
        )
        os.environ.update(settings)  # this process reads queue and tables directly, past the proxy: not counted
        assert s.azurite is not None
        storage = settings["AzureWebJobsStorage"]
        for port, url in ((s.azurite.table_port, tables), (s.azurite.queue_port, self.queues)):
            storage = storage.replace(f":{port}/", f":{url.rsplit(':', 1)[1]}/")
        proxied = {**settings, "AzureWebJobsStorage": storage}  # the workers' Table and Queue endpoints: the proxies
        self.workers = [
            s.spawn_worker(f"worker-{n}", worker_settings(proxied, n == 0), MESSAGE_LEASE_SECONDS)
            for n in range(o.workers)
        ]
        for worker in self.workers:
            s.wait_started(worker)
        self.pc_url = s.urls["partner-center"]
        self.crm_url = s.urls["salesforce" if o.crm == "salesforce" else "dataverse"]
        register_webhook(self.pc_url, settings["PARTNER_CENTER_ACCESS_TOKEN"], self.workers[0].url + WEBHOOK_PATH)
        from shared import wiring

        wiring.reset()
        self.container = wiring.container()
        self.container.queue.ensure()
        self.portal = Portal(self.pc_url)
        self.seller = make_seller(o.crm, self.crm_url, settings, random.Random(o.seed))
        self.people = People(self.plan, self.seller, self.portal, 0.0, random.Random(o.seed))
        self.polls = LogCount(self.workers[0].log_path, POLL_DONE)
        self.meter = Meter(self.pc_url, self.crm_url, tables, self.workers, LogCount(self.polls.path, POLL_DONE))
        limit = f"{o.dataverse_limit[0]} requests / {o.dataverse_limit[1]:g} s" if o.dataverse_limit else "off"
        say(
            f"{self.elapsed()} {o.crm}: Azurite (tables behind a counting proxy), {', '.join(s.urls)} emulators and "
            f"{len(self.workers)} workers up (logs in {self.workdir}); {o.latency_ms:g} ms per API call, "
            + (f"Dataverse request limit {limit}" if o.crm == "dynamics" else "no request limit")
        )
        self.network(True)

    # -- the system's knobs ----------------------------------------------------------------------------------
    def network(self, on: bool) -> None:
        """The per-call latency on both emulators and Dataverse's request limit: on while measuring, off while
        the bench itself fills the systems (each ``on`` starts a fresh limit window)."""
        for url in (self.pc_url, self.crm_url):
            _check(requests.delete(f"{url}/_faults", timeout=TIMEOUT))
            if on and self.o.latency_ms > 0:
                rule = {"kind": "latency", "count": 10**9, "delay": self.o.latency_ms / 1000}
                _check(requests.post(f"{url}/_faults", json=rule, timeout=TIMEOUT))
        if self.o.crm == "dynamics":
            limits = f"{self.crm_url}/_emulator/limits"
            if on and self.o.dataverse_limit:
                requests_, window = self.o.dataverse_limit
                _check(requests.post(limits, json={"requests": requests_, "windowSeconds": window}, timeout=TIMEOUT))
            else:
                _check(requests.delete(limits, timeout=TIMEOUT))

    def webhooks(self, mode: str) -> None:
        """``async``: delivered as raised; ``hold``: kept by Partner Center until :meth:`release`."""
        _check(requests.post(f"{self.pc_url}/_emulator/config", json={"dispatchMode": mode}, timeout=TIMEOUT))

    def receiving(self, on: bool) -> None:
        """Whether workers may take jobs from the queue (those they hold go on)."""
        _check(requests.post(f"{self.queues}/_proxy/receive", json={"paused": not on}, timeout=TIMEOUT))

    def release(self) -> int:
        return int(_check(requests.post(f"{self.pc_url}/_emulator/deliveries/release", timeout=TIMEOUT))["released"])

    def delivered_again(self) -> int:
        """How many webhooks Partner Center has sent more than once so far."""
        params = {"minAttempts": "2"}
        return len(_check(requests.get(f"{self.pc_url}/_emulator/deliveries", params=params, timeout=TIMEOUT))["value"])

    def delivering(self) -> bool:
        """Whether Partner Center is still sending a webhook (held ones wait for a release)."""
        params = {"status": "pending", "top": "1"}  # only whether there is one: thousands can be queued
        return bool(
            _check(requests.get(f"{self.pc_url}/_emulator/deliveries", params=params, timeout=TIMEOUT))["value"]
        )

    # -- waiting ---------------------------------------------------------------------------------------------
    def poll(self) -> Any:
        """Run the CRM poll once on the first worker (as its timer would) and return the feed's state after it."""
        done = self.polls()
        _check(requests.post(f"{self.workers[0].url}/admin/functions/poll_crm", json={"input": ""}, timeout=TIMEOUT))
        deadline = time.monotonic() + self.o.phase_timeout
        while self.polls() <= done:
            self.watch(deadline, "the CRM poll")
            time.sleep(0.05)
        return self.container.store.get_watermark(POLL_STATE_KEY)

    def poll_fully(self) -> Any:
        """Poll until a run reads everything (a throttled run stops early; the next one carries on)."""
        while (mark := self.poll()) is not None and mark.last_interruption:
            why = mark.last_interruption[:120]
            say(f"{self.elapsed()} the poll stopped early ({why}); again in {POLL_RETRY_SECONDS:g}s")
            time.sleep(POLL_RETRY_SECONDS)
        return mark

    def watch(self, deadline: float, what: str) -> None:
        problem = self.services.dead()
        if problem:
            raise ServiceError(problem)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {self.o.phase_timeout:.0f}s")

    def drain(self) -> None:
        """Until no webhook is on its way and the queue is empty: a message stays in it (invisible) while its job
        runs and while it is deferred."""
        deadline = time.monotonic() + self.o.phase_timeout
        quiet = 0
        while quiet < 2:
            self.watch(deadline, "the queue")
            busy = self.delivering() or self.container.queue.depth() > 0
            # Twice in a row: a job's last write may raise a webhook just as its message leaves the queue.
            quiet = 0 if busy else quiet + 1
            time.sleep(0.1)

    def poll_alone(self) -> Any:
        """Poll with no job starting meanwhile: a poll paging through many records would otherwise read the
        writes of the jobs it has just enqueued, and count their echoes as its own."""
        self.receiving(False)
        try:
            return self.poll_fully()
        finally:
            self.receiving(True)

    def poll_and_drain(self) -> None:
        self.poll_alone()
        self.drain()

    def release_and_drain(self) -> None:
        self.release()
        self.drain()

    def settle(self) -> None:
        """The echoes: deliver what our writes raised in Partner Center and poll what they changed in the CRM,
        again until a round brings nothing."""
        for _ in range(SETTLE_ROUNDS):
            released = self.release()
            self.drain()
            mark = self.poll_alone()
            self.drain()
            if not released and mark is not None and not mark.last_enqueued:
                return
        self.results.notes.append(f"the echoes had not died down after {SETTLE_ROUNDS} rounds")

    def measure(self, path: str, label: str, records: int, action: Callable[[], None]) -> None:
        before, started, sent_again = self.meter.read(), time.monotonic(), self.delivered_again()
        action()
        phase = Phase(path, label, records, self.meter.read().minus(before), time.monotonic() - started)
        self.results.phases.append(phase)
        cost = phase.cost
        say(
            f"{self.elapsed()} {label}: {records} records, {cost.jobs} jobs, {cost.pc_calls:.0f} PC calls, "
            f"{cost.crm_calls:.0f} CRM requests ({cost.crm_throttled:.0f} refused), {cost.table_ops:.0f} table "
            f"operations in {phase.seconds:.1f}s"
        )
        if (again := self.delivered_again() - sent_again) > 0:
            # Counted, not left out: at-least-once delivery is Partner Center's too, and each one is a job.
            note = (
                f"{label}: Partner Center sent {again} webhook(s) again (the app answered after the emulator's "
                "timeout, or failed); each ran as a job of its own"
            )
            self.results.notes.append(note)
            say(f"{self.elapsed()} {note}")

    # -- people ----------------------------------------------------------------------------------------------
    def new_records(self, origin: str, count: int) -> list[Record]:
        made = []
        for _ in range(count):
            index = len(self.plan.records)
            # Every other opportunity asks for Microsoft's help (a second referral); every referral names one.
            help_code = HELP_CODES[index % len(HELP_CODES)] if origin == PC or index % 2 else None
            record = Record(
                index, origin, True, f"Bench Customer {index:05d}", f"buyer{index}@bench-{index}.example", help_code
            )
            self.plan.records.append(record)
            made.append(record)
        return made

    def create_all(self, records: Iterable[Record]) -> None:
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(self.people.create, records))

    def edit(self, record: Record, side: str) -> str:
        """A new deal value, entered on ``side``; returns it as the CRM shows it."""
        value = self.plan.new_value("deal_value", record)
        started = time.monotonic()
        if side == CRM:
            assert record.crm_id is not None
            self.seller.edit(record.crm_id, "deal_value", value)
        else:
            assert record.referral_id is not None
            self.portal.edit(record.referral_id, "deal_value", value)
        shown = canonical("deal_value", value)
        record.log("deal_value", Edit(side, shown, started, time.monotonic()))
        return str(shown)

    # -- phases ------------------------------------------------------------------------------------------------
    def latencies(self) -> list[Record]:
        """Timed first, on a quiet system with webhooks delivered as they are raised: a seller flags new
        opportunities one at a time while the poll runs every second, then Partner Center edits their referrals."""
        count = min(self.o.records, self.o.latency_samples)
        records = self.new_records(CRM, count)
        self.webhooks("async")
        flagged: dict[int, datetime] = {}
        stop = threading.Event()
        poller = threading.Thread(target=self._keep_polling, args=(stop,), name="bench-poller", daemon=True)
        poller.start()
        try:
            for record in records:
                self.people.create(record)
                flagged[record.index] = datetime.now(UTC)
                time.sleep(LATENCY_PACE_SECONDS)
            referrals = self._wait_linked(records)
        finally:
            stop.set()
            poller.join()
        created = {str(r["id"]): _when(r["createdDateTime"]) for r in referrals}
        self.results.latencies["flag_to_referral"] = [
            (created[str(r.referral_id)] - flagged[r.index]).total_seconds() for r in records
        ]
        self.settle()
        self.results.latencies["webhook_to_crm"] = self._time_webhooks(records)
        self.settle()
        say(f"{self.elapsed()} latencies timed on {count} records")
        return records

    def _keep_polling(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            self.poll()
            stop.wait(max(0.0, POLL_EVERY_SECONDS - (time.monotonic() - started)))

    def _wait_linked(self, records: list[Record]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.o.phase_timeout
        while True:
            referrals, _ = learn_ids(self.plan, self.portal, self.seller)
            if all(r.referral_id for r in records):
                return referrals
            self.watch(deadline, "the flagged opportunities' referrals")
            time.sleep(0.1)

    def _time_webhooks(self, records: list[Record]) -> list[float]:
        """Seconds from a Partner Center edit to its value in the CRM, read through the CRM's control API every
        tenth of a second (the figure is an upper bound by that much)."""
        expected: dict[str, tuple[str, datetime]] = {}
        seen: dict[str, datetime] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for opp in self.seller.snapshot(customers=False).opportunities:
                    wanted = expected.get(opp.crm_id)
                    if wanted and opp.crm_id not in seen and opp.values.get("deal_value") == wanted[0]:
                        seen[opp.crm_id] = datetime.now(UTC)
                stop.wait(0.1)

        watcher = threading.Thread(target=watch, name="bench-watcher", daemon=True)
        watcher.start()
        try:
            for record in records:
                assert record.crm_id is not None
                started = datetime.now(UTC)
                expected[record.crm_id] = (self.edit(record, PC), started)
                time.sleep(LATENCY_PACE_SECONDS)
            deadline = time.monotonic() + self.o.phase_timeout
            while len(seen) < len(records):
                self.watch(deadline, "the edited values' arrival in the CRM")
                time.sleep(0.1)
        finally:
            stop.set()
            watcher.join()
        return [(seen[crm_id] - started).total_seconds() for crm_id, (_, started) in expected.items()]

    def creates(self) -> None:
        """Both create paths on all N records, webhooks held so that the echoes can be measured on their own."""
        n = self.o.records
        self.webhooks("hold")
        crm_born = self.new_records(CRM, n)
        self.results.help_share = sum(1 for r in crm_born if r.help_code) / len(crm_born) if crm_born else 0.0
        self.network(False)  # the seller's own typing is not what is measured, and not at 100 ms a field
        self.create_all(crm_born)
        self.network(True)
        say(f"{self.elapsed()} a seller flagged {n} new opportunities")
        self.measure("crm_to_pc_create", "backfill poll and referral creates", n, self.poll_and_drain)
        self.measure("echo", "after crm_to_pc_create", n, self.settle)
        self.create_all(self.new_records(PC, n))
        say(f"{self.elapsed()} Microsoft shared {n} referrals (their webhooks held)")
        self.measure("pc_to_crm_create", "webhooks of new referrals", n, self.release_and_drain)
        self.measure("echo", "after pc_to_crm_create", n, self.settle)

    def updates(self) -> list[Record]:
        """A value changed on one side of min(N, sample) linked records, from both origins, each way in turn."""
        learn_ids(self.plan, self.portal, self.seller)
        count = min(self.o.records, self.o.sample)
        bulk = self.plan.records[min(self.o.records, self.o.latency_samples) :]
        crm_born = [r for r in bulk if r.origin == CRM and r.crm_id and r.referral_id]
        pc_born = [r for r in bulk if r.origin == PC and r.crm_id and r.referral_id]
        sample = [r for pair in zip(crm_born, pc_born, strict=False) for r in pair][:count]
        for record in sample:
            self.edit(record, PC)
        self.measure("pc_update", "webhooks of Partner Center edits", len(sample), self.release_and_drain)
        self.measure("echo", "after pc_update", len(sample), self.settle)
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(lambda r: self.edit(r, CRM), sample))
        self.measure("crm_update", "poll of CRM edits", len(sample), self.poll_and_drain)
        self.measure("echo", "after crm_update", len(sample), self.settle)
        return sample

    def unchanged_poll(self) -> None:
        # Once the overlap window the poll reads again has passed the last change: the steady state.
        mark = self.container.store.get_watermark(POLL_STATE_KEY)
        newest = mark.watermark if mark is not None and mark.watermark else datetime.now(UTC)
        time.sleep(max(0.0, (newest - datetime.now(UTC)).total_seconds() + OVERLAP_SECONDS + 2))
        before = self.meter.read()
        mark = self.poll()
        cost = self.meter.read().minus(before)
        self.drain()
        if mark is not None and (mark.last_enqueued or mark.last_interruption):
            self.results.notes.append(f"the unchanged poll was not idle: {mark.last_enqueued} change(s) enqueued")
        self.results.idle_poll = cost
        self.results.unchanged_poll_flagged = len(self.plan.records)
        say(f"{self.elapsed()} unchanged poll: {cost.crm_calls:.0f} CRM request(s)")

    def check(self, sample: list[Record]) -> None:
        """Every record once on each side (all of them); the sample's fields compared side by side (chaos's checks)."""
        self.network(False)
        referrals, snapshot = learn_ids(self.plan, self.portal, self.seller, customers=True)
        self.results.missing = sum(1 for r in self.plan.records if not (r.crm_id and r.referral_id))
        checked = Plan(self.o.seed, 0, 0)
        checked.records = sample
        findings = verify(checked, self.container, referrals, snapshot, self.t0)
        self.results.duplicates = findings.duplicates
        self.results.lost_updates, self.results.stuck = findings.lost_updates, findings.stuck
        for kind, lines in findings.details.items():
            for line in lines[:5]:
                self.results.notes.append(f"{kind}: {line[:300]}")


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _limit(text: str) -> tuple[int, float] | None:
    if text.lower() in ("off", "none", "0"):
        return None
    requests_, _, window = text.partition("/")
    try:
        return int(requests_), float(window or 300)
    except ValueError:
        raise argparse.ArgumentTypeError("give REQUESTS/SECONDS, e.g. 6000/300, or off") from None


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS, help="N: flagged opportunities and referrals")
    parser.add_argument("--crm", choices=("dynamics", "salesforce"), default="dynamics")
    parser.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS, help="added to every API call")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker processes")
    parser.add_argument("--sample", type=int, default=UPDATE_SAMPLE, help="records the update paths run on")
    parser.add_argument("--latency-samples", type=int, default=LATENCY_SAMPLES, help="records timed per latency")
    parser.add_argument(
        "--dataverse-limit", type=_limit, default=_limit(DATAVERSE_LIMIT), help="REQUESTS/SECONDS or off"
    )
    parser.add_argument("--output", type=Path, default=Path("bench.json"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if min(args.records, args.workers, args.sample, args.latency_samples) < 1 or args.latency_ms < 0:
        parser.error("--records, --workers, --sample and --latency-samples must be at least 1, --latency-ms >= 0")
    return Options(**{f.name: getattr(args, f.name) for f in fields(Options)})


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # The app's own library logs in this process (it reads tables and the CRM to check) would drown the table.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    bench = Bench(options, Path(tempfile.mkdtemp(prefix="bench-")))
    workdir, started = bench.workdir, bench.t0
    try:
        results = bench.run()
    except Exception as exc:  # the run itself failed: say why, keep the logs
        traceback.print_exc()
        say(f"bench: the run could not be completed: {type(exc).__name__}: {exc} (logs in {workdir})")
        return 2
    say("")
    table(results, say)
    results.write(options.output)
    seconds = time.monotonic() - started
    say(f"bench: {options.records} records against {options.crm} in {seconds:.0f}s; wrote {options.output}")
    if options.keep_logs or not results.ok():
        say(f"logs of every process: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results.ok() else 1
