"""`python -m shared login` without a Key Vault keeps the refresh token in the operator's config folder,
private from the moment it exists, and never in the working directory (a checkout git and the release zip
would pick it up). Sign-in runs against the emulated identity platform over HTTPS."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators.identity import IdentityEmulator
from shared.__main__ import main
from shared.partner_center import token_file
from shared.partner_center.token_file import default_token_path, write_token_file

CLIENT = "00000000-0000-0000-0000-00000000c11e"


@pytest.fixture
def identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEmulator]:
    emulator = IdentityEmulator(client_id=CLIENT).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.write_ca_bundle(tmp_path / "identity-ca.pem")))
    yield emulator
    emulator.stop()


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An operator's machine: a config folder of their own and a checkout as the working directory."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("KEY_VAULT_URI", raising=False)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    return checkout


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def sign_in(identity: IdentityEmulator, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    monkeypatch.setenv("PARTNER_CENTER_AUTHORITY", identity.url)
    threading.Timer(0.3, identity.approve).start()
    return main(["login", "--tenant", "t", "--client-id", CLIENT, *extra])


def test_login_keeps_the_token_in_a_private_config_folder_not_the_checkout(
    identity, operator, tmp_path, monkeypatch, capsys
):
    assert sign_in(identity, monkeypatch) == 0
    stored = tmp_path / "config" / "cosell-connector" / "refresh-token.txt"
    assert stored == default_token_path()
    token = stored.read_text()
    assert token in identity.refresh_tokens
    assert mode(stored) == 0o600
    assert mode(stored.parent) == 0o700
    assert list(operator.iterdir()) == [], "nothing is written into the working directory"
    out = capsys.readouterr().out
    assert str(stored) in out and token not in out


def test_login_warns_about_an_old_token_file_in_the_checkout_and_leaves_it_alone(
    identity, operator, monkeypatch, caplog
):
    old = operator / "refresh-token.txt"
    old.write_text("rt-from-an-older-login")
    with caplog.at_level(logging.WARNING):
        assert sign_in(identity, monkeypatch) == 0
    warning = next(r.getMessage() for r in caplog.records if "refresh-token.txt" in r.getMessage())
    assert str(old) in warning and "move it" in warning and str(default_token_path()) in warning
    assert "rt-from-an-older-login" not in caplog.text
    assert old.read_text() == "rt-from-an-older-login"
    assert default_token_path().read_text() in identity.refresh_tokens


def test_the_file_is_created_private_whatever_the_umask(operator):
    previous = os.umask(0)
    try:
        stored = write_token_file("rt-1")
    finally:
        os.umask(previous)
    assert mode(stored) == 0o600 and mode(stored.parent) == 0o700


def test_a_new_token_replaces_an_older_readable_file_in_one_step(operator):
    stored = write_token_file("rt-1")
    stored.chmod(0o644)
    stored.parent.chmod(0o755)
    assert write_token_file("rt-2") == stored
    assert stored.read_text() == "rt-2"
    assert mode(stored) == 0o600 and mode(stored.parent) == 0o700
    assert [p.name for p in stored.parent.iterdir()] == ["refresh-token.txt"], "no temporary file left behind"


def test_a_failed_write_leaves_no_partial_token(operator, monkeypatch):
    def broken_replace(source: str, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(token_file.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_token_file("rt-1")
    assert list(default_token_path().parent.iterdir()) == []
