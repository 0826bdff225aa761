"""Local runner: serves a Python v2 function app without Azure Functions Core Tools.

A development tool only; production runs on the Functions host. It imports the real
``function_app.py`` and serves what the app registered (HTTP routes, queue triggers, timer schedules,
``%SETTING%`` expressions resolved from app settings), with the host.json queue semantics.

    python -m devtools.localhost.runner [serve] [--app-dir DIR] [--port 7071] [--settings-file FILE]
    python -m devtools.localhost.runner fire NAME [--input TEXT] [--url http://localhost:7071]

Settings come from the environment, then ``local.settings.json`` (the environment wins). ``fire``
asks a running runner to run a timer (or queue) function now, through the host's admin endpoint
``POST /admin/functions/NAME``, which works against ``func start`` too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import requests
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.functions.queue import QueueMessage

from shared.schedule import ScheduleError
from shared.schedule import parse as parse_schedule

from .appload import AppLoadError, Invocation, LoadedFunction, import_app, invoke, load_functions
from .hostconfig import HostConfig, HostConfigError, load_host_config
from .http_host import HttpHost, compile_route
from .queue_listener import QueueConnectionError, QueueListener, encode_message, queue_client, trigger_value
from .settings_loader import SETTINGS_FILE, LocalSettingsError, local_http_port, merge_settings, resolve
from .timer_listener import TimerListener

log = logging.getLogger("devtools.localhost.runner")
ROOT = Path(__file__).resolve().parents[2]
STARTUP_ERRORS = (AppLoadError, HostConfigError, LocalSettingsError, QueueConnectionError, ScheduleError)


class LocalRunner:
    def __init__(self, app_dir: Path, settings: dict[str, str], host: str = "127.0.0.1", port: int = 7071) -> None:
        self.app_dir = app_dir.resolve()
        self.settings = settings
        self.host = host
        self.port = port
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.functions: list[LoadedFunction] = []
        self.config: HostConfig | None = None
        self.http: HttpHost | None = None
        self.queues: list[QueueListener] = []
        self.timers: dict[str, TimerListener] = {}
        self._server_thread: threading.Thread | None = None

    # -- start-up ------------------------------------------------------------------------------------
    def load(self) -> None:
        # App settings are environment variables on the host; the app reads them at import time.
        for name, value in self.settings.items():
            os.environ.setdefault(name, value)
        self.config = load_host_config(self.app_dir, self.settings)
        app = import_app(self.app_dir, self.settings.get("PYTHON_SCRIPT_FILE_NAME") or "function_app.py")
        self.functions = load_functions(app, self.settings)

    def start(self) -> None:
        assert self.config is not None, "load() first"
        routes = []
        for function in self.functions:
            kind = function.trigger_type
            if kind == "httpTrigger":
                routes.append(compile_route(function, self.config.route_prefix))
            elif kind == "queueTrigger":
                self.queues.append(self._queue_listener(function))
            elif kind == "timerTrigger":
                schedule = parse_schedule(resolve(str(function.trigger["schedule"]), self.settings))
                self.timers[function.name] = TimerListener(function, schedule, self.run_function, self.stop_event)
        self.http = HttpHost(routes, self.functions, self.run_function, self.fire, self.ready.is_set)
        server = self.http.start(self.host, self.port)
        self.port = server.server_address[1]
        self._server_thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._server_thread.start()
        for listener in [*self.queues, *self.timers.values()]:
            listener.start()
        self._print_functions(routes)
        self.ready.set()
        print(f"Host started: http://localhost:{self.port} (local runner; auth levels not enforced)", flush=True)

    def _queue_listener(self, function: LoadedFunction) -> QueueListener:
        assert self.config is not None
        name = resolve(str(function.trigger["queueName"]), self.settings)
        connection = function.trigger.get("connection")
        client = queue_client(self.settings, connection, name)
        poison = queue_client(self.settings, connection, f"{name}-poison")
        lease = max(self.config.function_timeout or 0, 600)
        return QueueListener(function, client, poison, self.config.queues, self.run_function, self.stop_event, lease)

    def _print_functions(self, routes: list[Any]) -> None:
        lines = ["", "Functions:", ""]
        for route in routes:
            methods = ",".join(sorted(route.methods)) or "ANY"
            lines.append(f"\t{route.function.name}: [{methods}] http://localhost:{self.port}{route.template}")
        for listener in self.queues:
            lines.append(f"\t{listener.function.name}: queueTrigger ({listener.client.queue_name})")
        for name, timer in self.timers.items():
            upcoming = f"{timer.next_occurrence():%Y-%m-%d %H:%M:%S}Z"
            lines.append(f"\t{name}: timerTrigger ({timer.schedule.expression}; next {upcoming})")
        print("\n".join(lines) + "\n", flush=True)

    # -- invoking --------------------------------------------------------------------------------------
    def run_function(self, function: LoadedFunction, value: Any, reason: str) -> Invocation:
        outcome = invoke(function, value, reason)
        if not outcome.succeeded:
            return outcome
        for binding in function.outputs:
            if binding.get("type") != "queue":
                continue
            produced = outcome.outputs.get(binding["name"])
            if produced is None:
                continue
            try:
                self._send(binding, produced if isinstance(produced, list) else [produced])
            except (AzureError, QueueConnectionError, LocalSettingsError) as exc:
                # On the host a failed output binding fails the invocation (and so retries a queue message).
                log.error("Functions.%s: queue output '%s' failed: %s", function.name, binding["name"], exc)
                return Invocation(False, error=exc)
        return outcome

    def _send(self, binding: dict[str, Any], values: list[Any]) -> None:
        assert self.config is not None
        name = resolve(str(binding["queueName"]), self.settings)
        client = queue_client(self.settings, binding.get("connection"), name)
        try:
            client.create_queue()  # the host's queue output binding creates a missing queue too
        except ResourceExistsError:
            pass
        for value in values:
            client.send_message(encode_message(value, self.config.queues.message_encoding))

    def fire(self, name: str, input_text: str) -> tuple[int, dict[str, Any]]:
        """Run a timer or queue function now, in the background, as the host's admin API does."""
        function = next((f for f in self.functions if f.name.lower() == name.lower()), None)
        if function is None:
            return 404, {"error": f"no function named {name}"}
        reason = "This function was programmatically called via the host APIs."
        if function.trigger_type == "timerTrigger":
            timer = self.timers[function.name]

            def job() -> Any:
                return timer.fire(past_due=False, reason=reason)
        elif function.trigger_type == "queueTrigger":
            message = QueueMessage(id=str(uuid.uuid4()), body=input_text.encode("utf-8"), dequeue_count=1)

            def job() -> Any:
                return self.run_function(function, trigger_value(function, message), reason)
        else:
            return 400, {"error": f"{function.name} is an HTTP function: call its route instead"}
        threading.Thread(target=job, name=f"fire-{function.name}", daemon=True).start()
        return 202, {"status": "accepted", "function": function.name}

    # -- shutdown ----------------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.http and self.http.server:
            self.http.server.shutdown()
            self.http.server.server_close()
        for listener in [*self.queues, *self.timers.values()]:
            listener.join(timeout)


