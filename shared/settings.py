"""One settings object for the whole app, read from environment variables / app settings.

``load_settings()`` turns every validation problem into one :class:`SettingsError` whose message
names the settings at fault, so a misconfigured app fails at start-up with a readable reason
instead of a stack trace from deep inside a client.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .domain.mapping import DEFAULT_REFERRAL_LINK_TEMPLATE
from .domain.policies import Side, parse_field_owners
from .domain.routing import OwnerKind, Routing, parse_routing
from .partner_center.token_file import default_token_path, read_token_file, warn_about_stray_token_file
from .schedule import ScheduleError
from .schedule import parse as parse_schedule

MICROSOFT_WEBHOOK_CERT_PREFIX = "https://3psostorageacct.blob.core.windows.net/cert/"
# Hosts a plain-http certificate prefix may name (local emulators), as urlsplit reports them.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# How far apart two workers' clocks may be: a lease row's expiry is written by one worker's clock and read by
# another's. Azure hosts keep NTP time well within this.
LEASE_CLOCK_SKEW_SECONDS = 5.0

STATIC_TOKEN_SETTINGS = ("PARTNER_CENTER_ACCESS_TOKEN", "DATAVERSE_ACCESS_TOKEN", "SALESFORCE_ACCESS_TOKEN")


@dataclass(frozen=True)
class OwnerIds:
    """What the id of one kind of owner looks like in a CRM (``INBOUND_OWNER``), and how a message describes it;
    no pattern: the CRM has no owner of that kind, and the description says why."""

    pattern: re.Pattern[str] | None
    description: str


_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_SALESFORCE_USER = re.compile(r"005[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?")
# Who can own an opportunity in each CRM: Dataverse's owner lookup takes a systemuser or a team; in Salesforce only
# a User can (queues own leads, cases and custom objects, never opportunities).
OWNER_IDS: dict[str, dict[OwnerKind, OwnerIds]] = {
    "dynamics": {
        "user": OwnerIds(_GUID, "a systemuser id (a GUID)"),
        "team": OwnerIds(_GUID, "a team id (a GUID)"),
    },
    "salesforce": {
        "user": OwnerIds(_SALESFORCE_USER, "a User id (005..., 15 or 18 characters)"),
        "team": OwnerIds(None, "a Salesforce queue cannot own an opportunity; route to a user:<User id> instead"),
    },
}


def _check_owner_ids(routing: Routing, provider: str) -> None:
    for owner in routing.owners():
        ids = OWNER_IDS[provider][owner.kind]
        if ids.pattern is None:
            raise ValueError(f"'{owner}': {ids.description}")
        if not ids.pattern.fullmatch(owner.id):
            raise ValueError(f"'{owner}' is not {ids.description}")


# The placeholders REFERRAL_LINK_TEMPLATE may use (shared/domain/mapping.py fills them).
REFERRAL_LINK_PLACEHOLDERS = ("referral_id",)
# Hosts that serve every Salesforce org's login page but refuse the client credentials flow; the app needs the
# org's own My Domain.
SALESFORCE_GENERIC_LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})


@dataclass(frozen=True)
class SettingProblem:
    """One thing wrong with the settings: the settings it concerns (none: the settings as a whole) and why."""

    settings: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return f"{', '.join(self.settings)}: {self.message}" if self.settings else self.message


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it and never echoes secret values. ``problems`` lists
    each problem with the settings it concerns, so callers (``/api/health``) can name them without the reasons."""

    def __init__(self, message: str, problems: Sequence[SettingProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)

    @property
    def names(self) -> list[str]:
        """The settings at fault, each once, in the order the problems name them."""
        return list(dict.fromkeys(name for problem in self.problems for name in problem.settings)) or ["settings"]


class _Missing(ValueError):
    """Several required settings at once (a model validator can raise one error only); load_settings unpacks it."""

    def __init__(self, problems: list[SettingProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _bare_origin(value: str, setting_shape: str) -> tuple[str, str]:
    """(scheme, host) of a URL that must be an origin only: https (plain http only on this machine, for
    emulators), no path, query or fragment. The message says what the setting should look like."""
    parts = urlsplit(value)
    host = parts.hostname or ""
    scheme = parts.scheme.lower()
    if not host:
        raise ValueError(f"'{value}' is not a URL; expected {setting_shape}")
    if not (scheme == "https" or (scheme == "http" and host in LOOPBACK_HOSTS)):
        raise ValueError(
            f"'{value}' must use https:// (plain http only for a local emulator); expected {setting_shape}"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"'{value}' must be the root URL with no path; expected {setting_shape}")
    return scheme, host


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def _empty_if_set_empty(name: str) -> str | None:
    """The empty string when the environment sets ``name`` empty, else None: for a setting where empty says something
    (``SALESFORCE_CURRENCY_FIELD=""``: no currency field), which ``env_ignore_empty`` would read as unset."""
    return "" if any(key.upper() == name and value == "" for key, value in os.environ.items()) else None


class Settings(BaseSettings):
    # Empty values count as unset: local.settings.json templates carry "" for settings left to defaults.
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    # -- behaviour -------------------------------------------------------------------------------
    crm_provider: Literal["dynamics", "salesforce"] = Field("dynamics", validation_alias=_env("CRM_PROVIDER"))
    checkmark_enabled: bool = Field(True, validation_alias=_env("CHECKMARK_ENABLED"))
    sync_cosell_only: bool = Field(True, validation_alias=_env("SYNC_COSELL_ONLY"))
    close_referral_on_crm_delete: bool = Field(False, validation_alias=_env("CLOSE_REFERRAL_ON_CRM_DELETE"))
    crm_poll_schedule: str = Field("*/30 * * * * *", validation_alias=_env("CRM_POLL_SCHEDULE"))
    reconcile_schedule: str = Field("0 0 * * * *", validation_alias=_env("RECONCILE_SCHEDULE"))
    referral_link_template: str = Field(DEFAULT_REFERRAL_LINK_TEMPLATE, validation_alias=_env("REFERRAL_LINK_TEMPLATE"))
    audit_max_chars: int = Field(20000, ge=500, validation_alias=_env("AUDIT_MAX_CHARS"))
    crm_audit_line: Literal["changes", "every-sync"] = Field("changes", validation_alias=_env("CRM_AUDIT_LINE"))
    conflict_rules: str = Field("", validation_alias=_env("CONFLICT_RULES"))
    # Who owns opportunities made from referrals (shared/domain/routing.py); empty: the integration user.
    inbound_owner: str = Field("", validation_alias=_env("INBOUND_OWNER"))
    # An override file merged over the CRM's shipped field mapping (shared/crm/<crm>/mapping.toml).
    crm_mapping_file: Path | None = Field(None, validation_alias=_env("CRM_MAPPING_FILE"))
    crm_poll_overlap_seconds: int = Field(300, ge=0, validation_alias=_env("CRM_POLL_OVERLAP_SECONDS"))
    reconcile_first_lookback_hours: int = Field(24, ge=1, validation_alias=_env("RECONCILE_FIRST_LOOKBACK_HOURS"))
    busy_retry_seconds: int = Field(5, ge=0, validation_alias=_env("BUSY_RETRY_SECONDS"))
    quota_pause_seconds: int = Field(900, ge=1, validation_alias=_env("QUOTA_PAUSE_SECONDS"))
    job_lease_seconds: int = Field(120, ge=5, validation_alias=_env("JOB_LEASE_SECONDS"))
    http_timeout_seconds: float = Field(30.0, gt=0, validation_alias=_env("HTTP_TIMEOUT_SECONDS"))
    max_inline_retry_after_seconds: float = Field(20.0, ge=0, validation_alias=_env("MAX_INLINE_RETRY_AFTER_SECONDS"))
    # A job that already has answers waits this long inline before it is deferred (shared.inline_wait): well inside
    # host.json's functionTimeout of 10 minutes, with room for the job's remaining requests.
    max_started_job_wait_seconds: float = Field(
        120.0, ge=0, le=300, validation_alias=_env("MAX_STARTED_JOB_WAIT_SECONDS")
    )

    # -- Partner Center --------------------------------------------------------------------------
    partner_center_api_url: str = Field(
        "https://api.partner.microsoft.com", validation_alias=_env("PARTNER_CENTER_API_URL")
    )
    partner_center_webhook_api_url: str = Field(
        "https://api.partnercenter.microsoft.com", validation_alias=_env("PARTNER_CENTER_WEBHOOK_API_URL")
    )
    partner_center_webhook_cert_url_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [MICROSOFT_WEBHOOK_CERT_PREFIX],
        validation_alias=_env("PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES"),
    )
    partner_center_webhook_ca_bundle: Path | None = Field(
        None, validation_alias=_env("PARTNER_CENTER_WEBHOOK_CA_BUNDLE")
    )
    partner_center_webhook_cert_subject: str = Field(
        "pcnotifications-dispatch.microsoft.com", validation_alias=_env("PARTNER_CENTER_WEBHOOK_CERT_SUBJECT")
    )
    partner_center_webhook_cert_issuer_org: str = Field(
        "Microsoft Corporation", validation_alias=_env("PARTNER_CENTER_WEBHOOK_CERT_ISSUER_ORG")
    )
    webhook_max_body_bytes: int = Field(65536, ge=1024, validation_alias=_env("WEBHOOK_MAX_BODY_BYTES"))
    partner_center_access_token: SecretStr | None = Field(None, validation_alias=_env("PARTNER_CENTER_ACCESS_TOKEN"))
    partner_center_tenant_id: str | None = Field(None, validation_alias=_env("PARTNER_CENTER_TENANT_ID"))
    partner_center_client_id: str | None = Field(None, validation_alias=_env("PARTNER_CENTER_CLIENT_ID"))
    partner_center_client_secret: SecretStr | None = Field(None, validation_alias=_env("PARTNER_CENTER_CLIENT_SECRET"))
    # Where `python -m shared login` left the token when no Key Vault was given (default: the per-user
    # config folder); read only when PARTNER_CENTER_REFRESH_TOKEN is not set.
    partner_center_refresh_token_file: Path | None = Field(
        None, validation_alias=_env("PARTNER_CENTER_REFRESH_TOKEN_FILE")
    )
    partner_center_refresh_token: SecretStr | None = Field(
        None, validate_default=True, validation_alias=_env("PARTNER_CENTER_REFRESH_TOKEN")
    )
    key_vault_uri: str | None = Field(None, validation_alias=_env("KEY_VAULT_URI"))
    partner_center_refresh_token_secret: str = Field(
        "partner-center-refresh-token", validation_alias=_env("PARTNER_CENTER_REFRESH_TOKEN_SECRET")
    )
    partner_center_authority: str = Field(
        "https://login.microsoftonline.com", validation_alias=_env("PARTNER_CENTER_AUTHORITY")
    )

    # -- Dynamics 365 (Dataverse) ----------------------------------------------------------------
    dataverse_url: str | None = Field(None, validation_alias=_env("DATAVERSE_URL"))
    dataverse_api_version: str = Field("v9.2", validation_alias=_env("DATAVERSE_API_VERSION"))
    # auto: the poll reads the opportunity table's delta link, and by modifiedon when the table has no change tracking.
    dataverse_change_tracking: Literal["auto", "off"] = Field(
        "auto", validation_alias=_env("DATAVERSE_CHANGE_TRACKING")
    )
    dataverse_access_token: SecretStr | None = Field(None, validation_alias=_env("DATAVERSE_ACCESS_TOKEN"))
    dataverse_client_id: str | None = Field(None, validation_alias=_env("DATAVERSE_CLIENT_ID"))
    dataverse_client_secret: SecretStr | None = Field(None, validation_alias=_env("DATAVERSE_CLIENT_SECRET"))
    dataverse_tenant_id: str | None = Field(None, validation_alias=_env("DATAVERSE_TENANT_ID"))
    # Field-name settings override single entries of the CRM mapping (unset: the mapping's value).
    dataverse_field_sync: str | None = Field(None, validation_alias=_env("DATAVERSE_FIELD_SYNC"))
    dataverse_field_referral_id: str | None = Field(None, validation_alias=_env("DATAVERSE_FIELD_REFERRAL_ID"))
    dataverse_field_referral_link: str | None = Field(None, validation_alias=_env("DATAVERSE_FIELD_REFERRAL_LINK"))
    dataverse_field_help: str | None = Field(None, validation_alias=_env("DATAVERSE_FIELD_HELP"))
    dataverse_field_products: str | None = Field(None, validation_alias=_env("DATAVERSE_FIELD_PRODUCTS"))
    dataverse_field_audit: str | None = Field(None, validation_alias=_env("DATAVERSE_FIELD_AUDIT"))
    dataverse_account_country_field: str | None = Field(None, validation_alias=_env("DATAVERSE_ACCOUNT_COUNTRY_FIELD"))
    dataverse_help_option_values: Annotated[dict[str, int] | None, NoDecode] = Field(
        None, validation_alias=_env("DATAVERSE_HELP_OPTION_VALUES")
    )

    # -- Salesforce ------------------------------------------------------------------------------
    salesforce_auth_flow: Literal["client_credentials", "jwt_bearer"] = Field(
        "client_credentials", validation_alias=_env("SALESFORCE_AUTH_FLOW")
    )
    salesforce_login_url: str | None = Field(None, validation_alias=_env("SALESFORCE_LOGIN_URL"))
    salesforce_token_url: str | None = Field(None, validation_alias=_env("SALESFORCE_TOKEN_URL"))
    salesforce_client_id: str | None = Field(None, validation_alias=_env("SALESFORCE_CLIENT_ID"))
    salesforce_client_secret: SecretStr | None = Field(None, validation_alias=_env("SALESFORCE_CLIENT_SECRET"))
    salesforce_username: str | None = Field(None, validation_alias=_env("SALESFORCE_USERNAME"))
    salesforce_private_key: SecretStr | None = Field(None, validation_alias=_env("SALESFORCE_PRIVATE_KEY"))
    salesforce_api_version: str = Field("v62.0", validation_alias=_env("SALESFORCE_API_VERSION"))
    salesforce_access_token: SecretStr | None = Field(None, validation_alias=_env("SALESFORCE_ACCESS_TOKEN"))
    salesforce_instance_url: str | None = Field(None, validation_alias=_env("SALESFORCE_INSTANCE_URL"))
    salesforce_field_sync: str | None = Field(None, validation_alias=_env("SALESFORCE_FIELD_SYNC"))
    salesforce_field_referral_id: str | None = Field(None, validation_alias=_env("SALESFORCE_FIELD_REFERRAL_ID"))
    salesforce_field_referral_link: str | None = Field(None, validation_alias=_env("SALESFORCE_FIELD_REFERRAL_LINK"))
    salesforce_field_help: str | None = Field(None, validation_alias=_env("SALESFORCE_FIELD_HELP"))
    salesforce_field_products: str | None = Field(None, validation_alias=_env("SALESFORCE_FIELD_PRODUCTS"))
    salesforce_field_audit: str | None = Field(None, validation_alias=_env("SALESFORCE_FIELD_AUDIT"))
    # Empty is not unset here: "" names no currency field (a non-empty value comes from the environment as usual).
    salesforce_currency_field: str | None = Field(
        default_factory=lambda: _empty_if_set_empty("SALESFORCE_CURRENCY_FIELD"),
        validation_alias=_env("SALESFORCE_CURRENCY_FIELD"),
    )
    salesforce_on_hold_stage: str | None = Field(None, validation_alias=_env("SALESFORCE_ON_HOLD_STAGE"))
    salesforce_active_stage: str | None = Field(None, validation_alias=_env("SALESFORCE_ACTIVE_STAGE"))
    salesforce_won_stage: str | None = Field(None, validation_alias=_env("SALESFORCE_WON_STAGE"))
    salesforce_lost_stage: str | None = Field(None, validation_alias=_env("SALESFORCE_LOST_STAGE"))
    salesforce_help_picklist_values: Annotated[dict[str, str] | None, NoDecode] = Field(
        None, validation_alias=_env("SALESFORCE_HELP_PICKLIST_VALUES")
    )

    # -- storage -----------------------------------------------------------------------------------
    azure_webjobs_storage: SecretStr | None = Field(None, validation_alias=_env("AzureWebJobsStorage"))
    storage_account_name: str | None = Field(None, validation_alias=_env("AzureWebJobsStorage__accountName"))
    storage_table_service_uri: str | None = Field(None, validation_alias=_env("AzureWebJobsStorage__tableServiceUri"))
    storage_queue_service_uri: str | None = Field(None, validation_alias=_env("AzureWebJobsStorage__queueServiceUri"))
    storage_client_id: str | None = Field(None, validation_alias=_env("AzureWebJobsStorage__clientId"))
    links_table: str = Field("SyncLinks", validation_alias=_env("SYNC_LINKS_TABLE"))
    state_table: str = Field("SyncState", validation_alias=_env("SYNC_STATE_TABLE"))
    audit_table: str = Field("SyncAudit", validation_alias=_env("SYNC_AUDIT_TABLE"))

    # -- telemetry (shared/telemetry): on only when set ------------------------------------------------
    applicationinsights_connection_string: SecretStr | None = Field(
        None, validation_alias=_env("APPLICATIONINSIGHTS_CONNECTION_STRING")
    )

    # -- parsing -----------------------------------------------------------------------------------
    @field_validator("partner_center_webhook_cert_url_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("partner_center_webhook_cert_url_prefixes")
    @classmethod
    def _https_prefixes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one certificate URL prefix is required")
        for prefix in value:
            try:
                parts = urlsplit(prefix)
                host = parts.hostname
            except ValueError:
                raise ValueError(f"'{prefix}' is not a URL prefix") from None
            scheme = parts.scheme.lower()
            # Plain http only for emulators on this machine: compare the parsed host, so that
            # http://localhost.evil.example or http://127.0.0.1@evil.example do not pass as loopback.
            if not host or not (scheme == "https" or (scheme == "http" and host in LOOPBACK_HOSTS)):
                raise ValueError(f"'{prefix}' must be an https:// URL prefix")
        return value

    @field_validator("partner_center_refresh_token")
    @classmethod
    def _refresh_token_from_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None or info.data.get("partner_center_access_token") is not None:
            return value
        configured: Path | None = info.data.get("partner_center_refresh_token_file")
        path = configured or default_token_path()
        warn_about_stray_token_file(chosen=configured)
        try:
            token = read_token_file(path)
        except OSError as exc:
            raise ValueError(f"cannot read the token file {path} ({type(exc).__name__})") from None
        if token is None and configured is not None:
            raise ValueError(f"the token file {path} named by PARTNER_CENTER_REFRESH_TOKEN_FILE is missing or empty")
        return SecretStr(token) if token else None

    @field_validator("dataverse_help_option_values", "salesforce_help_picklist_values", mode="before")
    @classmethod
    def _parse_pairs(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [p for p in (s.strip() for s in value.split(",")) if p]
            if not all("=" in p for p in pairs):
                raise ValueError("expected Code=Value pairs separated by commas")
            return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
        return value

    @field_validator(
        "dataverse_url",
        "partner_center_api_url",
        "partner_center_webhook_api_url",
        "salesforce_login_url",
        "salesforce_token_url",
        "salesforce_instance_url",
        "key_vault_uri",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"'{value}' is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("crm_poll_schedule", "reconcile_schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        try:
            parse_schedule(value)
        except ScheduleError as exc:
            raise ValueError(f"not a valid NCRONTAB schedule: {exc}") from None
        return value

    @field_validator("referral_link_template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        allowed = ", ".join(f"{{{name}}}" for name in REFERRAL_LINK_PLACEHOLDERS)
        try:
            names = [field for _, field, _, _ in Formatter().parse(value) if field is not None]
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
        for name in names:
            if name not in REFERRAL_LINK_PLACEHOLDERS:
                shown = f"{{{name}}}" if name else "{} (a placeholder needs a name)"
                raise ValueError(f"unknown placeholder {shown}; the allowed placeholders are {allowed}")
        return value

    @field_validator("dataverse_url")
    @classmethod
    def _dataverse_root(cls, value: str | None) -> str | None:
        if value is not None:
            _bare_origin(value, "the environment's root URL, e.g. https://contoso.crm.dynamics.com")
        return value

    @field_validator("salesforce_login_url")
    @classmethod
    def _salesforce_my_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        shape = "your org's My Domain URL, https://<mydomain>.my.salesforce.com"
        _, host = _bare_origin(value, shape)
        if host in SALESFORCE_GENERIC_LOGIN_HOSTS:
            raise ValueError(f"{host} cannot be used: the app signs in to your org's My Domain; use {shape}")
        if host not in LOOPBACK_HOSTS and ".my." not in f".{host}":
            raise ValueError(f"'{value}' is not a My Domain URL; use {shape} (Setup > My Domain shows it)")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _resolved_key_vault_reference(cls, value: object) -> object:
        # The platform leaves the literal reference in place when it cannot read the secret.
        if isinstance(value, str) and value.strip().startswith("@Microsoft.KeyVault("):
            raise ValueError(
                "is an unresolved Key Vault reference: the secret is missing or the app's identity cannot read it"
            )
        return value

    @field_validator("conflict_rules")
    @classmethod
    def _valid_rules(cls, value: str) -> str:
        parse_field_owners(value)
        return value

    @property
    def conflict_owners(self) -> dict[str, Side]:
        """The owners ``CONFLICT_RULES`` sets; they override the CRM mapping's."""
        return parse_field_owners(self.conflict_rules)

    @field_validator("inbound_owner")
    @classmethod
    def _valid_routing(cls, value: str, info: ValidationInfo) -> str:
        routing = parse_routing(value)
        provider = info.data.get("crm_provider")  # absent when CRM_PROVIDER itself is wrong (that error says so)
        if provider is not None:
            _check_owner_ids(routing, provider)
        return value

    @property
    def inbound_routing(self) -> Routing:
        """The rules ``INBOUND_OWNER`` sets (checked at start-up); none: new opportunities keep the CRM's default."""
        return parse_routing(self.inbound_owner)

    @property
    def lease_margin_seconds(self) -> float:
        """How long before its lease row expires a worker stops writing: a write that passed its check just
        before then is in flight for at most one HTTP timeout, and another worker's clock may run ahead."""
        return self.http_timeout_seconds + LEASE_CLOCK_SKEW_SECONDS

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> Settings:
        # The lease is renewed every third of its length and writes stop one margin before it ends
        # (shared/sync/lease.py). Only a lease longer than three margins leaves the second renewal due
        # before that point, so one failed renewal (or a short storage hiccup) does not stop the job.
        # Inline Retry-After waits do not count: the HTTP client checks the lease again before each attempt.
        minimum = 3 * self.lease_margin_seconds
        if self.job_lease_seconds <= minimum:
            raise ValueError(
                f"JOB_LEASE_SECONDS ({self.job_lease_seconds}) must be more than 3 x (HTTP_TIMEOUT_SECONDS "
                f"({self.http_timeout_seconds:g}) + {LEASE_CLOCK_SKEW_SECONDS:g}s allowed clock skew) = {minimum:g}: "
                "a worker stops writing one HTTP timeout before its lease ends and renews it every third of it, "
                "so a shorter lease cannot survive one failed renewal; raise JOB_LEASE_SECONDS or lower "
                "HTTP_TIMEOUT_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _requirements(self) -> Settings:
        return self._require(self._crm_problems() + self._storage_problems() + self._partner_center_problems())

    def _require(self, problems: list[SettingProblem]) -> Settings:
        if problems:
            raise _Missing(problems)
        return self

    # Each section's required settings, so that a command can ask for only the sections it uses.
    def _storage_problems(self) -> list[SettingProblem]:
        if (
            self.azure_webjobs_storage
            or self.storage_account_name
            or (self.storage_table_service_uri and self.storage_queue_service_uri)
        ):
            return []
        return [
            SettingProblem(
                ("AzureWebJobsStorage",),
                "a connection string, or AzureWebJobsStorage__accountName for the managed identity, is required",
            )
        ]

    def _partner_center_problems(self) -> list[SettingProblem]:
        if self.partner_center_access_token:
            return []
        needed = {
            "PARTNER_CENTER_TENANT_ID": self.partner_center_tenant_id,
            "PARTNER_CENTER_CLIENT_ID": self.partner_center_client_id,
            "PARTNER_CENTER_REFRESH_TOKEN": self.partner_center_refresh_token,
        }
        missing = tuple(name for name, value in needed.items() if not value)
        if not missing:
            return []
        return [
            SettingProblem(
                missing,
                "Partner Center credentials: set PARTNER_CENTER_TENANT_ID, PARTNER_CENTER_CLIENT_ID and "
                "PARTNER_CENTER_REFRESH_TOKEN (run `cosell login` for the token; PARTNER_CENTER_ACCESS_TOKEN for "
                "emulators)",
            )
        ]

    def _crm_problems(self) -> list[SettingProblem]:
        problems: list[SettingProblem] = []
        if self.crm_provider == "salesforce":
            problems.extend(self._salesforce_problems())
        if self.dataverse_client_secret and not (
            self.dataverse_client_id and (self.dataverse_tenant_id or self.partner_center_tenant_id)
        ):
            problems.append(
                SettingProblem(
                    ("DATAVERSE_CLIENT_ID", "DATAVERSE_TENANT_ID"),
                    "DATAVERSE_CLIENT_SECRET needs DATAVERSE_CLIENT_ID and DATAVERSE_TENANT_ID",
                )
            )
        if self.crm_provider == "dynamics" and not self.dataverse_url:
            problems.append(
                SettingProblem(
                    ("DATAVERSE_URL",), "is required when CRM_PROVIDER=dynamics (https://ORG.crm.dynamics.com)"
                )
            )
        return problems

    def _salesforce_problems(self) -> list[SettingProblem]:
        problem = SettingProblem
        if self.salesforce_access_token:
            return (
                []
                if self.salesforce_instance_url
                else [problem(("SALESFORCE_INSTANCE_URL",), "is required with SALESFORCE_ACCESS_TOKEN")]
            )
        problems = []
        if not (self.salesforce_login_url or self.salesforce_token_url):
            problems.append(
                problem(
                    ("SALESFORCE_LOGIN_URL",),
                    "your My Domain URL (https://<mydomain>.my.salesforce.com) is required when "
                    "CRM_PROVIDER=salesforce",
                )
            )
        if not self.salesforce_client_id:
            problems.append(problem(("SALESFORCE_CLIENT_ID",), "is required when CRM_PROVIDER=salesforce"))
        if self.salesforce_auth_flow == "client_credentials" and not self.salesforce_client_secret:
            problems.append(
                problem(("SALESFORCE_CLIENT_SECRET",), "is required for SALESFORCE_AUTH_FLOW=client_credentials")
            )
        if self.salesforce_auth_flow == "jwt_bearer" and not (self.salesforce_username and self.salesforce_private_key):
            problems.append(
                problem(
                    ("SALESFORCE_USERNAME", "SALESFORCE_PRIVATE_KEY"),
                    "are required for SALESFORCE_AUTH_FLOW=jwt_bearer",
                )
            )
        return problems

    def credential_modes(self) -> dict[str, str]:
        """How each external system is authenticated (never the secret itself)."""
        if self.partner_center_access_token:
            pc = "static token (emulators/tests only)"
        else:
            pc = "refresh token" + (" + client secret" if self.partner_center_client_secret else "")
        if self.crm_provider == "salesforce":
            crm = "static token (emulators/tests only)" if self.salesforce_access_token else self.salesforce_auth_flow
        elif self.dataverse_access_token:
            crm = "static token (emulators/tests only)"
        elif self.dataverse_client_id and self.dataverse_client_secret:
            crm = "app registration (client secret)"
        else:
            crm = "managed identity / DefaultAzureCredential"
        storage = "connection string" if self.azure_webjobs_storage else "managed identity"
        return {"partnerCenter": pc, "crm": crm, "storage": storage}

    def static_tokens_in_use(self) -> list[str]:
        used = []
        if self.partner_center_access_token:
            used.append("PARTNER_CENTER_ACCESS_TOKEN")
        if self.dataverse_access_token:
            used.append("DATAVERSE_ACCESS_TOKEN")
        if self.salesforce_access_token:
            used.append("SALESFORCE_ACCESS_TOKEN")
        return used


def _setting_name(loc: tuple) -> str:
    if not loc:
        return "settings"
    field = Settings.model_fields.get(str(loc[0]))
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return str(loc[0])


class PartnerCenterSettings(Settings):
    """The same settings, requiring only what talking to Partner Center needs (operator commands such as
    ``register-webhook`` run from a laptop that has no storage or CRM configured)."""

    @model_validator(mode="after")
    def _requirements(self) -> Settings:
        return self._require(self._partner_center_problems())


class StorageSettings(Settings):
    """The same settings, requiring only the storage account: the operator commands that read the tables and
    queues (``status``, ``history``, ``poison``, ``replay-poison``) and the worker parking a job while the rest
    of the settings are missing."""

    @model_validator(mode="after")
    def _requirements(self) -> Settings:
        return self._require(self._storage_problems())


class StorageAndPartnerCenterSettings(Settings):
    """Storage and Partner Center, no CRM: ``reconcile`` reads Partner Center and enqueues jobs."""

    @model_validator(mode="after")
    def _requirements(self) -> Settings:
        return self._require(self._storage_problems() + self._partner_center_problems())


class CrmSettings(Settings):
    """The same settings, requiring none: ``python -m shared mapping show|check`` works from the CRM settings
    there are (the mapping alone when the CRM is not configured)."""

    @model_validator(mode="after")
    def _requirements(self) -> Settings:
        return self


def load_settings(
    *,
    partner_center_only: bool = False,
    crm_only: bool = False,
    storage_only: bool = False,
    storage_and_partner_center: bool = False,
    **overrides: object,
) -> Settings:
    """Read settings from the environment (and ``overrides``) or raise one SettingsError listing every problem.

    By default every section the app needs must be configured; the keyword switches ask for one section (or two)
    only, for operator commands that use no more. A value that is set is checked whichever is asked for."""
    kind: type[Settings] = Settings
    if partner_center_only:
        kind = PartnerCenterSettings
    elif crm_only:
        kind = CrmSettings
    elif storage_only:
        kind = StorageSettings
    elif storage_and_partner_center:
        kind = StorageAndPartnerCenterSettings
    try:
        return kind(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = _problems(exc)
        checked_together = any(not error.get("loc") for error in exc.errors(include_url=False, include_input=False))
    # Pydantic checks the settings together (what is required, the lease) only once each value is valid: check them
    # again with the invalid values left at their defaults, so that one start-up reports the missing settings too.
    invalid = {
        field: Settings.model_fields[field].get_default(call_default_factory=True)
        for problem in problems
        for field in _fields_named(problem.settings)
    }
    if invalid and not checked_together:
        try:
            kind(**{**overrides, **invalid})  # type: ignore[arg-type]
        except ValidationError as exc:
            reported = {name for problem in problems for name in problem.settings}
            problems += [p for p in _problems(exc) if not reported.intersection(p.settings)]
    raise SettingsError("Invalid configuration: " + " | ".join(map(str, problems)), problems)


def _problems(exc: ValidationError) -> list[SettingProblem]:
    problems: list[SettingProblem] = []
    for error in exc.errors(include_url=False, include_input=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Missing):
            problems.extend(cause.problems)
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        name = _setting_name(tuple(error.get("loc", ())))
        problems.append(SettingProblem(() if name == "settings" else (name,), message))
    return problems


def _fields_named(settings: tuple[str, ...]) -> list[str]:
    """The Settings fields behind setting names (a problem of the settings as a whole names none)."""
    by_name = {_setting_name((field,)).upper(): field for field in Settings.model_fields}
    return [by_name[name.upper()] for name in settings if name.upper() in by_name]
