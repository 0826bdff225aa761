"""Partner Center sign-in (device code) and keeping the rotating refresh token in Key Vault, against an
emulated identity platform and vault over HTTP."""

from __future__ import annotations

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
from shared.partner_center.login import device_code_sign_in

CLIENT = "00000000-0000-0000-0000-00000000c11e"


@pytest.fixture
def identity():
    emulator = IdentityEmulator(client_id=CLIENT).start()
    yield emulator
    emulator.stop()


def _approve_when_shown(identity):
    def show(message: str) -> None:
        assert "ABCD-EFGH" in message
        threading.Timer(0.1, identity.approve).start()

    return show


def test_device_code_sign_in_returns_a_refresh_token(identity):
    result = device_code_sign_in(identity.url, "tenant", CLIENT, _approve_when_shown(identity), sleep=lambda s: None)
    assert result.refresh_token in identity.refresh_tokens


def test_unknown_application_is_refused_readably(identity):
    with pytest.raises(AuthenticationError, match="unauthorized_client"):
        device_code_sign_in(identity.url, "tenant", "someone-else", print)


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
    assert provider().startswith("at-")
    assert "not stored in Key Vault" in caplog.text
    assert first not in caplog.text
