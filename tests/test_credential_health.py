"""/api/status names why Partner Center credentials stopped working, and what to do: the refresh token expired or
was revoked, Partner Center demands MFA (900421), consent is missing; and it warns before the refresh token's
90-day inactivity expiry. The real app runs on a refresh token against the emulated identity platform (HTTPS) and
a Partner Center emulator that demands MFA, as since April 2026."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emulators.identity import IdentityEmulator
from shared import wiring
from shared.ports import CredentialFailure
from tests.e2e_stack import Stack

CLIENT = "00000000-0000-0000-0000-00000000c11e"


@pytest.fixture
def identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEmulator]:
    emulator = IdentityEmulator(client_id=CLIENT).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.write_ca_bundle(tmp_path / "identity-ca.pem")))
    yield emulator
    emulator.stop()


@pytest.fixture
def signed_in(make_stack, identity, monkeypatch):
    """A stack whose app lives on a refresh token, calling a Partner Center that checks for MFA."""

    def build(refresh_token: str) -> Stack:
        stack = make_stack(
            PARTNER_CENTER_ACCESS_TOKEN="",
            PARTNER_CENTER_AUTHORITY=identity.url,
            PARTNER_CENTER_TENANT_ID="contoso-tenant",
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_REFRESH_TOKEN=refresh_token,
        )
        monkeypatch.setattr(stack.pc, "required_token", None)  # the emulator reads the JWT's amr instead
        monkeypatch.setattr(stack.pc, "require_mfa", True)
        return stack

    return build


def _sync_one_referral(stack: Stack) -> None:
    stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)
    stack.host.drain(max_rounds=1)


def _failure(stack: Stack) -> dict:
    return stack.status()["credentials"]["lastFailure"]


def test_a_token_without_mfa_is_reported_as_mfa_required(signed_in, identity):
    stack = signed_in(identity.issue_refresh_token(mfa=False))
    _sync_one_referral(stack)
    failure = _failure(stack)
    assert failure["cause"] == "mfa-required" and "900421" in failure["message"]
    assert "run `python -m shared login` again with an MFA-capable account" in failure["whatToDo"]
    assert stack.pc.counters()["mfa_required"] >= 1


def test_an_expired_refresh_token_is_reported_with_the_login_to_run(signed_in, identity):
    stack = signed_in(identity.issue_refresh_token())
    identity.refuse_refresh("invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.")
    _sync_one_referral(stack)
    failure = _failure(stack)
    assert failure["cause"] == "refresh-token-expired" and "AADSTS700082" in failure["message"]
    assert "python -m shared login" in failure["whatToDo"]
    assert "expired or was revoked" in failure["summary"]


def test_missing_consent_is_reported_as_such(signed_in, identity):
    stack = signed_in(identity.issue_refresh_token())
    identity.refuse_refresh("invalid_grant", "AADSTS65001: The user or administrator has not consented to use the app.")
    _sync_one_referral(stack)
    failure = _failure(stack)
    assert failure["cause"] == "consent-missing"
    assert "grant consent" in failure["whatToDo"] and "Microsoft Partner" in failure["whatToDo"]


def test_each_use_of_the_refresh_token_is_recorded_and_an_idle_one_is_warned_about(signed_in, identity):
    stack = signed_in(identity.issue_refresh_token())
    before = datetime.now(UTC)
    _sync_one_referral(stack)
    health = stack.status()["credentials"]
    assert health["lastFailure"] is None, "an MFA sign-in's token is accepted"
    assert datetime.fromisoformat(health["refreshToken"]["lastUsedAt"]) >= before - timedelta(seconds=1)
    assert health["refreshToken"]["warning"] is None

    idle_since = datetime.now(UTC) - timedelta(days=80)
    wiring.container().store.save_token_redeemed(idle_since)
    warning = stack.status()["credentials"]["refreshToken"]["warning"]
    expires = (idle_since + timedelta(days=90)).date().isoformat()
    assert f"expires for inactivity on {expires}" in warning and "python -m shared login" in warning

    wiring.container().store.save_token_redeemed(datetime.now(UTC) - timedelta(days=91))
    assert "expired for inactivity" in stack.status()["credentials"]["refreshToken"]["warning"]


def test_a_later_refusal_without_a_known_cause_does_not_inherit_the_earlier_one(make_stack):
    stack = make_stack()
    store = wiring.container().store
    now = datetime.now(UTC)
    store.save_credential_failure(CredentialFailure("Partner Center", "401 (900421)", now, "mfa-required"))
    assert stack.status()["credentials"]["lastFailure"]["cause"] == "mfa-required"
    store.save_credential_failure(CredentialFailure("Dataverse", "401 refused", now))
    failure = stack.status()["credentials"]["lastFailure"]
    assert failure["service"] == "Dataverse" and failure["cause"] is None and failure["whatToDo"] is None
