"""Operator commands: ``python -m shared <command>`` (each has --help)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import wiring
from .settings import SettingsError


def _status(args: argparse.Namespace) -> int:
    from .sync.status import build_status

    c = wiring.container()
    print(json.dumps(build_status(c.store, c.queue, c.settings.credential_modes()), indent=2))
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from .sync.poller import backfill

    c = wiring.container()

    def progress(count: int) -> None:
        print(f"\renqueued {count} flagged opportunities", end="", flush=True)

    total = backfill(c.crm, c.queue, progress)
    print(f"\ndone: {total} jobs on queue 'sync-jobs'; the worker creates or updates their referrals")
    return 0


def _replay_poison(args: argparse.Namespace) -> int:
    c = wiring.container()
    replayed = dropped = 0
    for raw, job in c.queue.drain_poison():
        if job is None:
            dropped += 1
            print(f"dropped unreadable message: {raw[:200]}", file=sys.stderr)
            continue
        c.queue.enqueue(job)
        replayed += 1
        if args.limit and replayed >= args.limit:
            break
    print(
        f"replayed {replayed} job(s) from 'sync-jobs-poison'" + (f", dropped {dropped} unreadable" if dropped else "")
    )
    return 0


def _register_webhook(args: argparse.Namespace) -> int:
    from .partner_center.auth import WEBHOOKS_SCOPE, partner_center_token_provider
    from .partner_center.registration import WebhookRegistrationClient

    s = wiring.container().settings
    client = WebhookRegistrationClient(
        s.partner_center_webhook_api_url,
        partner_center_token_provider(s, WEBHOOKS_SCOPE),
        timeout=s.http_timeout_seconds,
    )
    if args.show:
        print(json.dumps(client.current(), indent=2))
        return 0
    if not args.url:
        print("--url is required (the webhookUrl output of the deployment)", file=sys.stderr)
        return 2
    result = client.register(args.url, signature_in_ms_header=args.ms_signature_header)
    print(json.dumps(result, indent=2))
    print("Registered. Partner Center sends each referral event to this URL only (the latest registration wins).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description="Co-sell connector operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="sync counts, queue and poison depth, last poll, credential modes")
    status.set_defaults(run=_status)
    backfill = commands.add_parser("backfill", help="enqueue every opportunity flagged 'Sync with Partner Center' once")
    backfill.set_defaults(run=_backfill)
    replay = commands.add_parser("replay-poison", help="move jobs from 'sync-jobs-poison' back to 'sync-jobs'")
    replay.add_argument("--limit", type=int, default=0, help="replay at most N jobs (0: all)")
    replay.set_defaults(run=_replay_poison)
    register = commands.add_parser("register-webhook", help="register this app's webhook URL with Partner Center")
    register.add_argument("--url", help="https://<app>.azurewebsites.net/api/webhooks/partner-center")
    register.add_argument("--show", action="store_true", help="print the current registration and exit")
    register.add_argument(
        "--ms-signature-header",
        action="store_true",
        help="ask Partner Center to send the signature in x-ms-signature instead of Authorization",
    )
    register.set_defaults(run=_register_webhook)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
