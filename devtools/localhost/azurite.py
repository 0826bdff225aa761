"""Start Azurite (from the project's node_modules) on free ports and build its connection string."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Azurite's documented development account; it is public and only valid against the emulator.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, deadline: float, process: subprocess.Popen) -> bool:
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def dev_connection_string(blob: int, queue: int, table: int) -> str:
    """The connection string of Azurite's development account on these local ports."""
    host = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"BlobEndpoint={host}:{blob}/{DEV_ACCOUNT};"
        f"QueueEndpoint={host}:{queue}/{DEV_ACCOUNT};"
        f"TableEndpoint={host}:{table}/{DEV_ACCOUNT};"
    )


@dataclass
class Azurite:
    process: subprocess.Popen
    blob_port: int
    queue_port: int
    table_port: int
    workdir: str

    @property
    def connection_string(self) -> str:
        return dev_connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise RuntimeError("Azurite is not installed: run 'npm install' in the project folder (make test does it)")


def azurite_command(blob: int, queue: int, table: int) -> list[str]:
    """In memory, quiet, no telemetry, on the given ports."""
    return [
        azurite_binary(),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
        "--disableTelemetry",
        "--blobPort",
        str(blob),
        "--queuePort",
        str(queue),
        "--tablePort",
        str(table),
    ]


def start_azurite(timeout: float = 30.0) -> Azurite:
    """Start blob, queue and table services on free ports, in memory, in their own process group."""
    workdir = tempfile.mkdtemp(prefix="azurite-")
    blob, queue, table = free_port(), free_port(), free_port()
    cmd = azurite_command(blob, queue, table)
    log = open(os.path.join(workdir, "azurite.log"), "wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    azurite = Azurite(process, blob, queue, table, workdir)
    deadline = time.monotonic() + timeout
    if not all(_wait_for_port(p, deadline, process) for p in (blob, queue, table)):
        err = Path(workdir, "azurite.log").read_text(errors="replace")[-2000:]
        azurite.stop()
        raise RuntimeError(f"Azurite did not start within {timeout}s {err}")
    return azurite
