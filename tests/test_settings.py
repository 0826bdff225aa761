"""Settings: one object; missing or invalid values fail with a message naming the setting."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.partner_center.token_file import write_token_file
from shared.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "DATAVERSE_URL": "https://org.crm.dynamics.com",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "PARTNER_CENTER_ACCESS_TOKEN": "static-token-value",
}


@pytest.fixture
def env(monkeypatch, tmp_path):
    # A refresh token left by `python -m shared login` on this machine must not leak into these tests.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for key in list(__import__("os").environ):
        if key.upper().startswith(
            ("DATAVERSE_", "PARTNER_CENTER_", "AZUREWEBJOBSSTORAGE", "CRM_", "CHECKMARK", "SYNC_")
        ):
            monkeypatch.delenv(key, raising=False)
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_defaults_follow_the_contract(env):
    s = load_settings()
    assert s.crm_provider == "dynamics"
    assert s.checkmark_enabled is True and s.sync_cosell_only is True
    assert s.crm_poll_schedule == "*/30 * * * * *"
    assert s.reconcile_schedule == "0 0 * * * *"
    assert s.partner_center_api_url == "https://api.partner.microsoft.com"
    assert s.partner_center_webhook_api_url == "https://api.partnercenter.microsoft.com"
    assert s.links_table == "SyncLinks" and s.state_table == "SyncState" and s.audit_table == "SyncAudit"
    # Field names are not settings defaults any more: the CRM's shipped mapping names them, settings override it.
    from shared.wiring import load_crm_mapping

    assert s.dataverse_field_referral_id is None
    assert load_crm_mapping(s).mapping.column("referral_id") == "new_referralidentifier"


def test_missing_required_settings_are_named(env):
    env.delenv("DATAVERSE_URL")
    env.delenv("AzureWebJobsStorage")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "DATAVERSE_URL" in str(info.value)
    assert "AzureWebJobsStorage" in str(info.value)


def test_invalid_value_names_the_setting_and_hides_secrets(env):
    env.setenv("CHECKMARK_ENABLED", "perhaps")
    env.setenv("PARTNER_CENTER_ACCESS_TOKEN", "super-secret-token")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "CHECKMARK_ENABLED" in str(info.value)
    assert "super-secret-token" not in str(info.value)


def test_switches_and_lists_parse(env):
    env.setenv("CHECKMARK_ENABLED", "false")
    env.setenv("SYNC_COSELL_ONLY", "0")
    env.setenv("PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES", "https://a.example/cert/, https://b.example/")
    s = load_settings()
    assert s.checkmark_enabled is False and s.sync_cosell_only is False
    assert s.partner_center_webhook_cert_url_prefixes == ["https://a.example/cert/", "https://b.example/"]


def test_insecure_certificate_prefix_is_refused(env):
    env.setenv("PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES", "http://evil.example/")
    with pytest.raises(SettingsError, match="PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES"):
        load_settings()


def test_secret_repr_is_masked(env):
    s = load_settings()
    assert "static-token-value" not in repr(s)


def test_unresolved_key_vault_reference_is_named(env):
    env.delenv("PARTNER_CENTER_ACCESS_TOKEN")
    env.setenv("PARTNER_CENTER_TENANT_ID", "t")
    env.setenv("PARTNER_CENTER_CLIENT_ID", "c")
    env.setenv("PARTNER_CENTER_REFRESH_TOKEN", "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/x/)")
    with pytest.raises(SettingsError, match="PARTNER_CENTER_REFRESH_TOKEN: is an unresolved Key Vault reference"):
        load_settings()


def test_empty_values_count_as_unset(env):
    env.setenv("PARTNER_CENTER_WEBHOOK_CA_BUNDLE", "")
    env.setenv("CRM_POLL_SCHEDULE", "")
    s = load_settings()
    assert s.partner_center_webhook_ca_bundle is None
    assert s.crm_poll_schedule == "*/30 * * * * *"


def test_the_crm_is_polled_every_30_seconds_by_default(env):
    """A CRM change waits at most one poll interval before it is enqueued; the sample settings and the
    Bicep (tests/test_infra.py) carry the same default."""
    from shared.schedule import parse

    schedule = parse(load_settings().crm_poll_schedule)
    moment = datetime(2026, 3, 1, 10, 0, 7, tzinfo=UTC)
    fired = []
    for _ in range(6):
        moment = schedule.next_after(moment)
        fired.append(moment)
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(fired)} == {30}
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))
    assert sample["Values"]["CRM_POLL_SCHEDULE"] == load_settings().crm_poll_schedule


def test_conflict_rules_are_validated(env):
    env.setenv("CONFLICT_RULES", "notes=pc,deal_value=crm")
    assert load_settings().conflict_owners["notes"] == "pc"
    env.setenv("CONFLICT_RULES", "notes=whoever")
    with pytest.raises(SettingsError, match="CONFLICT_RULES"):
        load_settings()


def test_partner_center_only_settings_need_no_storage_or_crm(env):
    env.delenv("DATAVERSE_URL")
    env.delenv("AzureWebJobsStorage")
    assert load_settings(partner_center_only=True).partner_center_access_token is not None
    env.delenv("PARTNER_CENTER_ACCESS_TOKEN")
    with pytest.raises(SettingsError, match="PARTNER_CENTER_REFRESH_TOKEN"):
        load_settings(partner_center_only=True)


def test_a_lease_one_http_call_could_outlive_is_refused_at_start_up(env):
    for name in ("JOB_LEASE_SECONDS", "HTTP_TIMEOUT_SECONDS", "MAX_INLINE_RETRY_AFTER_SECONDS"):
        env.delenv(name, raising=False)
    defaults = load_settings()
    assert defaults.job_lease_seconds == 120 and defaults.http_timeout_seconds == 30
    assert defaults.lease_margin_seconds == 35  # the defaults keep a valid lease: 120 > 3 x 35
    env.setenv("HTTP_TIMEOUT_SECONDS", "40")  # 3 x (40 + 5) = 135: the default lease is now too short
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "JOB_LEASE_SECONDS (120) must be more than 3 x (HTTP_TIMEOUT_SECONDS (40)" in str(info.value)
    assert "= 135" in str(info.value)
    env.setenv("JOB_LEASE_SECONDS", "136")
    assert load_settings().job_lease_seconds == 136


def test_a_started_job_may_not_wait_past_the_function_timeout(env):
    """A job that has had an answer waits up to MAX_STARTED_JOB_WAIT_SECONDS inline; past 300 s (Dataverse's window,
    the longest Retry-After it sets) it would only risk host.json's 10-minute functionTimeout."""
    env.delenv("MAX_STARTED_JOB_WAIT_SECONDS", raising=False)
    assert load_settings().max_started_job_wait_seconds == 120
    env.setenv("MAX_STARTED_JOB_WAIT_SECONDS", "301")
    with pytest.raises(SettingsError, match="MAX_STARTED_JOB_WAIT_SECONDS"):
        load_settings()
    env.setenv("MAX_STARTED_JOB_WAIT_SECONDS", "300")
    assert load_settings().max_started_job_wait_seconds == 300


