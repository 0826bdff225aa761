"""Partner Center sign-in (device code, on MSAL) and keeping the rotating refresh token in Key Vault, against an
emulated identity platform and vault over HTTPS."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading

import pytest

from emulators.identity import IdentityEmulator
from shared.__main__ import main
from shared.domain.errors import AuthenticationError
from shared.partner_center import keyvault
from shared.partner_center.auth import RefreshTokenProvider
from shared.partner_center.keyvault import KeyVaultSecrets, persist_rotated_token
from shared.partner_center.login import LoginConfig, device_code_sign_in

CLIENT = "00000000-0000-0000-0000-00000000c11e"


@pytest.fixture
def identity(tmp_path, monkeypatch):
    emulator = IdentityEmulator(client_id=CLIENT).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.write_ca_bundle(tmp_path / "identity-ca.pem")))
    yield emulator
    emulator.stop()


def _approve_when_shown(identity):
    def show(message: str) -> None:
        assert "ABCD-EFGH" in message
        threading.Timer(0.1, identity.approve).start()

    return show


def test_device_code_sign_in_returns_a_refresh_token(identity):
    result = device_code_sign_in(LoginConfig(identity.url, "tenant", CLIENT), _approve_when_shown(identity))
    assert result.refresh_token in identity.refresh_tokens


def test_unknown_application_is_refused_readably(identity):
    with pytest.raises(AuthenticationError, match="unauthorized_client"):
        device_code_sign_in(LoginConfig(identity.url, "tenant", "someone-else"), print)


def test_login_command_writes_a_private_file_and_never_prints_the_token(identity, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARTNER_CENTER_AUTHORITY", identity.url)
    monkeypatch.delenv("KEY_VAULT_URI", raising=False)
    threading.Timer(0.3, identity.approve).start()
    target = tmp_path / "rt.txt"
    assert main(["login", "--tenant", "t", "--client-id", CLIENT, "--output", str(target)]) == 0
    token = target.read_text()
    assert token in identity.refresh_tokens
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert token not in capsys.readouterr().out


def test_login_command_can_store_the_token_in_key_vault(identity, monkeypatch):
    monkeypatch.setenv("PARTNER_CENTER_AUTHORITY", identity.url)
    monkeypatch.setattr(keyvault, "managed_identity_token", lambda: "kv-token")
    threading.Timer(0.3, identity.approve).start()
    assert main(["login", "--tenant", "t", "--client-id", CLIENT, "--key-vault-uri", identity.url]) == 0
    assert identity.secrets["partner-center-refresh-token"] in identity.refresh_tokens


def test_rotated_refresh_token_is_kept_in_key_vault(identity):
    first = identity.issue_refresh_token()
    vault = KeyVaultSecrets(identity.url, token=lambda: "kv-token")
    provider = RefreshTokenProvider(
        identity.url, "t", CLIENT, first, on_rotate=persist_rotated_token(vault, "partner-center-refresh-token")
    )
    provider()
    stored = identity.secrets["partner-center-refresh-token"]
    assert stored != first and stored in identity.refresh_tokens
    provider.invalidate()
    provider()  # the rotated token works, the first one has been retired
    assert identity.secrets["partner-center-refresh-token"] != stored
    assert first not in identity.refresh_tokens


def test_vault_failure_does_not_break_the_token_exchange(identity, caplog):
    first = identity.issue_refresh_token()
    broken = KeyVaultSecrets("http://127.0.0.1:9", token=lambda: "kv", timeout=0.5)
    provider = RefreshTokenProvider(
        identity.url, "t", CLIENT, first, on_rotate=persist_rotated_token(broken, "partner-center-refresh-token")
    )
    assert _audience(provider()) == "https://api.partner.microsoft.com"
    assert "not stored in Key Vault" in caplog.text
    assert first not in caplog.text


def _audience(access_token: str) -> str:
    payload = access_token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["aud"])


def test_a_rotated_refresh_token_read_from_the_token_file_is_written_back_to_it(identity, tmp_path, monkeypatch):
    # Found by the first-day walk: without a vault the rotated token was dropped, so the next command (or the next
    # `make run`) presented the retired one and Partner Center sign-in failed with AADSTS70008.
    from shared import wiring
    from shared.partner_center.auth import partner_center_token_provider
    from shared.partner_center.token_file import write_token_file
    from shared.settings import load_settings

    token_file = tmp_path / "rt.txt"
    first = identity.issue_refresh_token()
    write_token_file(first, token_file)
    for name in ("KEY_VAULT_URI", "PARTNER_CENTER_ACCESS_TOKEN", "PARTNER_CENTER_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    def provider_from_the_file():
        settings = load_settings(
            partner_center_only=True,
            PARTNER_CENTER_AUTHORITY=identity.url,
            PARTNER_CENTER_TENANT_ID="t",
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_REFRESH_TOKEN_FILE=str(token_file),
        )
        return partner_center_token_provider(wiring.partner_center_credentials(settings))

    assert _audience(provider_from_the_file()()) == "https://api.partner.microsoft.com"
    rotated = token_file.read_text()
    assert rotated != first and rotated in identity.refresh_tokens
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert _audience(provider_from_the_file()()) == "https://api.partner.microsoft.com"  # the next command signs in
