"""Builds the adapters and services from one Settings object, once per process.

Heavy or rarely needed clients are imported and built on first use, so the webhook path never pays
for a CRM client and a bad CRM setting cannot take the health endpoint down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from .settings import SettingProblem, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from .crm.dynamics import DataverseConfig
    from .crm.mapping import CrmMapping, Loaded
    from .crm.salesforce import SalesforceConfig
    from .crm.salesforce.auth import SalesforceAuth
    from .httpclient import TokenProvider
    from .partner_center.auth import PartnerCenterCredentials
    from .partner_center.client import PartnerCenterClient
    from .partner_center.signature import WebhookVerifier
    from .ports import Crm, Job
    from .store.connections import StorageConfig
    from .store.queue import StorageJobQueue
    from .store.tables import TableSyncStore
    from .sync.dry_run import DryRun
    from .sync.engine import SyncEngine
    from .sync.job_runner import JobRunner
    from .sync.poller import ChangeFeed
    from .sync.tally import Tally
    from .sync.webhook_intake import WebhookIntake

log = logging.getLogger(__name__)


def storage_config(settings: Settings) -> StorageConfig:
    from .store.connections import StorageConfig

    s = settings
    return StorageConfig(
        s.azure_webjobs_storage,
        s.storage_account_name,
        s.storage_table_service_uri,
        s.storage_queue_service_uri,
        s.storage_client_id,
    )


def partner_center_credentials(settings: Settings) -> PartnerCenterCredentials:
    from .partner_center.auth import PartnerCenterCredentials, TokenVault

    s = settings
    return PartnerCenterCredentials(
        authority=s.partner_center_authority,
        tenant_id=s.partner_center_tenant_id,
        client_id=s.partner_center_client_id,
        refresh_token=s.partner_center_refresh_token,
        client_secret=s.partner_center_client_secret,
        vault=TokenVault(s.key_vault_uri, s.partner_center_refresh_token_secret) if s.key_vault_uri else None,
        token_file=_token_file_in_use(s),
        timeout=s.http_timeout_seconds,
    )


def partner_center_token(
    settings: Settings, scope: str, on_redeemed: Callable[[], None] | None = None
) -> TokenProvider:
    """``PARTNER_CENTER_ACCESS_TOKEN`` when set (emulators, tests), else the refresh token exchanged for access
    tokens of ``scope`` (``on_redeemed`` is told of each successful redemption)."""
    from .partner_center.auth import StaticToken, partner_center_token_provider

    static = settings.partner_center_access_token
    if static is not None and static.get_secret_value():
        # Info, not warning: the app already warns once at start-up about every static token in use.
        log.info("PARTNER_CENTER_ACCESS_TOKEN is set: using a static Partner Center token (emulators/tests only)")
        return StaticToken(static)
    return partner_center_token_provider(partner_center_credentials(settings), scope, on_redeemed=on_redeemed)


def _token_file_in_use(s: Settings) -> Path | None:
    """The token file the refresh token was read from, if it was (not given directly, and no vault)."""
    from .partner_center.token_file import default_token_path, read_token_file

    if s.key_vault_uri or s.partner_center_refresh_token is None:
        return None
    path = s.partner_center_refresh_token_file or default_token_path()
    try:
        held = read_token_file(path)
    except OSError:
        return None
    return path if held == s.partner_center_refresh_token.get_secret_value() else None


def load_crm_mapping(settings: Settings) -> Loaded[CrmMapping]:
    """The CRM's effective field mapping: the shipped defaults, ``CRM_MAPPING_FILE`` merged over them, then the
    settings that name single entries (field names, value tables, stages) and ``CONFLICT_RULES``. A mapping that
    cannot be used is a SettingsError naming the file (or setting), the entry and the problem."""
    from .crm.mapping import MappingError, Override

    if settings.crm_provider == "salesforce":
        from .crm.salesforce.mapping import SalesforceMapping as kind
        from .crm.salesforce.mapping import load_mapping
    else:
        from .crm.dynamics.mapping import DataverseMapping as kind  # type: ignore[assignment]
        from .crm.dynamics.mapping import load_mapping  # type: ignore[assignment]
    fields = {_setting_alias(name): name for name in Settings.model_fields}
    overrides = [
        Override(path, getattr(settings, fields[setting]), setting)
        for setting, path in kind.settings.items()
        if getattr(settings, fields[setting]) is not None
    ]
    overrides += [
        Override(("fields", field, "owner"), side, "CONFLICT_RULES") for field, side in settings.conflict_owners.items()
    ]
    try:
        return load_mapping(settings.crm_mapping_file, overrides)
    except MappingError as exc:
        # Named by the settings that shaped the mapping: the file, and any single-entry setting the message cites.
        named = [o.source for o in overrides if o.source in str(exc)]
        names = (["CRM_MAPPING_FILE"] if settings.crm_mapping_file else []) + named or ["CRM_MAPPING_FILE"]
        problem = SettingProblem(tuple(dict.fromkeys(names)), f"CRM field mapping: {exc}")
        raise SettingsError(f"Invalid configuration: CRM field mapping: {exc}", [problem]) from None


def _setting_alias(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return str(getattr(alias, "choices", [field])[0])


def dataverse_config(settings: Settings, mapping: CrmMapping) -> DataverseConfig:
    from .crm.dynamics import DataverseConfig
    from .crm.dynamics.mapping import DataverseMapping

    s = settings
    if not s.dataverse_url:
        raise SettingsError("Invalid configuration: DATAVERSE_URL is required for the Dynamics 365 adapter")
    assert isinstance(mapping, DataverseMapping)
    return DataverseConfig(
        s.dataverse_url,
        s.dataverse_api_version,
        mapping,
        timeout=s.http_timeout_seconds,
        max_inline_wait=s.max_inline_retry_after_seconds,
        audit_max_chars=s.audit_max_chars,
    )


def dataverse_token(settings: Settings) -> TokenProvider:
    """``DATAVERSE_ACCESS_TOKEN`` when set (emulators, tests), else an app registration of its own when one is
    configured, else the managed identity (DefaultAzureCredential)."""
    from .crm.dynamics.auth import AzureIdentityToken, app_registration

    s = settings
    if s.dataverse_access_token is not None:
        return s.dataverse_access_token.get_secret_value
    scope = f"{s.dataverse_url}/.default"
    tenant = s.dataverse_tenant_id or s.partner_center_tenant_id
    if s.dataverse_client_id and s.dataverse_client_secret and tenant:
        secret = s.dataverse_client_secret.get_secret_value()
        return AzureIdentityToken(scope, app_registration(tenant, s.dataverse_client_id, secret))
    return AzureIdentityToken(scope)


def salesforce_config(settings: Settings, mapping: CrmMapping) -> SalesforceConfig:
    from .crm.salesforce import SalesforceConfig
    from .crm.salesforce.mapping import SalesforceMapping

    s = settings
    assert isinstance(mapping, SalesforceMapping)
    return SalesforceConfig(
        s.salesforce_api_version,
        mapping,
        timeout=s.http_timeout_seconds,
        max_inline_wait=s.max_inline_retry_after_seconds,
        audit_max_chars=s.audit_max_chars,
        quota_retry_after=s.quota_pause_seconds,
    )


def salesforce_auth(settings: Settings, session: requests.Session | None = None) -> SalesforceAuth:
    """The static token when one is configured, else the configured OAuth flow."""
    from .crm.salesforce.auth import TOKEN_PATH, ClientCredentials, JwtBearer, StaticToken, origin

    s = settings
    if s.salesforce_access_token is not None:
        if not s.salesforce_instance_url:
            raise ValueError("SALESFORCE_INSTANCE_URL is required with SALESFORCE_ACCESS_TOKEN")
        return StaticToken(s.salesforce_access_token.get_secret_value(), s.salesforce_instance_url)
    if s.salesforce_token_url:
        token_url = s.salesforce_token_url
    elif s.salesforce_login_url:
        token_url = f"{s.salesforce_login_url.rstrip('/')}{TOKEN_PATH}"
    else:
        raise ValueError("SALESFORCE_LOGIN_URL or SALESFORCE_TOKEN_URL is required for the Salesforce adapter")
    if not s.salesforce_client_id:
        raise ValueError("SALESFORCE_CLIENT_ID is required for the Salesforce adapter")
    timeout = s.http_timeout_seconds
    if s.salesforce_auth_flow == "jwt_bearer":
        if not s.salesforce_username or s.salesforce_private_key is None:
            raise ValueError("SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY are required for the JWT bearer flow")
        # The audience is the login host (login/test.salesforce.com or the My Domain), even when the token
        # endpoint is elsewhere (SALESFORCE_TOKEN_URL), as for GovCloud.
        audience = origin(s.salesforce_login_url or token_url)
        key = s.salesforce_private_key.get_secret_value()
        return JwtBearer(token_url, audience, s.salesforce_client_id, s.salesforce_username, key, session, timeout)
    if s.salesforce_client_secret is None:
        raise ValueError("SALESFORCE_CLIENT_SECRET is required for the client credentials flow")
    secret = s.salesforce_client_secret.get_secret_value()
    return ClientCredentials(token_url, s.salesforce_client_id, secret, session, timeout)


def build_crm(settings: Settings, mapping: CrmMapping) -> Crm:
    """The configured CRM's adapter."""
    if settings.crm_provider == "salesforce":
        from .crm.salesforce import SalesforceCrm

        return SalesforceCrm(salesforce_config(settings, mapping), salesforce_auth(settings))
    from .crm.dynamics import DataverseCrm

    return DataverseCrm(dataverse_config(settings, mapping), dataverse_token(settings))


