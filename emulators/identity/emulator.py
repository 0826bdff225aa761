"""Emulated Microsoft identity platform (device-code sign-in, refresh-token grant with rotation) and Key
Vault secrets, enough to exercise ``python -m shared login`` and refresh-token persistence locally.

Routes: ``POST /{tenant}/oauth2/v2.0/devicecode``, ``POST /{tenant}/oauth2/v2.0/token`` and
``PUT|GET /secrets/{name}``; control: :meth:`IdentityEmulator.approve` signs the pending user in.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any
from urllib.parse import parse_qs

from .._server import Emulator, Request, Response

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class IdentityEmulator(Emulator):
    name = "identity"

    def __init__(self, client_id: str = "00000000-0000-0000-0000-00000000c11e", rotate: bool = True) -> None:
        super().__init__()
        self.client_id = client_id
        self.rotate = rotate
        self.pending: dict[str, bool] = {}  # device_code -> approved
        self.refresh_tokens: set[str] = set()
        self.secrets: dict[str, str] = {}
        self.token_requests = 0
        self.approved = threading.Event()
        self.route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/devicecode", self._device_code)
        self.route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", self._token)
        self.route("PUT", r"/secrets/(?P<name>[A-Za-z0-9-]+)", self._put_secret)
        self.route("GET", r"/secrets/(?P<name>[A-Za-z0-9-]+)", self._get_secret)

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(request.body.decode()).items()}

    def approve(self) -> None:
        """The user enters the code and signs in."""
        with self.lock:
            for code in self.pending:
                self.pending[code] = True
        self.approved.set()

    def issue_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        with self.lock:
            self.refresh_tokens.add(token)
        return token

    def _device_code(self, request: Request) -> Response:
        form = self._form(request)
        if form.get("client_id") != self.client_id:
            return Response(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: unknown app"})
        code = secrets.token_urlsafe(12)
        with self.lock:
            self.pending[code] = False
        return Response(
            200,
            {
                "device_code": code,
                "user_code": "ABCD-EFGH",
                "verification_uri": f"{self.url}/device",
                "expires_in": 900,
                "interval": 0,
                "message": f"To sign in, open {self.url}/device and enter the code ABCD-EFGH.",
            },
        )

    def _tokens(self, scope: str) -> dict[str, Any]:
        return {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": 3600,
            "access_token": "at-" + secrets.token_urlsafe(16),
            "refresh_token": self.issue_refresh_token(),
        }

    def _token(self, request: Request) -> Response:
        form = self._form(request)
        with self.lock:
            self.token_requests += 1
        if form.get("client_id") != self.client_id:
            return Response(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: unknown app"})
        if form.get("grant_type") == DEVICE_GRANT:
            with self.lock:
                approved = self.pending.get(form.get("device_code", ""))
            if approved is None:
                return Response(400, {"error": "expired_token", "error_description": "AADSTS70019: expired"})
            if not approved:
                return Response(400, {"error": "authorization_pending", "error_description": "AADSTS70016: pending"})
            return Response(200, self._tokens(form.get("scope", "")))
        if form.get("grant_type") == "refresh_token":
            with self.lock:
                known = form.get("refresh_token") in self.refresh_tokens
                if known and self.rotate:
                    self.refresh_tokens.discard(form["refresh_token"])
            if not known:
                return Response(400, {"error": "invalid_grant", "error_description": "AADSTS70008: expired grant"})
            body = self._tokens(form.get("scope", ""))
            if not self.rotate:
                body.pop("refresh_token")
            return Response(200, body)
        return Response(400, {"error": "unsupported_grant_type"})

    def _put_secret(self, request: Request) -> Response:
        if not (request.header("authorization") or "").startswith("Bearer "):
            return Response(401, {"error": {"code": "Unauthorized", "message": "no bearer token"}})
        value = (request.json() or {}).get("value")
        if not isinstance(value, str):
            return Response(400, {"error": {"code": "BadParameter", "message": "value is required"}})
        with self.lock:
            self.secrets[request.params["name"]] = value
        return Response(200, {"id": f"{self.url}/secrets/{request.params['name']}/1", "attributes": {"enabled": True}})

    def _get_secret(self, request: Request) -> Response:
        with self.lock:
            value = self.secrets.get(request.params["name"])
        if value is None:
            return Response(404, {"error": {"code": "SecretNotFound", "message": "not found"}})
        return Response(200, {"value": value})
