"""``make run``: the app on http://localhost:7071/api/... with whatever local services it still needs.

    python -m devtools.localhost.run [--host auto|func|runner] [--port 7071]

Settings: the environment, then ``local.settings.json`` (the environment wins). Azurite and the
bundled emulators start only for endpoints those settings leave unset (see devtools.localhost.stack), so the
same command runs against real services. The app then runs under ``func start`` when Azure Functions
Core Tools is installed, otherwise under the local runner (devtools.localhost.runner). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import requests

from .guard import Guarded, spawn_guarded
from .http_host import compile_route
from .runner import ROOT, STARTUP_ERRORS, LocalRunner
from .settings_loader import SETTINGS_FILE, local_http_port, merge_settings
from .stack import Stack, masked

# The Partner Center webhook is the one route the emulator must be told about.
WEBHOOK_FUNCTION = "partner_center_webhook"


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def _wait_ready(base_url: str, process: Guarded | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running():
            return False
        try:
            # Core Tools may want a key for admin APIs; any answer but "initializing" means it is up.
            if requests.get(f"{base_url}/admin/host/status", timeout=2).status_code in (200, 401, 403):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False


def webhook_url(runner: LocalRunner, base_url: str) -> str | None:
    """The webhook's URL from the app's own route registration."""
    assert runner.config is not None
    for function in runner.functions:
        if function.name == WEBHOOK_FUNCTION:
            return base_url + compile_route(function, runner.config.route_prefix).template
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.localhost.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host",
        choices=("auto", "func", "runner"),
        default="auto",
        help="auto: func when Core Tools is installed, else the local runner",
    )
    parser.add_argument("--port", type=int, default=None, help="default Host.LocalHttpPort or 7071")
    parser.add_argument(
        "--settings-file", default=None, help=f"settings under the environment (default: ./{SETTINGS_FILE} of the repo)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stdout)
    logging.getLogger("azure").setLevel(logging.WARNING)

    settings_file = Path(args.settings_file) if args.settings_file else ROOT / SETTINGS_FILE
    settings = merge_settings(os.environ, settings_file)
    port = args.port or local_http_port(settings_file)
    use_func = args.host == "func" or (args.host == "auto" and shutil.which("func") is not None)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    say(f"settings: environment, then {settings_file.name if settings_file.exists() else '(no local.settings.json)'}")
    stack = Stack(settings, progress=say)
    func_host: Guarded | None = None
    runner: LocalRunner | None = None
    try:
        stack.start()
        for name, value in sorted(stack.written.items()):
            say(f"  {name} = {masked(name, value)}")
        # The in-process runner only adds settings missing from the environment; what the stack wrote over a
        # value from the environment (a setting its emulator depends on) must win there too, as it does
        # for func, which gets the environment with the settings on top.
        os.environ.update(stack.written)
        base = f"http://127.0.0.1:{port}"
        # The app reads its settings at import; in-process runner and func child both see these.
        if use_func:
            func_host = _start_func(stack.settings, port)
            if not _wait_ready(base, func_host, timeout=120):
                say("func start did not become ready; see its output above")
                return 1
        runner = LocalRunner(ROOT, stack.settings, "127.0.0.1", port)
        runner.load()  # also gives the webhook route when func serves the app
        if not use_func:
            runner.start()
        url = webhook_url(runner, base)
        if url and stack.partner_center is not None:
            stack.register_webhook(url)
        say("ready; press Ctrl-C to stop")
        while not done.wait(0.5):
            if func_host is not None and not func_host.running():
                say("func exited")
                return 1
        return 0
    except STARTUP_ERRORS as exc:
        say(f"cannot start: {exc}")
        return 2
    except Exception as exc:  # e.g. the app's SettingsError: one readable line, not a traceback
        say(f"cannot start: {type(exc).__name__}: {exc}")
        return 2
    finally:
        say("stopping...")
        if runner is not None and not use_func:
            runner.stop()
        if func_host is not None:
            func_host.stop()
        stack.stop()


def _start_func(settings: dict[str, str], port: int) -> Guarded:
    venv_bin = str(ROOT / ".venv" / "bin")
    # Core Tools runs the Python worker with the python found on PATH: the project venv comes first,
    # as if it had been activated.
    env = {**os.environ, **settings, "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")])}
    env["VIRTUAL_ENV"] = str(ROOT / ".venv")
    say(f"starting func start --port {port}")
    return spawn_guarded(["func", "start", "--port", str(port)], "func", env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