# -- command line ------------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(asctime)s] %(message)s",
        stream=sys.stdout,
    )
    # The Storage SDK logs every HTTP request at INFO; the host filters those out as well.
    logging.getLogger("azure").setLevel(logging.WARNING)
    app_dir = Path(args.app_dir).resolve()
    settings_file = Path(args.settings_file) if args.settings_file else app_dir / SETTINGS_FILE
    try:
        settings = merge_settings(os.environ, settings_file)
        port = args.port if args.port is not None else local_http_port(settings_file)
        runner = LocalRunner(app_dir, settings, args.host, port)
        runner.load()
    except STARTUP_ERRORS as exc:
        print(f"local runner: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the app's own start-up error (e.g. a missing setting) must read clearly
        print(f"local runner: the function app failed to load: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("local runner: 'make run' starts Azurite and the emulators for endpoints left unset", file=sys.stderr)
        if args.verbose:
            raise
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.start()
    except (*STARTUP_ERRORS, OSError) as exc:
        print(f"local runner: {exc}", file=sys.stderr)
        runner.stop()
        return 2
    while not done.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    print("Stopping the local runner...", flush=True)
    runner.stop()
    return 0


def _fire(args: argparse.Namespace) -> int:
    url = f"{args.url.rstrip('/')}/admin/functions/{args.name}"
    try:
        response = requests.post(url, json={"input": args.input}, timeout=10)
    except requests.RequestException as exc:
        print(f"cannot reach the runner at {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{response.status_code} {response.text}")
    return 0 if response.status_code == 202 else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m devtools.localhost.runner", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve the function app (the default)")
    serve.add_argument("--app-dir", default=str(ROOT), help="folder holding function_app.py and host.json")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (loopback by default)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port; default Host.LocalHttpPort or 7071")
    serve.add_argument("--settings-file", default=None, help="default: <app-dir>/local.settings.json")
    serve.add_argument("--verbose", action="store_true", help="debug logs and full tracebacks")
    fire = commands.add_parser("fire", help="run a timer or queue function now on a running runner or func host")
    fire.add_argument("name", help="function name, e.g. poll_crm")
    fire.add_argument("--input", default="", help="queue functions: the message text")
    fire.add_argument("--url", default="http://localhost:7071", help="base URL of the running host")
    if not argv or argv[0] not in ("serve", "fire", "-h", "--help"):
        argv.insert(0, "serve")
    args = parser.parse_args(argv)
    return _fire(args) if args.command == "fire" else _serve(args)


if __name__ == "__main__":
    sys.exit(main())
