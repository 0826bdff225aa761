"""Run a child process that cannot outlive the process that started it.

``spawn_guarded(cmd)`` starts ``python -m devtools.localhost.guard CMD...`` with a pipe on its stdin. The guard
runs CMD in a process group of its own and stops that whole group as soon as

* the pipe reaches end-of-file: the parent exited or was killed, even with SIGKILL, because the OS
  closes a dead process's file descriptors;
* the guard receives SIGTERM or SIGINT (the parent's orderly shutdown);
* CMD exits by itself (the guard then exits with CMD's status).

On Linux the child also gets SIGTERM should the guard itself be killed outright.

A killed demo or runner therefore leaves no Azurite or runner behind, on Linux and macOS alike,
without relying on Linux-only parent-death signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_SECONDS = 5.0


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(timeout=STOP_GRACE_SECONDS)


def _die_with(guard_pid: int) -> Callable[[], None] | None:
    """On Linux, have the child receive SIGTERM if the guard itself dies, even by SIGKILL.

    Elsewhere only the pipe watch applies; a guard killed outright is the one case it cannot cover.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != guard_pid:  # the guard died before prctl took effect
            os._exit(1)

    return set_parent_death_signal


def _guard(cmd: list[str]) -> int:
    stop = threading.Event()
    # Started before any thread exists (preexec_fn is unsafe with threads) and from the main thread,
    # which lives as long as the guard: Linux sends the parent-death signal when that thread ends.
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with(os.getpid()))

    def watch_stdin() -> None:
        # An empty read means end-of-file: the parent closed the pipe or died. os.read on the raw
        # descriptor, because a daemon thread blocked in a buffered read aborts interpreter shutdown.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        finally:
            stop.set()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()
    while not stop.wait(0.2):
        if child.poll() is not None:
            # The child may have left grandchildren in its group; they go with it.
            _stop_group(child)
            return child.returncode
    _stop_group(child)
    return 0 if child.returncode is None else child.returncode


@dataclass
class Guarded:
    """A guarded child: ``stop()`` ends it and everything it started."""

    process: subprocess.Popen[bytes]
    name: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self.process.stdin:
            self.process.stdin.close()


def spawn_guarded(
    cmd: list[str],
    name: str,
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    output: IO[bytes] | int | None = None,
) -> Guarded:
    """Start ``cmd`` under a guard in its own process group; its output goes to ``output``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.localhost.guard", *cmd],
        stdin=subprocess.PIPE,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        env={**(env if env is not None else os.environ), "PYTHONPATH": _pythonpath(env)},
        cwd=cwd,
        start_new_session=True,
    )
    return Guarded(process, name)


def _pythonpath(env: dict[str, str] | None) -> str:
    # The guard module must be importable whatever the child's working directory is.
    existing = (env if env is not None else os.environ).get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(ROOT), existing) if p)


def main(argv: list[str] | None = None) -> int:
    cmd = list(sys.argv[1:] if argv is None else argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("usage: python -m devtools.localhost.guard CMD [ARGS...]", file=sys.stderr)
        return 2
    return _guard(cmd)


if __name__ == "__main__":
    sys.exit(main())
