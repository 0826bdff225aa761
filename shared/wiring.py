"""Builds the adapters and services from one Settings object, once per process.

Heavy or rarely needed clients are imported and built on first use, so the webhook path never pays
for a CRM client and a bad CRM setting cannot take the health endpoint down.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from .settings import Settings, load_settings

if TYPE_CHECKING:
    from .partner_center.client import PartnerCenterClient
    from .partner_center.signature import WebhookVerifier
    from .ports import Crm
    from .store.queue import StorageJobQueue
    from .store.tables import TableSyncStore
    from .sync.engine import SyncEngine
    from .sync.job_runner import JobRunner
    from .sync.poller import ChangeFeed
    from .sync.webhook_intake import WebhookIntake

log = logging.getLogger(__name__)


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        for name in settings.static_tokens_in_use():
            log.warning("%s is set: a static bearer token is meant for emulators and tests only", name)

    @cached_property
    def store(self) -> TableSyncStore:
        from .store.connections import table_service
        from .store.tables import TableSyncStore

        s = self.settings
        return TableSyncStore(table_service(s), s.links_table, s.state_table, s.audit_table)

    @cached_property
    def queue(self) -> StorageJobQueue:
        from .store.connections import queue_service
        from .store.queue import StorageJobQueue

        return StorageJobQueue(queue_service(self.settings))

    @cached_property
    def partner_center(self) -> PartnerCenterClient:
        from .partner_center.auth import partner_center_token_provider
        from .partner_center.client import PartnerCenterClient

        s = self.settings
        return PartnerCenterClient(
            s.partner_center_api_url,
            partner_center_token_provider(s),
            timeout=s.http_timeout_seconds,
            max_inline_wait=s.max_inline_retry_after_seconds,
        )

    @cached_property
    def crm(self) -> Crm:
        if self.settings.crm_provider == "salesforce":
            from .crm.salesforce import SalesforceCrm

            return SalesforceCrm(self.settings, quota_retry_after=self.settings.quota_pause_seconds)
        from .crm.dynamics import DataverseCrm

        return DataverseCrm(self.settings)

    @cached_property
    def verifier(self) -> WebhookVerifier:
        from .partner_center.signature import WebhookVerifier

        s = self.settings
        return WebhookVerifier(
            allowed_cert_url_prefixes=s.partner_center_webhook_cert_url_prefixes,
            ca_bundle_path=s.partner_center_webhook_ca_bundle,
            expected_subject=s.partner_center_webhook_cert_subject,
            issuer_org=s.partner_center_webhook_cert_issuer_org,
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
            lease_seconds=s.job_lease_seconds,
            lease_margin_seconds=s.lease_margin_seconds,
            field_owners=s.conflict_owners,
        )
        return SyncEngine(self.partner_center, self.crm, self.store, options, fence=fenced)


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
