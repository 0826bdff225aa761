"""Builds the adapters and services from one Settings object, once per process.

Heavy or rarely needed clients are imported and built on first use, so the webhook path never pays
for a CRM client and a bad CRM setting cannot take the health endpoint down.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING

import requests

from .settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from .crm.dynamics import DataverseConfig
    from .crm.mapping import CrmMapping, Loaded
    from .crm.salesforce import SalesforceConfig
    from .crm.salesforce.auth import SalesforceAuth
    from .httpclient import TokenProvider
    from .partner_center.auth import PartnerCenterCredentials
    from .partner_center.client import PartnerCenterClient
    from .partner_center.signature import WebhookVerifier
    from .ports import Crm
    from .store.connections import StorageConfig
    from .store.queue import StorageJobQueue
    from .store.tables import TableSyncStore
    from .sync.dry_run import DryRun
    from .sync.engine import SyncEngine
    from .sync.job_runner import JobRunner
    from .sync.poller import ChangeFeed
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
        access_token=s.partner_center_access_token,
        authority=s.partner_center_authority,
        tenant_id=s.partner_center_tenant_id,
        client_id=s.partner_center_client_id,
        refresh_token=s.partner_center_refresh_token,
        client_secret=s.partner_center_client_secret,
        vault=TokenVault(s.key_vault_uri, s.partner_center_refresh_token_secret) if s.key_vault_uri else None,
        timeout=s.http_timeout_seconds,
    )


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
        raise SettingsError(f"Invalid configuration: CRM field mapping: {exc}") from None


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
        return TableSyncStore(table_service(storage_config(s)), s.links_table, s.state_table, s.audit_table)

    @cached_property
    def queue(self) -> StorageJobQueue:
        from .store.connections import queue_service
        from .store.queue import StorageJobQueue

        return StorageJobQueue(queue_service(storage_config(self.settings)))

    @cached_property
    def partner_center(self) -> PartnerCenterClient:
        from .partner_center.auth import partner_center_token_provider
        from .partner_center.client import PartnerCenterClient, PartnerCenterConfig

        s = self.settings
        config = PartnerCenterConfig(
            s.partner_center_api_url, timeout=s.http_timeout_seconds, max_inline_wait=s.max_inline_retry_after_seconds
        )
        return PartnerCenterClient(config, partner_center_token_provider(partner_center_credentials(s)))

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

        return WebhookIntake(
            self.verifier, self.queue, self.settings.webhook_max_body_bytes, referral_id_from_resource_uri
        )

    @cached_property
    def poller(self) -> ChangeFeed:
        from .sync.clock import SystemClock
        from .sync.poller import crm_poller

        return crm_poller(self.crm, self.store, self.queue, SystemClock(), self.settings.crm_poll_overlap_seconds)

    @cached_property
    def reconciler(self) -> ChangeFeed:
        from .sync.clock import SystemClock
        from .sync.poller import partner_center_reconciler

        s = self.settings
        return partner_center_reconciler(
            self.partner_center,
            self.store,
            self.queue,
            SystemClock(),
            s.crm_poll_overlap_seconds,
            s.reconcile_first_lookback_hours,
        )

    @cached_property
    def jobs(self) -> JobRunner:
        from .sync.clock import SystemClock
        from .sync.job_runner import JobRunner

        return JobRunner(
            self.engine,
            self.store,
            self.queue,
            SystemClock(),
            self.settings.quota_pause_seconds,
            self.settings.busy_retry_seconds,
        )

    @cached_property
    def engine(self) -> SyncEngine:
        from .sync.engine import EngineOptions, SyncEngine
        from .write_fence import fenced

        s = self.settings
        options = EngineOptions(
            checkmark_enabled=s.checkmark_enabled,
            sync_cosell_only=s.sync_cosell_only,
            referral_link_template=s.referral_link_template,
            audit_max_chars=s.audit_max_chars,
            close_referral_on_crm_delete=s.close_referral_on_crm_delete,
            lease_seconds=s.job_lease_seconds,
            lease_margin_seconds=s.lease_margin_seconds,
            field_owners=self.mapping.owners(),  # type: ignore[arg-type]
            field_directions=self.mapping.directions(),  # type: ignore[arg-type]
            inbound_routing=s.inbound_routing,
        )
        return SyncEngine(self.partner_center, self.crm, self.store, options, fence=fenced)

    @cached_property
    def dry_run(self) -> DryRun:
        from .sync.dry_run import DryRun

        engine = self.engine
        return DryRun(engine.pairing, engine.merging, engine.opportunities, engine.referrals, engine.clock)


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
        _container = None
