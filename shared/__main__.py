"""Operator commands: ``python -m shared <command>`` (each has --help)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import wiring
from .domain.errors import ExternalServiceError
from .settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from .crm.mapping import CrmMapping, Loaded

log = logging.getLogger(__name__)


def _status(args: argparse.Namespace) -> int:
    from .sync.job_runner import health_status
    from .sync.status import build_status

    c = wiring.container()
    print(json.dumps(build_status(c.store, c.queue, c.settings.credential_modes(), health_status(c.jobs)), indent=2))
    return 0


def _since(text: str) -> datetime:
    """``--since``: an ISO 8601 date or date-time, read as UTC when it has no offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or date-time (e.g. 2024-05-01 or 2024-05-01T08:30:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _backfill(args: argparse.Namespace) -> int:
    if args.source == "partner-center":
        return _backfill_from_partner_center(args)
    if args.since is not None:
        print("--since applies to --from partner-center only", file=sys.stderr)
        return 2
    from .sync.backfill import backfill_opportunities

    c = wiring.container()

    def progress(count: int) -> None:
        print(f"\renqueued {count} flagged opportunities", end="", flush=True)

    total = backfill_opportunities(c.crm, c.queue, progress)
    print(f"\ndone: {total} jobs on queue 'sync-jobs'; the worker creates or updates their referrals")
    return 0


def _backfill_from_partner_center(args: argparse.Namespace) -> int:
    from .sync.backfill import ReferralBackfill, backfill_referrals

    c = wiring.container()

    def progress(done: ReferralBackfill) -> None:
        print(f"\rread {done.read} referral(s), enqueued {done.enqueued}", end="", flush=True)

    result = backfill_referrals(
        c.partner_center.open_referrals,
        c.queue,
        since=args.since,
        cosell_only=c.settings.sync_cosell_only,
        progress=progress,
    )
    print(
        f"\n{'so far' if result.stopped else 'done'}: {result.enqueued} jobs on queue 'sync-jobs' from "
        f"{result.read} referral(s) read; the worker creates their opportunities (a referral already linked to one "
        "is a no-op)"
    )
    if result.skipped:
        print("left out: " + ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())))
    return _stopped_early(
        result.stopped, "The jobs enqueued stay; run the backfill again (what is already linked is a no-op)."
    )


def _reconcile(args: argparse.Namespace) -> int:
    result = wiring.container().reconciler.poll()
    print(f"{result.seen} referral(s) changed since the last run, {result.enqueued} job(s) enqueued")
    wait = f" (it asks to wait {result.retry_after:.0f}s)" if result.retry_after is not None else ""
    why = f"Partner Center is throttling{wait}: {result.throttled}" if result.throttled else ""
    return _stopped_early(why, "What was read is enqueued and remembered; run reconcile again later to read the rest.")


def _stopped_early(why: str, what_now: str) -> int:
    """Exit 1 with ``why`` and what to do, when a command stopped part way; 0 otherwise."""
    if not why:
        return 0
    print(f"stopped early: {why}. {what_now}", file=sys.stderr)
    return 1


def _replay_poison(args: argparse.Namespace) -> int:
    done = wiring.container().queue.replay_poison(max(0, args.limit))
    for text in done.dropped:
        print(f"dropped unreadable message: {text[:200]}", file=sys.stderr)
    dropped = len(done.dropped)
    print(
        f"replayed {len(done.replayed)} job(s) from 'sync-jobs-poison'"
        + (f", dropped {dropped} unreadable" if dropped else "")
    )
    return 0


