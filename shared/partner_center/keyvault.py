"""Writing the rotated Partner Center refresh token to Key Vault (REST API, managed identity).

Entra ID issues a new refresh token with each exchange; storing it keeps the app signed in for as long
as it keeps running, without anyone signing in again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import requests

from ..domain.errors import AuthenticationError, ExternalServiceError

log = logging.getLogger(__name__)
API_VERSION = "7.4"
VAULT_SCOPE = "https://vault.azure.net/.default"


def managed_identity_token() -> str:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    try:
        return str(DefaultAzureCredential().get_token(VAULT_SCOPE).token)
    except ClientAuthenticationError:
        raise AuthenticationError(
            "Key Vault", "no Azure credential available (sign in with `az login`, or run with a managed identity)"
        ) from None


class KeyVaultSecrets:
    def __init__(
        self,
        vault_uri: str,
        token: Callable[[], str] | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.vault_uri = vault_uri.rstrip("/")
        self._token_source, self._timeout = token, timeout
        self._session = session or requests.Session()

    def _token(self) -> str:
        return self._token_source() if self._token_source is not None else managed_identity_token()

    def set_secret(self, name: str, value: str) -> None:
        try:
            response = self._session.put(
                f"{self.vault_uri}/secrets/{name}",
                params={"api-version": API_VERSION},
                json={"value": value, "contentType": "text/plain"},
                headers={"Authorization": f"Bearer {self._token()}"},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise ExternalServiceError("Key Vault", f"could not reach the vault ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise ExternalServiceError("Key Vault", f"could not store secret '{name}'", response.status_code)


def persist_rotated_token(vault: KeyVaultSecrets, secret_name: str) -> Callable[[str], None]:
    """A rotation hook that never fails the sync: a write error is logged and retried at the next rotation."""

    def store(refresh_token: str) -> None:
        try:
            vault.set_secret(secret_name, refresh_token)
        except ExternalServiceError as exc:
            log.warning("the rotated Partner Center refresh token was not stored in Key Vault: %s", exc)

    return store
