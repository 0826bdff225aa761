"""One worker of the chaos run: the real ``function_app.py`` under the local runner, in a process of its own.

    python -m devtools.chaos.worker --name worker-1 [--port 0] [--lease-seconds 10]

It serves what the app registered (the webhook route, the ``sync-jobs`` queue with the host.json semantics
and, unless disabled by ``AzureWebJobs.<name>.Disabled``, the timers), with its settings taken from the
environment as the Functions host gives app settings. Two things differ from ``make run``:

* a message being processed stays invisible for ``--lease-seconds`` instead of the host's ten minutes, so
  the job of a worker killed mid-flight comes back within the run (the host's crash recovery, compressed);
* ``CHAOS_BREAK`` can switch on one deliberately wrong behaviour, to prove the run's checks can fail
  (see :data:`BREAKS`).

It prints ``chaos-worker NAME pid PID port PORT`` once it serves, and logs every function invocation
(``Executing 'Functions.sync_worker'`` / ``Executed ...``), which is how the run knows a job is in flight.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from devtools.localhost.appload import LoadedFunction
from devtools.localhost.queue_listener import QueueListener
from devtools.localhost.runner import LocalRunner

ROOT = Path(__file__).resolve().parents[2]
BREAK_SETTING = "CHAOS_BREAK"
BREAKS = {
    "blind-create": "the lookup before creating a referral never finds one, so a lost answer makes a second one",
    "drop-pc-changes": "deal value changes from Partner Center are never written to the CRM",
}


class ChaosRunner(LocalRunner):
    def __init__(self, settings: dict[str, str], port: int, lease_seconds: float) -> None:
        super().__init__(ROOT, settings, "127.0.0.1", port)
        self.lease_seconds = lease_seconds

    def _queue_listener(self, function: LoadedFunction) -> QueueListener:
        listener = super()._queue_listener(function)
        # Set after construction: the listener's own floor (30 s) is right for development, too slow here.
        listener.lease_seconds = int(self.lease_seconds)
        return listener


def apply_break(name: str) -> None:
    """Switch on one deliberately wrong behaviour of the app in this process."""
    if not name:
        return
    if name == "blind-create":
        from shared.sync.referral_creation import ReferralCreator

        def never_found(self: Any, crm_id: str) -> None:
            return None

        ReferralCreator.partner_referral = never_found  # type: ignore[assignment,method-assign]
    elif name == "drop-pc-changes":
        from shared.sync import merging

        original = merging.plan_merge

        def without_deal_value(*args: Any, **kwargs: Any) -> Any:
            plan = original(*args, **kwargs)
            if "deal_value" in plan.to_crm:
                plan.to_crm.remove("deal_value")
            return plan

        merging.plan_merge = without_deal_value  # type: ignore[assignment]
    else:
        raise SystemExit(f"{BREAK_SETTING}={name!r} is not one of {', '.join(BREAKS)}")
    logging.getLogger("devtools.chaos").warning("deliberately broken: %s", BREAKS[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s] %(threadName)s %(name)s %(message)s", stream=sys.stdout
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    apply_break(os.environ.get(BREAK_SETTING, ""))
    runner = ChaosRunner(dict(os.environ), args.port, args.lease_seconds)
    runner.load()
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    print(f"chaos-worker {args.name} pid {os.getpid()} port {runner.port}", flush=True)
    while not done.wait(0.5):
        pass
    runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
