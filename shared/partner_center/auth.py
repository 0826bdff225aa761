"""Bearer tokens for the Partner Center APIs.

The Referrals API accepts only delegated (App+User) tokens, so production uses a refresh token obtained
once by an interactive sign-in (``python -m shared login``) and exchanged for access tokens here. A static
token exists for emulators and tests. Providers are plain callables returning the token, which is what
:class:`shared.httpclient.ApiClient` expects.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydantic import SecretStr

from ..domain.errors import AuthenticationError, TransientError
from ..token_cache import CachedToken

log = logging.getLogger(__name__)

SERVICE = "Partner Center"
REFERRALS_SCOPE = "https://api.partner.microsoft.com/.default offline_access"
WEBHOOKS_SCOPE = "https://api.partnercenter.microsoft.com/.default offline_access"
REFRESH_MARGIN_SECONDS = 300.0
_AADSTS = re.compile(r"AADSTS\d+")


class StaticToken:
    """A fixed bearer token (emulators and tests only)."""

    def __init__(self, secret: str | SecretStr) -> None:
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not value:
            raise AuthenticationError(SERVICE, "the static access token is empty")
        self._secret = value

    def __call__(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return "StaticToken(***)"


class _RefreshTokenHolder:
    """The current refresh token, shared by providers of different scopes so a rotation reaches all."""

    def __init__(self, refresh_token: str) -> None:
        self.lock = threading.Lock()
        self.value = refresh_token


class RefreshTokenProvider:
    """Exchanges a refresh token at the Microsoft identity platform v2 endpoint and caches the result."""

    def __init__(
        self,
        authority: str,
        tenant_id: str,
        client_id: str,
        refresh_token: str | SecretStr | _RefreshTokenHolder,
        client_secret: str | SecretStr | None = None,
        scope: str = REFERRALS_SCOPE,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_rotate: Callable[[str], None] | None = None,
        on_redeemed: Callable[[], None] | None = None,
    ) -> None:
        if not tenant_id or not client_id:
            raise AuthenticationError(SERVICE, "tenant id and client id are required for token refresh")
        self.token_url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self.tenant_id, self.client_id, self.scope = tenant_id, client_id, scope
        if isinstance(refresh_token, _RefreshTokenHolder):
            self._holder = refresh_token
        else:
            raw = refresh_token.get_secret_value() if isinstance(refresh_token, SecretStr) else refresh_token
            if not raw:
                raise AuthenticationError(SERVICE, "the refresh token is empty; run the login command")
            self._holder = _RefreshTokenHolder(raw)
        secret = client_secret.get_secret_value() if isinstance(client_secret, SecretStr) else client_secret
        self._client_secret = secret or None
        self._session = session or requests.Session()
        self._timeout = timeout
        self._clock = clock
        self._on_rotate = on_rotate
        self._on_redeemed = on_redeemed
        self._cached = CachedToken(self._redeem, REFRESH_MARGIN_SECONDS, clock)

    def __repr__(self) -> str:
        return f"RefreshTokenProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, scope={self.scope!r})"

    def with_scope(self, scope: str) -> RefreshTokenProvider:
        """A provider for another audience (e.g. the Webhooks API) sharing the same refresh token; it keeps an
        access token of its own."""
        other = copy.copy(self)
        other.scope = scope
        other._cached = CachedToken(other._redeem, REFRESH_MARGIN_SECONDS, self._clock)
        return other

    def __call__(self) -> str:
        return self._cached()

    def invalidate(self) -> None:
        """Forget the cached access token (e.g. after a 401) so the next call refreshes."""
        self._cached.invalidate()

    def _redeem(self) -> tuple[str, float]:
        with self._holder.lock:
            form = {
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "refresh_token": self._holder.value,
                "scope": self.scope,
            }
            if self._client_secret:
                form["client_secret"] = self._client_secret
            payload = self._post(form)
            token = payload.get("access_token")
            if not isinstance(token, str) or not token:
                raise AuthenticationError(SERVICE, "the token endpoint answered without an access token")
            rotated = payload.get("refresh_token")
            if isinstance(rotated, str) and rotated and rotated != self._holder.value:
                self._holder.value = rotated  # the old one may stop working once a new one is issued
                if self._on_rotate is not None:
                    self._on_rotate(rotated)
        expires_at = self._clock() + _expires_in(payload)
        if self._on_redeemed is not None:
            # Entra ends a refresh token after 90 days without use; the health check warns from this record.
            try:
                self._on_redeemed()
            except Exception as exc:  # the token works; a missed record must not fail the call that needed it
                log.warning("the Partner Center refresh token's use was not recorded: %s", type(exc).__name__)
        return token, expires_at

    def _post(self, form: dict[str, str]) -> dict[str, Any]:
        try:
            response = self._session.post(self.token_url, data=form, timeout=self._timeout)
        except requests.RequestException as exc:
            raise TransientError(SERVICE, f"could not reach the token endpoint ({type(exc).__name__})") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(SERVICE, "the token endpoint is unavailable", response.status_code)
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if response.status_code != 200:
            raise AuthenticationError(
                SERVICE, _failure_message(payload), response.status_code, str(payload.get("error") or "") or None
            )
        return payload


def _expires_in(payload: dict[str, Any]) -> float:
    try:
        return max(0.0, float(payload.get("expires_in", 3600)))
    except (TypeError, ValueError):
        return 3600.0


def _failure_message(payload: dict[str, Any]) -> str:
    # Only the error code and the AADSTS number: the description can echo request details.
    code = str(payload.get("error") or "unknown_error")
    sts = _AADSTS.search(str(payload.get("error_description") or ""))
    hint = " Run `python -m shared login` to sign in again." if code == "invalid_grant" else ""
    return f"token refresh was refused ({code}{', ' + sts.group(0) if sts else ''}).{hint}"


@dataclass(frozen=True)
class TokenVault:
    """Where a rotated refresh token is kept: a Key Vault and the name of the secret in it."""

    uri: str
    secret_name: str


@dataclass(frozen=True)
class PartnerCenterCredentials:
    """How the app signs in to Partner Center: a refresh token exchanged for access tokens, each rotated one stored
    in ``vault`` when there is one."""

    authority: str = "https://login.microsoftonline.com"
    tenant_id: str | None = None
    client_id: str | None = None
    refresh_token: SecretStr | None = None
    client_secret: SecretStr | None = None
    vault: TokenVault | None = None
    # The file the refresh token was read from (``login`` without a vault): each rotated one is written back there.
    token_file: Path | None = None
    timeout: float = 30.0


def partner_center_token_provider(
    credentials: PartnerCenterCredentials,
    scope: str = REFERRALS_SCOPE,
    *,
    on_redeemed: Callable[[], None] | None = None,
) -> RefreshTokenProvider:
    """The refresh-token exchange (``on_redeemed`` is told of each successful redemption)."""
    if not (credentials.tenant_id and credentials.client_id and credentials.refresh_token):
        raise AuthenticationError(
            SERVICE,
            "no credentials configured: set PARTNER_CENTER_TENANT_ID, "
            "PARTNER_CENTER_CLIENT_ID and PARTNER_CENTER_REFRESH_TOKEN",
        )
    return RefreshTokenProvider(
        credentials.authority,
        credentials.tenant_id,
        credentials.client_id,
        credentials.refresh_token,
        credentials.client_secret,
        scope,
        timeout=credentials.timeout,
        on_rotate=_rotation_hook(credentials.vault, credentials.token_file),
        on_redeemed=on_redeemed,
    )


def _rotation_hook(vault: TokenVault | None, token_file: Path | None) -> Callable[[str], None] | None:
    if vault is not None:
        from .keyvault import KeyVaultSecrets, persist_rotated_token

        return persist_rotated_token(KeyVaultSecrets(vault.uri), vault.secret_name)
    if token_file is not None:
        from .token_file import keep_rotated_token

        return keep_rotated_token(token_file)
    return None
