"""Operator commands: ``cosell <command>``, or ``python -m shared <command>`` (each has --help).

Settings come from the environment, then ``local.settings.json`` in the current folder (``--settings FILE``), as for
``make run``. Each command asks only for the settings it uses: ``status``, ``history``, ``poison`` and
``replay-poison`` need the storage account alone, ``reconcile`` storage and Partner Center.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import wiring
from .cli_table import Command, add_commands, arg
from .domain.errors import ExternalServiceError
from .local_settings import SETTINGS_FILE, LocalSettingsError, apply_local_settings
from .settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from .crm.mapping import CrmMapping, Loaded

log = logging.getLogger(__name__)


def _storage_container() -> wiring.Container:
    """Storage alone: the commands that read the tables and queues run before the CRM or Partner Center is set up."""
    return wiring.Container(load_settings(storage_only=True))


def _status(args: argparse.Namespace) -> int:
    from .console.status_report import current_status

    print(json.dumps(current_status(_storage_container()), indent=2))
    return 0


def _history(args: argparse.Namespace) -> int:
    from .audit_history import record_trail, render

    link, entries = record_trail(_storage_container().store, args.record_id, max(1, args.limit))
    print(render(args.record_id, link, entries))
    return 0 if entries or link is not None else 1


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
    c = wiring.Container(load_settings(storage_and_partner_center=True))
    if args.since is not None:
        from .sync.reread import reconcile_since

        result = reconcile_since(c.partner_center, c.queue, args.since)
        print(
            f"{result.seen} referral(s) changed since {args.since.isoformat()}, {result.enqueued} job(s) enqueued; "
            "the scheduled reconciliation's watermark is unchanged"
        )
        why = f"Partner Center is throttling: {result.throttled}" if result.throttled else ""
        return _stopped_early(why, "What was read is enqueued; run the same command again later to read the rest.")
    result = c.reconciler.poll()
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
    done = _storage_container().queue.replay_poison(max(0, args.limit))
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

    c = _storage_container()
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
    from .partner_center.auth import WEBHOOKS_SCOPE
    from .partner_center.registration import REGISTERED_EVENTS, TEST_EVENT, WebhookRegistrationClient
    from .sync import webhook_setup

    s = load_settings(partner_center_only=True) if args.show else load_settings(storage_and_partner_center=True)
    client = WebhookRegistrationClient(
        s.partner_center_webhook_api_url,
        wiring.partner_center_token(s, WEBHOOKS_SCOPE),
        timeout=s.http_timeout_seconds,
    )
    current = client.current()
    if args.show:
        shown = current and {
            "WebhookUrl": current.url,
            "WebhookEvents": list(current.events),
            "SignatureTokenToMsSignatureHeader": current.signature_in_ms_header,
        }
        print(json.dumps(shown, indent=2))
        return 0
    if current is None:
        print("Current registration: none")
    else:
        print(f"Current registration: {current.url} (events: {', '.join(current.events) or 'none'})")
    from .store.connections import table_service
    from .store.tables import TableSyncStore

    store = TableSyncStore(table_service(wiring.storage_config(s)), s.links_table, s.state_table, s.audit_table)
    if not args.check:
        if not args.url:
            print("--url is required (the webhookUrl output of the deployment)", file=sys.stderr)
            return 2
        try:
            done = webhook_setup.register(
                client, store, args.url, REGISTERED_EVENTS, args.ms_signature_header, datetime.now(UTC), args.force
            )
        except webhook_setup.ForeignRegistration as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        verb = "Registered" if done.changed else "Already registered"
        print(f"{verb}: {done.registration.url} for {', '.join(done.registration.events)}.")
        if done.previous is not None and not webhook_setup.same_url(done.previous.url, done.registration.url):
            print(f"Replaced the registration that pointed to {done.previous.url}; it receives no more events.")
        if args.no_check:
            return 0
    elif current is None or TEST_EVENT not in current.events:
        print(f"nothing to check: the registration does not include {TEST_EVENT}; run register-webhook --url first")
        return 1
    print(f"Sending a test event; waiting up to {args.wait:g}s for the app to receive and verify it...", flush=True)
    result = webhook_setup.check_delivery(client, store, args.wait)
    print(webhook_setup.explain(result), file=sys.stdout if result.verified else sys.stderr)
    return 0 if result.verified else 1


def _login(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .partner_center.login import LoginConfig, browser_sign_in, device_code_sign_in, store_in_file

    # Only what sign-in needs: the app's other settings may not exist on an operator's machine yet.
    tenant = args.tenant or os.environ.get("PARTNER_CENTER_TENANT_ID")
    client = args.client_id or os.environ.get("PARTNER_CENTER_CLIENT_ID")
    if not tenant or not client:
        print("set PARTNER_CENTER_TENANT_ID and PARTNER_CENTER_CLIENT_ID (or --tenant/--client-id)", file=sys.stderr)
        return 2
    authority = os.environ.get("PARTNER_CENTER_AUTHORITY", "https://login.microsoftonline.com")
    config = LoginConfig(authority, tenant, client)

    def show(text: str) -> None:
        print(text, flush=True)

    result = browser_sign_in(config, show, port=args.port) if args.browser else device_code_sign_in(config, show)
    who = f" as {result.username}" if result.username else ""
    vault_uri = args.key_vault_uri or os.environ.get("KEY_VAULT_URI")
    if vault_uri:
        from .partner_center.keyvault import KeyVaultSecrets

        KeyVaultSecrets(vault_uri).set_secret(args.secret_name, result.refresh_token)
        print(f"Signed in{who}. The refresh token is stored in Key Vault as '{args.secret_name}'; restart the app.")
        return 0
    target = store_in_file(result.refresh_token, Path(args.output) if args.output else None)
    print(
        f"Signed in{who}. The refresh token is in {target} (readable only by you), where local commands find it; "
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


def _setup_crm(args: argparse.Namespace) -> int:
    """setup-crm: the CRM's custom fields, key and the integration identity's role or permission set."""
    settings, loaded = _mapping_settings()
    missing = _crm_configured(settings)
    if missing:
        print(f"cannot reach the CRM: {missing}", file=sys.stderr)
        return 2
    if settings.crm_provider == "salesforce":
        from .crm.salesforce.api import SalesforceApi
        from .crm.salesforce.setup import SalesforceSetup, SalesforceSetupConfig

        try:
            auth = wiring.salesforce_auth(settings)
        except ValueError as exc:
            print(f"cannot reach the CRM: {exc}", file=sys.stderr)
            return 2
        api = SalesforceApi(auth, settings.salesforce_api_version, timeout=settings.http_timeout_seconds)
        sf_config = SalesforceSetupConfig(
            loaded.mapping,  # type: ignore[arg-type]
            permission_set=args.permission_set,
            run_as_user=args.run_as_user or settings.salesforce_username,
        )
        report = SalesforceSetup(sf_config, api).run(args.apply)
    else:
        from .crm.dynamics.setup import DataverseSetup, DataverseSetupConfig

        dv_config = DataverseSetupConfig(
            str(settings.dataverse_url),
            settings.dataverse_api_version,
            loaded.mapping,  # type: ignore[arg-type]
            role_name=args.role,
            application_id=args.application_id or settings.dataverse_client_id,
            timeout=settings.http_timeout_seconds,
        )
        report = DataverseSetup(dv_config, wiring.dataverse_token(settings)).run(args.apply)
    for line in report.lines():
        print(line)
    if not report.ok:
        what = "could not be set up" if args.apply else "is missing (run again with --apply to create it)"
        print(f"setup-crm: something required {what}; see the lines marked above", file=sys.stderr)
    return 0 if report.ok else 1


REPLAY_LIMIT = arg("--limit", type=int, default=0, help="replay at most N jobs (0: all)")

COMMANDS = (
    Command(
        "status",
        "sync counts, queue and poison depth, last poll, credential modes",
        _status,
        description=(
            "The app's state as JSON, as /api/status shows it: links by status, queue and poison depth, the last "
            "CRM poll and reconciliation, pauses, credential problems. Needs the storage settings only."
        ),
    ),
    Command(
        "history",
        "one record's audit trail, oldest first",
        _history,
        description=(
            "Every audit entry (SyncAudit) of one record, oldest first: what each job did, which way, which fields, "
            "and why it skipped or failed. Give the CRM opportunity id or the Partner Center referral id: the "
            "entries of both ids of a linked pair are shown. Needs the storage settings only. Exits 1 when nothing "
            "is known about the id."
        ),
        args=(
            arg("record_id", metavar="crm-id|referral-id", help="a CRM opportunity id or a referral id"),
            arg("--limit", type=int, default=200, help="show at most the newest N entries (default: 200)"),
        ),
    ),
    Command(
        "backfill",
        "day-one load: enqueue every flagged CRM opportunity, or every open Partner Center referral, once",
        _backfill,
        description=(
            "Day-one load. --from crm (the default) enqueues every CRM opportunity flagged 'Sync with Partner "
            "Center'; --from partner-center enqueues every open referral of the partner in Partner Center (New or "
            "Active; never Microsoft's copy of an engagement; only co-sell opportunities while SYNC_COSELL_ONLY is "
            "on), optionally only those updated since --since. One job each on 'sync-jobs', progress every 100. "
            "Safe to run again: every record is enqueued again, and one already linked and unchanged is a no-op for "
            "the worker (no second record, nothing written to either side)."
        ),
        args=(
            arg(
                "--from",
                dest="source",
                choices=("crm", "partner-center"),
                default="crm",
                help="where to read the records from (default: crm)",
            ),
            arg(
                "--since",
                type=_since,
                metavar="DATE",
                help="with --from partner-center: only referrals updated at or after this ISO 8601 date or date-time "
                "(UTC unless it has an offset), e.g. 2024-05-01 or 2024-05-01T08:30:00Z",
            ),
        ),
    ),
    Command(
        "reconcile",
        "enqueue referrals changed since the last reconciliation, or since --since",
        _reconcile,
        description=(
            "Run the hourly reconciliation now: one job per referral Partner Center changed since the last run. "
            "With --since DATE, every referral changed since DATE instead (after an outage longer than the "
            "reconciliation's overlap, or webhooks lost before the app was configured); that run leaves the "
            "schedule's watermark alone. Needs the storage and Partner Center settings, not the CRM's."
        ),
        args=(
            arg(
                "--since",
                type=_since,
                metavar="DATE",
                help="read referrals changed at or after this ISO 8601 date or date-time (UTC unless it has an offset)",
            ),
        ),
    ),
    Command(
        "replay-poison",
        "move jobs from 'sync-jobs-poison' back to 'sync-jobs'",
        _replay_poison,
        description=(
            "Move jobs from the poison queue back to 'sync-jobs' once their cause is fixed (see `poison list`); "
            "unreadable messages are dropped and printed. Needs the storage settings only."
        ),
        args=(REPLAY_LIMIT,),
    ),
    Command(
        "poison",
        "the jobs in 'sync-jobs-poison': list or replay them",
        description="The jobs in 'sync-jobs-poison': list them with each record's last error, or replay them.",
        subcommands=(
            Command(
                "list",
                "each poisoned job: kind, record, when it was poisoned, the record's last error",
                _poison_list,
                args=(arg("--json", action="store_true", help="print JSON instead of a table"),),
            ),
            Command("replay", "the same as replay-poison", _replay_poison, args=(REPLAY_LIMIT,)),
        ),
    ),
    Command(
        "dry-run",
        "what syncing one record would send to each side, without writing anything anywhere",
        _dry_run,
        one_of=(
            arg("--crm-id", help="a CRM opportunity id"),
            arg("--referral-id", help="a Partner Center referral id"),
        ),
    ),
    Command(
        "register-webhook",
        "register this app's webhook with Partner Center and check that a test event arrives verified",
        _register_webhook,
        description=(
            "Shows the tenant's current registration, then registers --url for the referral events and "
            "test-created. Partner Center keeps one registration per tenant: one that points elsewhere (production, "
            "another app, Microsoft's co-sell connector) is replaced only with --force. Then it sends a test event "
            "and waits until the app has received it and verified its signature (--check does only that)."
        ),
        args=(
            arg("--url", help="https://<app>.azurewebsites.net/api/webhooks/partner-center"),
            arg("--show", action="store_true", help="print the current registration and exit"),
            arg("--force", action="store_true", help="replace a registration that points elsewhere"),
            arg("--check", action="store_true", help="only send a test event and check that it arrives"),
            arg("--no-check", action="store_true", help="register without sending a test event"),
            arg("--wait", type=float, default=60.0, help="seconds to wait for the test event to arrive (default: 60)"),
            arg(
                "--ms-signature-header",
                action="store_true",
                help="ask Partner Center to send the signature in x-ms-signature instead of Authorization",
            ),
        ),
    ),
    Command(
        "mapping",
        "the CRM field mapping: show it, or check it against the CRM",
        subcommands=(
            Command(
                "show",
                "print the effective mapping (defaults, CRM_MAPPING_FILE, settings) as TOML, overrides marked",
                _mapping_show,
            ),
            Command(
                "check",
                "validate the mapping, and check every mapped column against the CRM's metadata when reachable",
                _mapping_check,
            ),
        ),
    ),
    Command(
        "setup-crm",
        "check (or with --apply create) the CRM's custom fields, key and the integration identity's access",
        _setup_crm,
        description=(
            "Checks that the CRM has every custom field the effective mapping names (type, choice or picklist values), "
            "the referral id's alternate key (Dynamics 365) or External ID (Salesforce), and a security role "
            "(Dynamics 365) or permission set (Salesforce) with what the connector does, given to the integration "
            "identity. Nothing changes without --apply; --apply creates what is missing and is safe to run again. "
            "Run it as an admin (Dataverse: System Customizer and security-role rights; Salesforce: Customize "
            "Application and Manage Users). Exit 1 when something required is missing or could not be created."
        ),
        args=(
            arg("--apply", action="store_true", help="create what is missing (default: check only)"),
            arg(
                "--application-id",
                help="Dynamics 365: the client id of the app's identity whose application user gets the role "
                "(default: DATAVERSE_CLIENT_ID)",
            ),
            arg("--role", default="Co-sell connector", help="Dynamics 365: the security role's name"),
            arg("--run-as-user", help="Salesforce: the integration user's username (default: SALESFORCE_USERNAME)"),
            arg("--permission-set", default="Cosell_Connector", help="Salesforce: the permission set's API name"),
        ),
    ),
    Command(
        "login",
        "sign in to Partner Center as a Referrals admin (device code, or --browser), with MFA",
        _login,
        description=(
            "Sign in once as a Referrals admin with an MFA-capable account; the app lives on the refresh token this "
            "stores (Key Vault, or a private file). Device code by default: open the address shown on any device "
            "and enter the code. Where Conditional Access blocks the device code flow, use --browser on a machine "
            "with a browser (the answer comes back to http://localhost, which the app registration must list)."
        ),
        args=(
            arg("--browser", action="store_true", help="sign in with a browser here (auth code + PKCE)"),
            arg("--port", type=int, help="with --browser: the localhost port for the answer (default: any free)"),
            arg("--tenant", help="Partner Center tenant id (default: PARTNER_CENTER_TENANT_ID)"),
            arg("--client-id", help="Entra application id (default: PARTNER_CENTER_CLIENT_ID)"),
            arg("--key-vault-uri", help="store the refresh token in this vault (default: KEY_VAULT_URI)"),
            arg("--secret-name", default="partner-center-refresh-token", help="Key Vault secret name"),
            arg(
                "--output",
                help="file for the token when no vault is given (default: refresh-token.txt in your config folder)",
            ),
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosell",
        description=(
            "Co-sell connector operator commands (also: python -m shared). Settings come from the environment, then "
            "from local.settings.json in the current folder; each command needs only the settings it uses."
        ),
    )
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help=f"a local.settings.json whose Values fill the settings the environment leaves unset (default: "
        f"./{SETTINGS_FILE} when there is one)",
    )
    add_commands(parser, "command", COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    applied: list[str] = []
    try:
        if args.settings is not None and not args.settings.is_file():
            raise LocalSettingsError(f"{args.settings} (--settings) does not exist")
        applied = apply_local_settings(args.settings or Path(SETTINGS_FILE))
        return int(args.run(args))
    except LocalSettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ExternalServiceError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        # The file's values last as long as the command: run in-process (tests), they must not leak further.
        for name in applied:
            os.environ.pop(name, None)


if __name__ == "__main__":
    sys.exit(main())
