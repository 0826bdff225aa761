"""The processes of a chaos run: Azurite, the emulators and the app's workers, each out of process.

Every process is started under a guard (:mod:`devtools.guard`), so none outlives the run even when the run
itself is killed. Emulators are started with ``python -m emulators.<name> --port 0`` and configured through
their control APIs, so the faults they inject travel over real sockets, as they would from a real service.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devtools.localhost.azurite import ROOT, Azurite
from devtools.localhost.guard import Guarded, spawn_guarded
from devtools.localhost.stack import hermetic_environment, project_pythonpath, start_azurite_guarded

EMULATOR_MODULES = {
    "partner-center": "emulators.partner_center",
    "dataverse": "emulators.dataverse",
    "salesforce": "emulators.salesforce",
}
_LISTENING = re.compile(r"listening on (?P<url>http://\S+)")
_WORKER = re.compile(r"chaos-worker (?P<name>\S+) pid (?P<pid>\d+) port (?P<port>\d+)")
EXECUTING = "Executing 'Functions.sync_worker'"
EXECUTED = "Executed 'Functions.sync_worker'"


class ServiceError(RuntimeError):
    """A process of the run did not start or died."""


@dataclass
class Process:
    name: str
    guarded: Guarded
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.log())
            if found:
                return found
            if not self.guarded.running():
                raise ServiceError(f"{self.name} exited during start-up:\n{self.tail()}")
            time.sleep(0.05)
        raise ServiceError(f"{self.name} did not start within {timeout:.0f}s:\n{self.tail()}")


@dataclass
class Worker(Process):
    pid: int = 0
    url: str = ""
    killed: bool = False

    def jobs_in_flight(self) -> int:
        """Jobs this worker started and has not finished, from its own log (written unbuffered)."""
        text = self.log()
        return text.count(EXECUTING) - text.count(EXECUTED)

    def jobs_started(self) -> int:
        return self.log().count(EXECUTING)

    def kill(self) -> None:
        """SIGKILL to the app's process itself: no shutdown, no message settled, leases left as they are."""
        os.kill(self.pid, signal.SIGKILL)
        self.killed = True


@dataclass
class Services:
    workdir: Path
    azurite: Azurite | None = None
    emulators: dict[str, Process] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    def _spawn(self, name: str, cmd: list[str], env: Mapping[str, str]) -> Process:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            guarded = spawn_guarded(cmd, name, env=dict(env), cwd=ROOT, output=log)
        return Process(name, guarded, log_path)

    def _base_env(self) -> dict[str, str]:
        env = hermetic_environment(os.environ)
        env["PYTHONPATH"] = project_pythonpath(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # the run reads the logs while the processes write them
        return env

    def start_backends(self, crm: str, timeout: float = 60.0) -> None:
        """Azurite, the Partner Center emulator and the CRM's emulator, started side by side."""
        names = ["partner-center", crm if crm == "salesforce" else "dataverse"]
        for name in names:
            cmd = [sys.executable, "-m", EMULATOR_MODULES[name], "--port", "0"]
            self.emulators[name] = self._spawn(name, cmd, self._base_env())
        self.azurite = start_azurite_guarded(self.workdir / "azurite.log", timeout=timeout)
        for name, process in self.emulators.items():
            self.urls[name] = process.wait_for(_LISTENING, timeout).group("url").rstrip("/")

    def spawn_worker(self, name: str, settings: Mapping[str, str], lease_seconds: float) -> Worker:
        env = {**self._base_env(), **settings}
        cmd = [sys.executable, "-m", "devtools.chaos.worker", "--name", name, "--lease-seconds", str(lease_seconds)]
        process = self._spawn(name, cmd, env)
        worker = Worker(process.name, process.guarded, process.log_path)
        self.workers.append(worker)
        return worker

    def wait_started(self, worker: Worker, timeout: float = 60.0) -> Worker:
        found = worker.wait_for(_WORKER, timeout)
        worker.pid = int(found.group("pid"))
        worker.url = f"http://127.0.0.1:{found.group('port')}"
        self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{worker.url}/admin/host/status", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if not worker.guarded.running():
                raise ServiceError(f"{worker.name} exited during start-up:\n{worker.tail()}")
            time.sleep(0.1)
        raise ServiceError(f"{worker.name} did not become ready within {timeout:.0f}s")

    def dead(self) -> str | None:
        """What died by itself, if anything (a killed worker is expected to be dead)."""
        for process in [*self.emulators.values(), *(w for w in self.workers if not w.killed)]:
            if not process.guarded.running():
                return f"{process.name} exited:\n{process.tail()}"
        return None

    def stop(self) -> None:
        for process in [*self.workers, *self.emulators.values()]:
            process.guarded.stop()
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
