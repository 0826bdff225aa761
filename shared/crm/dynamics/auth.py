"""Dataverse access tokens from managed identity or an app registration (wiring picks one, or a static token).

Tokens come from azure-identity and are cached until shortly before they expire, so a burst of jobs asks
the identity endpoint once. Failures are reported by exception type only, because credential errors can
quote configuration values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...domain.errors import AuthenticationError, TransientError
from ...token_cache import CachedToken

SERVICE = "Dataverse"
TOKEN_REFRESH_MARGIN_SECONDS = 300.0


class AzureIdentityToken:
    """Bearer tokens from azure-identity, cached until shortly before they expire."""

    def __init__(
        self, scope: str, credential_factory: Callable[[], Any] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._scope = scope
        self._factory = credential_factory or _default_credential
        self._credential: Any = None
        self._cached = CachedToken(self._fetch, TOKEN_REFRESH_MARGIN_SECONDS, clock)

    def __call__(self) -> str:
        return self._cached()

    def _fetch(self) -> tuple[str, float]:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            if self._credential is None:
                self._credential = self._factory()
            access = self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            # Only the exception type: credential errors can quote configuration values.
            raise AuthenticationError(
                SERVICE, f"no access token from the Azure identity chain ({type(exc).__name__})"
            ) from None
        except AzureError as exc:
            raise TransientError(SERVICE, f"token request failed ({type(exc).__name__})") from None
        return access.token, float(access.expires_on)


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def app_registration(tenant: str, client_id: str, client_secret: str) -> Callable[[], Any]:
    """A credential factory for an app registration of its own (a Dataverse environment in another tenant)."""

    def credential() -> Any:
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(tenant, client_id, client_secret)

    return credential