def _poison_list(args: argparse.Namespace) -> int:
    from .poison_report import poison_rows, render_table

    c = wiring.container()
    rows = poison_rows(c.queue.list_poison(), c.store)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_table(rows))
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from .partner_center.bodies import microsoft_referral_body, partner_referral_body

    dry_run = wiring.container().dry_run
    preview = dry_run.opportunity(args.crm_id) if args.crm_id else dry_run.referral(args.referral_id)
    shown: dict[str, object] = {
        "dryRun": "nothing was written",
        "direction": preview.direction,
        "action": preview.action,
        "message": preview.message,
        "referralId": preview.referral_id,
        "crmId": preview.crm_id,
    }
    if preview.action == "merge" or preview.to_crm or preview.notes:
        shown.update(toCrm=preview.to_crm, toPartnerCenter=preview.to_pc, notes=preview.notes)
    if preview.new_opportunity is not None:
        shown["opportunity"] = preview.new_opportunity.model_dump(mode="json", exclude_none=True)
    if preview.referral_source is not None:
        body = partner_referral_body(preview.referral_source)
        shown["referralBody"] = body
        if preview.referral_source.help_code:
            shown["microsoftReferralBody"] = microsoft_referral_body(body, "<the new referral's engagement>")
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def _register_webhook(args: argparse.Namespace) -> int:
    from .partner_center.auth import WEBHOOKS_SCOPE, partner_center_token_provider
    from .partner_center.registration import WebhookRegistrationClient

    s = load_settings(partner_center_only=True)
    client = WebhookRegistrationClient(
        s.partner_center_webhook_api_url,
        partner_center_token_provider(wiring.partner_center_credentials(s), WEBHOOKS_SCOPE),
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


def _login(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .partner_center.login import device_code_sign_in, store_in_file

    # Only what sign-in needs: the app's other settings may not exist on an operator's machine yet.
    tenant = args.tenant or os.environ.get("PARTNER_CENTER_TENANT_ID")
    client = args.client_id or os.environ.get("PARTNER_CENTER_CLIENT_ID")
    if not tenant or not client:
        print("set PARTNER_CENTER_TENANT_ID and PARTNER_CENTER_CLIENT_ID (or --tenant/--client-id)", file=sys.stderr)
        return 2
    authority = os.environ.get("PARTNER_CENTER_AUTHORITY", "https://login.microsoftonline.com")
    result = device_code_sign_in(
        authority,
        tenant,
        client,
        lambda text: print(text, flush=True),
        client_secret=os.environ.get("PARTNER_CENTER_CLIENT_SECRET") or None,
    )
    vault_uri = args.key_vault_uri or os.environ.get("KEY_VAULT_URI")
    if vault_uri:
        from .partner_center.keyvault import KeyVaultSecrets

        KeyVaultSecrets(vault_uri).set_secret(args.secret_name, result.refresh_token)
        print(f"Signed in. The refresh token is stored in Key Vault as '{args.secret_name}'; restart the app.")
        return 0
    target = store_in_file(result.refresh_token, Path(args.output) if args.output else None)
    print(
        f"Signed in. The refresh token is in {target} (readable only by you), where local commands find it; "
        "for the app, store it in Key Vault as the secret the app setting PARTNER_CENTER_REFRESH_TOKEN refers to."
    )
    return 0


def _mapping_settings() -> tuple[Settings, Loaded[CrmMapping]]:
    settings = load_settings(crm_only=True)
    return settings, wiring.load_crm_mapping(settings)


def _mapping_show(args: argparse.Namespace) -> int:
    from .crm.mapping import to_toml

    _, loaded = _mapping_settings()
    print(to_toml(loaded), end="")
    return 0


def _crm_configured(s: Settings) -> str | None:
    """None when the CRM can be reached with the settings there are, else what is missing."""
    if s.crm_provider == "salesforce":
        if s.salesforce_access_token or (s.salesforce_client_id and (s.salesforce_login_url or s.salesforce_token_url)):
            return None
        return "SALESFORCE_LOGIN_URL and SALESFORCE_CLIENT_ID (or SALESFORCE_ACCESS_TOKEN) are not set"
    return None if s.dataverse_url else "DATAVERSE_URL is not set"


def _mapping_check(args: argparse.Namespace) -> int:
    settings, loaded = _mapping_settings()
    source = f"{settings.crm_mapping_file} over the defaults" if settings.crm_mapping_file else "the shipped defaults"
    print(f"mapping for {settings.crm_provider}: valid ({source})")
    missing = _crm_configured(settings)
    if missing:
        print(f"the CRM was not checked: {missing}")
        return 0
    problems = wiring.build_crm(settings, loaded.mapping).check_mapping()  # type: ignore[attr-defined]
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) with the CRM's metadata", file=sys.stderr)
        return 1
    print("every mapped column exists in the CRM with a fitting type and values")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description="Co-sell connector operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="sync counts, queue and poison depth, last poll, credential modes")
    status.set_defaults(run=_status)
    backfill = commands.add_parser(
        "backfill",
        help="day-one load: enqueue every flagged CRM opportunity, or every open Partner Center referral, once",
        description=(
            "Day-one load. --from crm (the default) enqueues every CRM opportunity flagged 'Sync with Partner "
            "Center'; --from partner-center enqueues every open referral of the partner in Partner Center (New or "
            "Active; never Microsoft's copy of an engagement; only co-sell opportunities while SYNC_COSELL_ONLY is "
            "on), optionally only those updated since --since. One job each on 'sync-jobs', progress every 100. "
            "Safe to run again: every record is enqueued again, and one already linked and unchanged is a no-op for "
            "the worker (no second record, nothing written to either side)."
        ),
    )
    backfill.add_argument(
        "--from",
        dest="source",
        choices=("crm", "partner-center"),
        default="crm",
        help="where to read the records from (default: crm)",
    )
    backfill.add_argument(
        "--since",
        type=_since,
        metavar="DATE",
        help="with --from partner-center: only referrals updated at or after this ISO 8601 date or date-time "
        "(UTC unless it has an offset), e.g. 2024-05-01 or 2024-05-01T08:30:00Z",
    )
    backfill.set_defaults(run=_backfill)
    reconcile = commands.add_parser("reconcile", help="enqueue referrals changed since the last reconciliation")
    reconcile.set_defaults(run=_reconcile)
    replay = commands.add_parser("replay-poison", help="move jobs from 'sync-jobs-poison' back to 'sync-jobs'")
    replay.add_argument("--limit", type=int, default=0, help="replay at most N jobs (0: all)")
    replay.set_defaults(run=_replay_poison)
    poison = commands.add_parser("poison", help="the jobs in 'sync-jobs-poison': list or replay them")
    poison_commands = poison.add_subparsers(dest="poison_command", required=True)
    listing = poison_commands.add_parser(
        "list", help="each poisoned job: kind, record, when it was poisoned, the record's last error"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_poison_list)
    poison_replay = poison_commands.add_parser("replay", help="the same as replay-poison")
    poison_replay.add_argument("--limit", type=int, default=0, help="replay at most N jobs (0: all)")
    poison_replay.set_defaults(run=_replay_poison)
    dry_run = commands.add_parser(
        "dry-run", help="what syncing one record would send to each side, without writing anything anywhere"
    )
    record = dry_run.add_mutually_exclusive_group(required=True)
    record.add_argument("--crm-id", help="a CRM opportunity id")
    record.add_argument("--referral-id", help="a Partner Center referral id")
    dry_run.set_defaults(run=_dry_run)
    register = commands.add_parser("register-webhook", help="register this app's webhook URL with Partner Center")
    register.add_argument("--url", help="https://<app>.azurewebsites.net/api/webhooks/partner-center")
    register.add_argument("--show", action="store_true", help="print the current registration and exit")
    register.add_argument(
        "--ms-signature-header",
        action="store_true",
        help="ask Partner Center to send the signature in x-ms-signature instead of Authorization",
    )
    register.set_defaults(run=_register_webhook)
    mapping = commands.add_parser("mapping", help="the CRM field mapping: show it, or check it against the CRM")
    mapping_commands = mapping.add_subparsers(dest="mapping_command", required=True)
    show = mapping_commands.add_parser(
        "show", help="print the effective mapping (defaults, CRM_MAPPING_FILE, settings) as TOML, overrides marked"
    )
    show.set_defaults(run=_mapping_show)
    check = mapping_commands.add_parser(
        "check", help="validate the mapping, and check every mapped column against the CRM's metadata when reachable"
    )
    check.set_defaults(run=_mapping_check)
    login = commands.add_parser("login", help="sign in to Partner Center as a Referrals admin (device code)")
    login.add_argument("--tenant", help="Partner Center tenant id (default: PARTNER_CENTER_TENANT_ID)")
    login.add_argument("--client-id", help="Entra application id (default: PARTNER_CENTER_CLIENT_ID)")
    login.add_argument("--key-vault-uri", help="store the refresh token in this vault (default: KEY_VAULT_URI)")
    login.add_argument("--secret-name", default="partner-center-refresh-token", help="Key Vault secret name")
    login.add_argument(
        "--output", help="file for the token when no vault is given (default: refresh-token.txt in your config folder)"
    )
    login.set_defaults(run=_login)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ExternalServiceError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