@pytest.mark.parametrize(
    "prefix",
    [
        "http://localhost.evil.example/cert/",
        "http://127.0.0.1.evil.example/cert/",
        "http://localhostevil.example/cert/",
        "http://localhost@evil.example/cert/",
        "http://127.0.0.1:80@evil.example/cert/",
        "http://[::2]/cert/",
        "http://10.0.0.1/cert/",
    ],
)
def test_plain_http_certificate_prefix_must_name_a_loopback_host(env, prefix):
    env.setenv("PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES", prefix)
    with pytest.raises(SettingsError, match="PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES"):
        load_settings()


@pytest.mark.parametrize(
    "prefix",
    ["http://localhost:10000/cert/", "http://127.0.0.1:8080/cert/", "http://[::1]:9000/cert/", "HTTP://LocalHost/c/"],
)
def test_plain_http_certificate_prefix_on_loopback_is_allowed_for_emulators(env, prefix):
    env.setenv("PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES", prefix)
    assert load_settings().partner_center_webhook_cert_url_prefixes == [prefix]


def _signed_in_without_static_token(env):
    env.delenv("PARTNER_CENTER_ACCESS_TOKEN")
    env.setenv("PARTNER_CENTER_TENANT_ID", "t")
    env.setenv("PARTNER_CENTER_CLIENT_ID", "c")