class _EngineOnFirstUse:
    """The sync engine, built when a job first needs it: reading the runner's health (``cosell status``) needs the
    storage settings only, not the CRM and Partner Center clients the engine is made of."""

    def __init__(self, build: Callable[[], SyncEngine]) -> None:
        self._build = build

    def handle(self, job: Job, final_attempt: bool = False) -> Any:
        return self._build().handle(job, final_attempt=final_attempt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._build(), name)


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        for name in settings.static_tokens_in_use():
            log.warning("%s is set: a static bearer token is meant for emulators and tests only", name)
        # Checked at start-up like the settings: a mapping that cannot work stops the app, naming the entry.
        self.mapping = load_crm_mapping(settings).mapping

    @cached_property
    def store(self) -> TableSyncStore:
        from .store.connections import table_service
        from .store.tables import TableSyncStore

        s = self.settings
        store = TableSyncStore(table_service(storage_config(s)), s.links_table, s.state_table, s.audit_table)
        store.link_observer = self.tally.link_saved
        return store

    @cached_property
    def tally(self) -> Tally:
        from .store.counters import counter_rows, link_status_counts
        from .sync.clock import SystemClock
        from .sync.tally import Tally

        return Tally(lambda: counter_rows(self.store), SystemClock(), lambda: link_status_counts(self.store))

    @cached_property
    def queue(self) -> StorageJobQueue:
        from .store.connections import queue_service
        from .store.queue import StorageJobQueue

        return StorageJobQueue(queue_service(storage_config(self.settings)))

    @cached_property
    def partner_center(self) -> PartnerCenterClient:
        from .partner_center.auth import REFERRALS_SCOPE
        from .partner_center.client import PartnerCenterClient, PartnerCenterConfig
        from .telemetry import correlation_headers

        s = self.settings
        config = PartnerCenterConfig(
            s.partner_center_api_url, timeout=s.http_timeout_seconds, max_inline_wait=s.max_inline_retry_after_seconds
        )
        # Each redemption of the refresh token is recorded: /api/status warns before its 90-day inactivity expiry.
        token = partner_center_token(
            s, REFERRALS_SCOPE, on_redeemed=lambda: self.store.save_token_redeemed(datetime.now(UTC))
        )
        return PartnerCenterClient(config, token, extra_headers=correlation_headers)

    @cached_property
    def crm(self) -> Crm:
        return build_crm(self.settings, self.mapping)

    @cached_property
    def verifier(self) -> WebhookVerifier:
        from .partner_center.signature import VerifierConfig, WebhookVerifier

        s = self.settings
        return WebhookVerifier(
            VerifierConfig(
                allowed_cert_url_prefixes=s.partner_center_webhook_cert_url_prefixes,
                ca_bundle_path=s.partner_center_webhook_ca_bundle,
                expected_subject=s.partner_center_webhook_cert_subject,
                issuer_org=s.partner_center_webhook_cert_issuer_org,
            )
        )

    @cached_property
    def intake(self) -> WebhookIntake:
        from .partner_center.client import referral_id_from_resource_uri
        from .sync.webhook_intake import WebhookIntake
        from .telemetry import TracedIntake

        intake = WebhookIntake(
            self.verifier,
            self.queue,
            self.settings.webhook_max_body_bytes,
            referral_id_from_resource_uri,
            on_test_event=lambda uri: self.store.record_test_event(datetime.now(UTC), uri),
        )
        return TracedIntake(intake)  # type: ignore[return-value]  # answers like the intake, with a span

    @cached_property
    def poller(self) -> ChangeFeed:
        from .sync.clock import SystemClock
        from .sync.poller import crm_poller
        from .telemetry import TracedFeed
        from .telemetry.names import SPAN_POLL

        s = self.settings
        feed = crm_poller(self.crm, self.store, self.queue, SystemClock(), s.crm_poll_overlap_seconds)
        if s.dataverse_change_tracking == "auto" and hasattr(self.crm, "delta_pages"):
            from .store.delta_rows import DeltaRows
            from .sync.delta_feed import DeltaFeed

            # Dataverse change tracking, with the modifiedon poll above as its fallback for a table without it.
            tracking: Any = self.crm  # a DataverseCrm: it has delta_pages
            rows = DeltaRows(self.store)
            delta = DeltaFeed(tracking, rows, self.queue, SystemClock(), feed, self.store.crm_link_state)
            feed = delta  # type: ignore[assignment]  # polls like a feed
        if not s.sync_cosell_only:  # Partner Center leads are CRM leads: the poll reads their changes too
            from .sync.lead_poll import PollWithLeads, lead_poller

            leads = lead_poller(self.crm, self.store, self.queue, SystemClock(), s.crm_poll_overlap_seconds)
            feed = PollWithLeads(feed, leads)  # type: ignore[assignment]  # polls like a feed
        return TracedFeed(feed, SPAN_POLL, s.quota_pause_seconds)  # type: ignore[return-value]

    @cached_property
    def reconciler(self) -> ChangeFeed:
        from .sync.clock import SystemClock
        from .sync.poller import partner_center_reconciler
        from .telemetry import TracedFeed
        from .telemetry.names import EVENT_RECONCILE_CHANGES, SPAN_RECONCILE

        s = self.settings
        feed = partner_center_reconciler(
            self.partner_center,
            self.store,
            self.queue,
            SystemClock(),
            s.crm_poll_overlap_seconds,
            s.reconcile_first_lookback_hours,
        )
        return TracedFeed(feed, SPAN_RECONCILE, s.quota_pause_seconds, EVENT_RECONCILE_CHANGES)  # type: ignore[return-value]

    @cached_property
    def jobs(self) -> JobRunner:
        from .sync.clock import SystemClock
        from .sync.job_runner import JobRunner
        from .telemetry import TracedEngine

        return JobRunner(
            TracedEngine(_EngineOnFirstUse(lambda: self.engine), self.settings.quota_pause_seconds),  # type: ignore[arg-type]
            self.store,
            self.queue,
            SystemClock(),
            self.settings.quota_pause_seconds,
            self.settings.busy_retry_seconds,
            tally=self.tally,
        )

    @cached_property
    def engine(self) -> SyncEngine:
        from .inline_wait import job_waits
        from .sync.engine import EngineOptions, SyncEngine
        from .write_fence import fenced

        s = self.settings
        options = EngineOptions(
            checkmark_enabled=s.checkmark_enabled,
            sync_cosell_only=s.sync_cosell_only,
            referral_link_template=s.referral_link_template,
            audit_max_chars=s.audit_max_chars,
            audit_every_sync=s.crm_audit_line == "every-sync",
            close_referral_on_crm_delete=s.close_referral_on_crm_delete,
            lease_seconds=s.job_lease_seconds,
            lease_margin_seconds=s.lease_margin_seconds,
            max_inline_wait_seconds=s.max_inline_retry_after_seconds,
            started_job_wait_seconds=s.max_started_job_wait_seconds,
            field_owners=self.mapping.owners(),  # type: ignore[arg-type]
            field_directions=self.mapping.directions(),  # type: ignore[arg-type]
            inbound_routing=s.inbound_routing,
            lead_rules=self.mapping.lead.rules(),
        )
        return SyncEngine(self.partner_center, self.crm, self.store, options, fence=fenced, waits=job_waits)

    @cached_property
    def dry_run(self) -> DryRun:
        from .sync.dry_run import DryRun

        engine = self.engine
        return DryRun(
            engine.pairing, engine.merging, engine.opportunities, engine.referrals, engine.clock, engine.leads
        )


def start_telemetry(c: Container) -> bool:
    """Telemetry on when APPLICATIONINSIGHTS_CONNECTION_STRING is set (shared/telemetry); never fails start-up."""
    from .store.queue import JOBS_QUEUE, POISON_QUEUE
    from .telemetry import configure_telemetry

    secret = c.settings.applicationinsights_connection_string
    if secret is None:
        return False
    return configure_telemetry(
        secret.get_secret_value(), lambda: {JOBS_QUEUE: c.queue.depth(), POISON_QUEUE: c.queue.poison_depth()}
    )


_lock = threading.Lock()
_container: Container | None = None


def container() -> Container:
    global _container
    with _lock:
        if _container is None:
            _container = Container(load_settings())
        return _container


def reset() -> None:
    """Forget the cached container (tests change settings between cases)."""
    global _container
    with _lock:
        old, _container = _container, None
    if old is not None and "tally" in old.__dict__:
        old.tally.close()  # what the forgotten container counted stays counted
