"""Salesforce emulator: ``/services/oauth2/token`` (client credentials and JWT bearer) and sessions.

Client credentials are checked against registered client id / secret pairs (form fields or HTTP Basic).
JWT bearer assertions are verified like the platform does: RS256 signature against the certificate or
public key registered for the consumer key (``iss``), a pre-authorised user (``sub``), an accepted
audience (``aud``) and an unexpired ``exp``. Errors use the OAuth shape ``{"error", "error_description"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from .schema import ORG_ID, USER_ID

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STANDARD_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class Client:
    secret: str | None = None
    username: str = "integration@emulator.example"  # the run-as user of the client credentials flow
    public_key: RSAPublicKey | None = None
    jwt_users: set[str] = field(default_factory=set)  # pre-authorised users of the JWT bearer flow


@dataclass
class Session:
    client_id: str
    username: str
    flow: str
    expires_at: datetime


def load_public_key(pem: str | bytes) -> RSAPublicKey:
    """An RSA public key from a PEM public key or a PEM X.509 certificate (what a Connected App holds)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    if b"BEGIN CERTIFICATE" in data:
        key: Any = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = serialization.load_pem_public_key(data)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the JWT bearer flow needs an RSA key")
    return key


class OAuthServer:
    def __init__(self, clock: Callable[[], datetime], session_seconds: int, audiences: Iterable[str] = ()) -> None:
        self.clock = clock
        self.session_seconds = session_seconds
        self.extra_audiences = tuple(a.rstrip("/") for a in audiences)
        self.clients: dict[str, Client] = {}
        self.sessions: dict[str, Session] = {}

    # -- registration -----------------------------------------------------------------------------------------
    def register_client(self, client_id: str, secret: str | None, username: str | None = None) -> None:
        client = self.clients.setdefault(client_id, Client())
        client.secret = secret
        if username:
            client.username = username

    def register_jwt_key(self, client_id: str, public_key: str | bytes, usernames: Iterable[str]) -> None:
        client = self.clients.setdefault(client_id, Client())
        client.public_key = load_public_key(public_key)
        client.jwt_users = set(usernames)

    # -- sessions ---------------------------------------------------------------------------------------------
    def issue(self, client_id: str, username: str, flow: str) -> str:
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        self.sessions[token] = Session(
            client_id, username, flow, self.clock() + timedelta(seconds=self.session_seconds)
        )
        return token

    def valid(self, token: str) -> bool:
        session = self.sessions.get(token)
        return session is not None and session.expires_at > self.clock()

    def expire_all(self) -> None:
        self.sessions.clear()

    # -- the token endpoint -----------------------------------------------------------------------------------
    def token(self, body: bytes, headers: Mapping[str, str], instance_url: str) -> tuple[str, dict[str, Any]]:
        """(flow, response body) for a token request, or OAuthError."""
        content_type = headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in content_type:
            raise OAuthError("invalid_request", "the request body must be application/x-www-form-urlencoded")
        try:
            form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", "the request body is not valid form data") from None
        grant = form.get("grant_type", "")
        if grant == CLIENT_CREDENTIALS:
            client_id, username = self._client_credentials(form, headers)
            flow = "client_credentials"
        elif grant == JWT_BEARER:
            client_id, username = self._jwt_bearer(form.get("assertion", ""), instance_url)
            flow = "jwt_bearer"
        else:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        token = self.issue(client_id, username, flow)
        issued_at = str(int(self.clock().timestamp() * 1000))
        response = {
            "access_token": token,
            "instance_url": instance_url,
            "id": f"{instance_url}/id/{ORG_ID}/{USER_ID}",
            "token_type": "Bearer",
            "issued_at": issued_at,
            "scope": "api",
        }
        if flow == "client_credentials":
            # Salesforce signs id + issued_at with the client secret; clients may verify it.
            secret = (self.clients[client_id].secret or "").encode("utf-8")
            digest = hmac.new(secret, (response["id"] + issued_at).encode("utf-8"), hashlib.sha256).digest()
            response["signature"] = base64.b64encode(digest).decode("ascii")
        return flow, response

    def _client_credentials(self, form: Mapping[str, str], headers: Mapping[str, str]) -> tuple[str, str]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError("invalid_client", "invalid client credentials") from None
            client_id, _, secret = decoded.partition(":")
        client = self.clients.get(client_id or "")
        if client is None or client.secret is None:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if not secret or not hmac.compare_digest(secret.encode("utf-8"), client.secret.encode("utf-8")):
            raise OAuthError("invalid_client", "invalid client credentials")
        return client_id or "", client.username

    def _jwt_bearer(self, assertion: str, instance_url: str) -> tuple[str, str]:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        if header.get("alg") != "RS256":
            raise OAuthError("invalid_grant", "invalid assertion: the signing algorithm must be RS256")
        client_id = str(claims.get("iss") or "")
        client = self.clients.get(client_id)
        if client is None or client.public_key is None:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        try:
            # Expiry is checked below against the emulator's clock, which tests may move.
            claims = jwt.decode(
                assertion,
                client.public_key,
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.InvalidTokenError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        if not isinstance(claims["exp"], int | float) or claims["exp"] <= self.clock().timestamp():
            raise OAuthError("invalid_grant", "expired assertion")
        audiences = {*STANDARD_AUDIENCES, *self.extra_audiences, instance_url.rstrip("/")}
        aud = claims["aud"]
        offered = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        if not any(str(a).rstrip("/") in audiences for a in offered):
            raise OAuthError("invalid_grant", "audience is invalid")
        username = str(claims["sub"])
        if username not in client.jwt_users:
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        return client_id, username
