"""Salesforce access tokens: a static token (emulators, tests), OAuth 2.0 client credentials or JWT bearer.

Salesforce returns no ``expires_in``, so a token is kept until the API refuses it with 401
``INVALID_SESSION_ID``; the REST layer then calls :meth:`SalesforceAuth.invalidate` with the token that
failed and asks again. Only the token that failed is dropped, so concurrent workers that all hit the
expiry cause one token request, not one each.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from ...domain.errors import AuthenticationError, Throttled, TransientError
from ...httpclient import parse_retry_after

SERVICE = "Salesforce"
TOKEN_ATTEMPTS = 3
TOKEN_BACKOFF_SECONDS = 0.5
TOKEN_MAX_INLINE_WAIT = 5.0
TOKEN_PATH = "/services/oauth2/token"  # noqa: S105 - a URL path, not a secret
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Salesforce wants the assertion to expire within a few minutes; simple-salesforce also uses 3.
JWT_LIFETIME_SECONDS = 180
# Client credentials only work against a My Domain host; these hosts refuse the grant.
GENERIC_LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})


class SalesforceAuth(ABC):
    """A cached access token and the instance URL it belongs to."""

    renewable = False

    def __init__(self) -> None:
        self.token_requests = 0  # token requests sent (tests and diagnostics read it)

    @abstractmethod
    def token(self) -> str: ...

    @abstractmethod
    def instance_url(self) -> str: ...

    @abstractmethod
    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the API refused it) so that the next call fetches a new one."""


class StaticToken(SalesforceAuth):
    """``SALESFORCE_ACCESS_TOKEN`` + ``SALESFORCE_INSTANCE_URL``: cannot be renewed, so a 401 is final."""

    def __init__(self, access_token: str, instance_url: str) -> None:
        super().__init__()
        self._token, self._instance_url = access_token, instance_url.rstrip("/")

    def token(self) -> str:
        return self._token

    def instance_url(self) -> str:
        return self._instance_url

    def invalidate(self, token: str) -> None:
        return None  # nothing to renew: the 401 reaches the caller as an AuthenticationError


class OAuthToken(SalesforceAuth):
    """Posts a grant to the token endpoint on first use and after :meth:`invalidate`."""

    renewable = True
    flow = "oauth"

    def __init__(self, token_url: str, session: requests.Session | None = None, timeout: float = 30.0) -> None:
        super().__init__()
        self.token_url = token_url
        self._session = session or requests.Session()
        self._timeout = timeout
        self._lock = threading.Lock()
        self._token: str | None = None
        self._instance_url: str | None = None

    def token(self) -> str:
        return self._signed_in(lambda: self._token)

    def instance_url(self) -> str:
        return self._signed_in(lambda: self._instance_url)

    def _signed_in(self, held: Callable[[], str | None]) -> str:
        """What the sign-in gave (token or instance URL), signing in first when there is none yet."""
        with self._lock:
            if held() is None:
                self._fetch()
            value = held()
            assert value is not None
            return value

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    @abstractmethod
    def _form(self) -> dict[str, str]:
        """The grant's form fields (client credentials or JWT bearer)."""

    def _fetch(self) -> None:
        response = self._post_with_retries()
        body = _json(response)
        if response.status_code != 200:
            # error / error_description never echo the credentials that were sent.
            error = str(body.get("error") or "error")
            description = str(body.get("error_description") or response.reason or "")
            raise AuthenticationError(
                SERVICE, f"{self.flow} token request refused: {description}", response.status_code, error
            )
        token, instance = body.get("access_token"), body.get("instance_url")
        if not isinstance(token, str) or not token or not isinstance(instance, str) or not instance:
            raise AuthenticationError(SERVICE, f"{self.flow} token response lacks access_token or instance_url")
        self._token, self._instance_url = token, instance.rstrip("/")

    def _post_with_retries(self) -> requests.Response:
        """Asking for a token changes nothing, so a reset or a short throttle is retried here; a longer
        throttle is raised with its ``Retry-After`` so the job is deferred by that much, not by a guess."""
        for attempt in range(1, TOKEN_ATTEMPTS + 1):
            self.token_requests += 1
            try:
                response = self._session.post(
                    self.token_url, data=self._form(), headers={"Accept": "application/json"}, timeout=self._timeout
                )
            except requests.RequestException as exc:
                if attempt == TOKEN_ATTEMPTS:
                    raise TransientError(SERVICE, f"token request failed ({type(exc).__name__})") from None
                time.sleep(TOKEN_BACKOFF_SECONDS * attempt)
                continue
            if response.status_code < 500 and response.status_code != 429:
                return response
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if attempt == TOKEN_ATTEMPTS or (wait is not None and wait > TOKEN_MAX_INLINE_WAIT):
                error = Throttled if response.status_code == 429 else TransientError
                raise error(SERVICE, "token endpoint unavailable", response.status_code, retry_after=wait)
            time.sleep(wait if wait is not None else TOKEN_BACKOFF_SECONDS * attempt)
        raise AssertionError("unreachable")  # pragma: no cover


class ClientCredentials(OAuthToken):
    flow = "client credentials"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        session: requests.Session | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(token_url, session, timeout)
        if urlsplit(token_url).hostname in GENERIC_LOGIN_HOSTS:
            raise ValueError(
                "The client credentials flow needs your My Domain URL (https://<domain>.my.salesforce.com) "
                "in SALESFORCE_LOGIN_URL or SALESFORCE_TOKEN_URL; login/test.salesforce.com refuse it"
            )
        self._client_id, self._client_secret = client_id, client_secret

    def _form(self) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_id": self._client_id, "client_secret": self._client_secret}


class JwtBearer(OAuthToken):
    flow = "JWT bearer"

    def __init__(
        self,
        token_url: str,
        audience: str,
        client_id: str,
        username: str,
        private_key_pem: str,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(token_url, session, timeout)
        self.audience = audience
        self._client_id, self._username = client_id, username
        self._key = load_private_key(private_key_pem)
        self._clock = clock

    def _form(self) -> dict[str, str]:
        return {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()}

    def assertion(self) -> str:
        claims = {
            "iss": self._client_id,
            "sub": self._username,
            "aud": self.audience,
            "exp": int(self._clock()) + JWT_LIFETIME_SECONDS,
        }
        return jwt.encode(claims, self._key, algorithm="RS256")


def load_private_key(pem: str) -> RSAPrivateKey:
    """The RSA key of ``SALESFORCE_PRIVATE_KEY``; app settings often hold it with ``\\n`` for newlines."""
    text = pem.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    try:
        key: Any = serialization.load_pem_private_key(text.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        # Never include the value: it is a secret.
        raise ValueError("SALESFORCE_PRIVATE_KEY is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("SALESFORCE_PRIVATE_KEY must be an RSA key (the JWT bearer flow signs with RS256)")
    return key


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