def test_refresh_token_is_read_from_the_per_user_file_login_wrote(env, tmp_path):
    _signed_in_without_static_token(env)
    stored = write_token_file("rt-from-login")
    assert stored == tmp_path / "config" / "cosell-connector" / "refresh-token.txt"
    settings = load_settings(partner_center_only=True)
    assert settings.partner_center_refresh_token.get_secret_value() == "rt-from-login"
    env.setenv("PARTNER_CENTER_REFRESH_TOKEN", "rt-from-setting")
    assert load_settings(partner_center_only=True).partner_center_refresh_token.get_secret_value() == "rt-from-setting"


def test_refresh_token_file_setting_names_another_file(env, tmp_path):
    _signed_in_without_static_token(env)
    elsewhere = write_token_file("rt-elsewhere", tmp_path / "vaultless" / "token")
    env.setenv("PARTNER_CENTER_REFRESH_TOKEN_FILE", str(elsewhere))
    assert load_settings(partner_center_only=True).partner_center_refresh_token.get_secret_value() == "rt-elsewhere"
    env.setenv("PARTNER_CENTER_REFRESH_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="PARTNER_CENTER_REFRESH_TOKEN_FILE is missing") as info:
        load_settings(partner_center_only=True)
    assert "rt-elsewhere" not in str(info.value)


def test_a_token_file_in_the_working_directory_is_not_used_but_warned_about(env, tmp_path, caplog):
    _signed_in_without_static_token(env)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "refresh-token.txt").write_text("rt-in-the-repo")
    env.chdir(checkout)
    with pytest.raises(SettingsError, match="PARTNER_CENTER_REFRESH_TOKEN"):
        load_settings(partner_center_only=True)
    assert "refresh-token.txt" in caplog.text and "move it" in caplog.text
    assert "rt-in-the-repo" not in caplog.text


# -- checked at start-up (issue 13): schedules, placeholders, URL shapes, several problems at once --------------------
@pytest.mark.parametrize("name", ["CRM_POLL_SCHEDULE", "RECONCILE_SCHEDULE"])
@pytest.mark.parametrize(
    ("schedule", "complaint"),
    [
        ("*/30 * * *", "has 4 fields; NCRONTAB needs six"),
        ("0 70 * * * *", "minute: '70' is outside"),
        ("0 0 0 L * *", "day: 'L' is not a number"),
        ("0 0 0 30 2 *", "never fires"),
    ],
)
def test_a_malformed_schedule_is_refused_naming_the_setting_and_field(env, name, schedule, complaint):
    env.setenv(name, schedule)
    with pytest.raises(SettingsError, match=f"{name}: not a valid NCRONTAB schedule: .*{complaint}") as info:
        load_settings()
    assert info.value.names == [name]


def test_six_field_ncrontab_with_seconds_and_names_is_accepted(env):
    env.setenv("CRM_POLL_SCHEDULE", "15 */2 8-18 * * Mon-Fri")
    env.setenv("RECONCILE_SCHEDULE", "0 0 * * *")  # five fields: the host reads them with 0 seconds
    settings = load_settings()
    assert settings.crm_poll_schedule == "15 */2 8-18 * * Mon-Fri"


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("https://partner.microsoft.com/referrals/{referralId}", "unknown placeholder {referralId}"),
        ("https://example.org/{referral_id}/{engagement}", "unknown placeholder {engagement}"),
        ("https://example.org/{}", "unknown placeholder {} \\(a placeholder needs a name\\)"),
        ("https://example.org/{referral_id", "not a valid template"),
    ],
)
def test_an_unknown_referral_link_placeholder_is_named_with_the_allowed_ones(env, template, complaint):
    env.setenv("REFERRAL_LINK_TEMPLATE", template)
    with pytest.raises(SettingsError, match=f"REFERRAL_LINK_TEMPLATE: {complaint}") as info:
        load_settings()
    if "unknown" in complaint:
        assert str(info.value).endswith("the allowed placeholders are {referral_id}")


def test_a_referral_link_template_with_the_known_placeholder_is_accepted(env):
    env.setenv("REFERRAL_LINK_TEMPLATE", "https://crm.example/referral?id={referral_id}&x={{literal}}")
    assert load_settings().referral_link_template.endswith("{{literal}}")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("https://contoso.crm.dynamics.com/api/data/v9.2", "must be the root URL with no path"),
        ("http://contoso.crm.dynamics.com", "must use https://"),
        ("https://contoso.crm.dynamics.com?x=1", "must be the root URL with no path"),
        ("contoso.crm.dynamics.com", "is not an http\\(s\\) URL"),
    ],
)
def test_a_dataverse_url_that_is_not_the_environment_root_is_refused(env, url, complaint):
    env.setenv("DATAVERSE_URL", url)
    with pytest.raises(SettingsError, match=f"DATAVERSE_URL: .*{complaint}"):
        load_settings()


