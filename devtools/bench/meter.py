"""What the bench reads to count: the emulators' counters, the table proxy's and the workers' own logs.

A :class:`Reading` is every counter at one moment; the cost of a phase is the difference of two readings
(:meth:`Reading.minus`), so nothing is reset while the app runs. Partner Center calls are every Referrals
and Webhooks API request the emulator answered (reads, writes, registrations, throttled ones); CRM calls
are every HTTP request the CRM's emulator received (API requests, metadata, sign-ins and refusals
alike); Table Storage operations are the requests that reached Azurite's Table endpoint through the
proxy; jobs are the ``sync_worker`` invocations the workers logged, polls the ``poll_crm`` runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devtools.chaos.services import EXECUTING, Worker

TIMEOUT = 30
# Partner Center counters that total others (a read is also a "get" or a "list"): not calls of their own.
PC_TOTALS = ("reads", "writes")


TABLES = "tables."  # the table proxy's counts by table, as flattened


def flatten(counters: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested counters as one level: ``{"tables": {"accounts": {"reads": 2}}}`` -> ``{"tables.accounts.reads": 2}``."""
    flat: dict[str, float] = {}
    for key, value in counters.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _get(url: str) -> dict[str, Any]:
    response = requests.get(url, timeout=TIMEOUT)
    response.raise_for_status()
    return dict(response.json())


@dataclass(frozen=True)
class Reading:
    """Every counter at one moment (or, after :meth:`minus`, what changed between two moments)."""

    pc: dict[str, float]
    crm: dict[str, float]
    table: dict[str, float]
    jobs: int
    polls: int

    def minus(self, before: Reading) -> Reading:
        def diff(now: dict[str, float], then: dict[str, float]) -> dict[str, float]:
            return {key: now.get(key, 0.0) - then.get(key, 0.0) for key in now.keys() | then.keys()}

        return Reading(
            diff(self.pc, before.pc),
            diff(self.crm, before.crm),
            diff(self.table, before.table),
            self.jobs - before.jobs,
            self.polls - before.polls,
        )

    @property
    def pc_calls(self) -> float:
        return sum(v for k, v in self.pc.items() if k not in PC_TOTALS)

    @property
    def pc_reads(self) -> float:
        return self.pc.get("reads", 0.0)

    @property
    def pc_writes(self) -> float:
        return self.pc.get("writes", 0.0)

    @property
    def crm_calls(self) -> float:
        return self.crm.get("requests", 0.0)

    @property
    def crm_throttled(self) -> float:
        # Dataverse's request limit (``throttled``) and any injected fault answer, Salesforce's included.
        return self.crm.get("throttled", 0.0) + self.crm.get("faults", 0.0)

    @property
    def table_ops(self) -> float:
        return self.table.get("requests", 0.0)

    def table_names(self) -> list[str]:
        return [key.removeprefix(TABLES) for key in self.table if key.startswith(TABLES)]

    def table_ops_in(self, name: str) -> float:
        return self.table.get(TABLES + name, 0.0)


class LogCount:
    """How many times a text has appeared in a growing log, reading only what was added since the last look
    (a worker's log of a large run is megabytes, and some are watched many times a second)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.offset, self.count, self.partial = 0, 0, ""

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                added = log.read()
        except OSError:
            return self.count
        self.offset += len(added)
        # Only whole lines are counted: the last one may still be being written.
        lines, _, self.partial = (self.partial + added.decode("utf-8", errors="replace")).rpartition("\n")
        self.count += lines.count(self.text)
        return self.count


class Meter:
    def __init__(
        self, pc_url: str, crm_url: str, table_proxy_url: str, workers: Sequence[Worker], polls: LogCount
    ) -> None:
        self.pc_url, self.crm_url, self.table_proxy_url = pc_url, crm_url, table_proxy_url
        self.jobs = [LogCount(worker.log_path, EXECUTING) for worker in workers]
        self.polls = polls

    def read(self) -> Reading:
        return Reading(
            pc=flatten(_get(f"{self.pc_url}/_emulator/counters")),
            crm=flatten(_get(f"{self.crm_url}/_emulator/counters")),
            table=flatten(_get(f"{self.table_proxy_url}/_proxy/counters")),
            jobs=sum(count() for count in self.jobs),
            polls=self.polls(),
        )


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB; 0 when it cannot be read (not Linux, process gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0