@pytest.mark.parametrize(
    "url",
    [
        "https://contoso.crm4.dynamics.com/",
        "http://127.0.0.1:8081",
        "http://localhost:5000",
        "https://x.crm.dynamics.cn",
    ],
)
def test_dataverse_roots_and_local_emulators_are_accepted(env, url):
    env.setenv("DATAVERSE_URL", url)
    assert load_settings().dataverse_url == url.rstrip("/")


def _salesforce(env, login_url: str) -> None:
    env.setenv("CRM_PROVIDER", "salesforce")
    env.setenv("SALESFORCE_CLIENT_ID", "consumer-key")
    env.setenv("SALESFORCE_CLIENT_SECRET", "consumer-secret")
    env.setenv("SALESFORCE_LOGIN_URL", login_url)


@pytest.mark.parametrize("host", ["login.salesforce.com", "test.salesforce.com"])
def test_the_generic_salesforce_login_hosts_are_refused_pointing_to_my_domain(env, host):
    _salesforce(env, f"https://{host}")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert f"SALESFORCE_LOGIN_URL: {host} cannot be used" in message
    assert "use your org's My Domain URL, https://<mydomain>.my.salesforce.com" in message
    assert "consumer-secret" not in message


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("https://contoso.lightning.force.com", "is not a My Domain URL"),
        ("http://contoso.my.salesforce.com", "must use https://"),
        ("https://contoso.my.salesforce.com/services/oauth2/token", "no path"),
    ],
)
def test_a_salesforce_login_url_that_is_not_a_my_domain_root_is_refused(env, url, complaint):
    _salesforce(env, url)
    with pytest.raises(SettingsError, match=f"SALESFORCE_LOGIN_URL: .*{complaint}"):
        load_settings()


@pytest.mark.parametrize(
    "url",
    ["https://contoso.my.salesforce.com", "https://contoso--uat.sandbox.my.salesforce.com", "http://127.0.0.1:9000"],
)
def test_my_domain_urls_and_local_emulators_are_accepted(env, url):
    _salesforce(env, url)
    assert load_settings().salesforce_login_url == url


def test_several_problems_are_reported_together_each_naming_its_setting(env):
    env.delenv("DATAVERSE_URL")
    env.delenv("PARTNER_CENTER_ACCESS_TOKEN")
    env.setenv("RECONCILE_SCHEDULE", "hourly")
    env.setenv("REFERRAL_LINK_TEMPLATE", "https://x/{id}")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.names == [
        "RECONCILE_SCHEDULE",
        "REFERRAL_LINK_TEMPLATE",
        "DATAVERSE_URL",
        "PARTNER_CENTER_TENANT_ID",
        "PARTNER_CENTER_CLIENT_ID",
        "PARTNER_CENTER_REFRESH_TOKEN",
    ]
    text = str(info.value)
    for each in ("RECONCILE_SCHEDULE: not a valid", "REFERRAL_LINK_TEMPLATE: unknown", "DATAVERSE_URL: is required"):
        assert each in text


def test_operator_commands_ask_only_for_the_sections_they_use(env):
    env.delenv("DATAVERSE_URL")
    env.delenv("PARTNER_CENTER_ACCESS_TOKEN")
    assert load_settings(storage_only=True).azure_webjobs_storage is not None
    with pytest.raises(SettingsError) as info:
        load_settings(storage_and_partner_center=True)
    assert "DATAVERSE_URL" not in info.value.names and "PARTNER_CENTER_REFRESH_TOKEN" in info.value.names
    env.delenv("AzureWebJobsStorage")
    with pytest.raises(SettingsError) as info:
        load_settings(storage_only=True)
    assert info.value.names == ["AzureWebJobsStorage"]
    env.setenv("DATAVERSE_URL", "http://contoso.crm.dynamics.com")  # a value that is set is checked all the same
    env.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    with pytest.raises(SettingsError, match=r"DATAVERSE_URL: .*must use https://"):
        load_settings(storage_only=True)
