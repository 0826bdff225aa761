"""Emulated Microsoft identity platform (v2 endpoints, over TLS) and Key Vault secrets, strict enough for MSAL.

Routes, per tenant: ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (MSAL's tenant discovery; instance
discovery is turned off by the client, as for any authority not on Microsoft's list),
``POST /{tenant}/oauth2/v2.0/devicecode``, ``GET /{tenant}/oauth2/v2.0/authorize`` (authorization code with a
required S256 PKCE challenge; the "browser" that opens it is signed in at once and gets the answer as the form
post MSAL asks for) and ``POST /{tenant}/oauth2/v2.0/token`` (device code, authorization code with the PKCE
verifier checked, refresh token with rotation). Access and ID tokens are RS256 JWTs; an access token's ``amr``
says whether the sign-in performed MFA, which Partner Center checks. Plus ``PUT|GET /secrets/{name}``, and the root CA
to trust at ``GET /_emulator/ca.pem`` (run on its own: ``curl -k ... > ca.pem; export REQUESTS_CA_BUNDLE=ca.pem``).

Control: :meth:`IdentityEmulator.approve` signs the pending device-code user in; ``mfa``, ``block_device_code``
and :meth:`refuse_refresh` play an account without MFA, a Conditional Access policy that blocks the device code
flow, and a refresh token Entra no longer honours (expired, revoked, consent withdrawn).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from .._server import Emulator, Request, Response
from .tls import ServerTls

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
USER_OBJECT_ID = "11111111-2222-3333-4444-555555555555"
USERNAME = "referrals.admin@contoso.example"
# Conditional Access refusing the device code flow (authentication flows policy), as Entra words it.
DEVICE_CODE_BLOCKED = (
    "AADSTS53003: Access has been blocked by Conditional Access policies. The access policy does not allow token "
    "issuance."
)


@dataclass
class _AuthCode:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    nonce: str | None


def _error(code: str, description: str, status: int = 400) -> Response:
    number = description.split(":", 1)[0].removeprefix("AADSTS")
    codes = [int(number)] if number.isdigit() else []
    return Response(status, {"error": code, "error_description": description, "error_codes": codes})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class IdentityEmulator(Emulator):
    name = "identity"
    scheme = "https"

    def __init__(self, client_id: str = "00000000-0000-0000-0000-00000000c11e", rotate: bool = True) -> None:
        super().__init__()
        self.client_id = client_id
        self.rotate = rotate
        self.mfa = True  # the user's sign-in performs MFA
        self.block_device_code = False
        self.tls = ServerTls()
        self.pending: dict[str, bool] = {}  # device_code -> approved
        self.device_scopes: dict[str, str] = {}  # device_code -> the scope asked for when it was issued
        self.auth_codes: dict[str, _AuthCode] = {}
        self.refresh_tokens: dict[str, list[str]] = {}  # refresh token -> amr of the sign-in it came from
        self.refresh_refusal: tuple[str, str] | None = None
        self.secrets: dict[str, str] = {}
        self.token_requests = 0
        self.approved = threading.Event()
        tenant = r"/(?P<tenant>[^/]+)"
        self.route("GET", tenant + r"/v2\.0/\.well-known/openid-configuration", self._openid_configuration)
        self.route("POST", tenant + r"/oauth2/v2\.0/devicecode", self._device_code)
        self.route("GET", tenant + r"/oauth2/v2\.0/authorize", self._authorize)
        self.route("POST", tenant + r"/oauth2/v2\.0/token", self._token)
        self.route(
            "GET",
            r"/_emulator/ca\.pem",
            lambda r: Response(200, self.tls.root_pem(), {"Content-Type": "application/x-pem-file"}),
        )
        self.route("PUT", r"/secrets/(?P<name>[A-Za-z0-9-]+)", self._put_secret)
        self.route("GET", r"/secrets/(?P<name>[A-Za-z0-9-]+)", self._get_secret)

    # -- TLS -------------------------------------------------------------------------------------------------------
    def _secure(self, server: ThreadingHTTPServer) -> None:
        # The handshake runs in the handler thread, so a client that never speaks cannot stall the listener.
        server.socket = self.tls.context().wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    def write_ca_bundle(self, path: str | Path) -> Path:
        """The root CA (PEM) to trust, e.g. through ``REQUESTS_CA_BUNDLE``."""
        return self.tls.write_ca_bundle(path)

    # -- control ---------------------------------------------------------------------------------------------------
    def approve(self) -> None:
        """The user enters the code and signs in."""
        with self.lock:
            for code in self.pending:
                self.pending[code] = True
        self.approved.set()

    def issue_refresh_token(self, mfa: bool = True) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        with self.lock:
            self.refresh_tokens[token] = ["pwd", "mfa"] if mfa else ["pwd"]
        return token

    def refuse_refresh(self, error: str | None, description: str = "") -> None:
        """Answer every refresh-token grant with this error (None: honour them again)."""
        with self.lock:
            self.refresh_refusal = (error, description) if error else None

    # -- helpers ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(request.body.decode()).items()}

    def _issuer(self, tenant: str) -> str:
        return f"{self.url}/{tenant}/v2.0"

    def _tokens(
        self, tenant: str, scope: str, amr: list[str], nonce: str | None = None, *, refresh: bool = True
    ) -> dict[str, Any]:
        requested = scope.split()
        resources = [s for s in requested if s not in RESERVED_SCOPES]
        audience = resources[0].rsplit("/", 1)[0] if resources else "00000003-0000-0000-c000-000000000000"
        now = int(time.time())
        common = {"iss": self._issuer(tenant), "tid": tenant, "oid": USER_OBJECT_ID, "iat": now, "nbf": now}
        access = {**common, "aud": audience, "exp": now + 3600, "amr": amr, "scp": "user_impersonation"}
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(resources) or scope,
            "expires_in": 3600,
            "ext_expires_in": 3600,
            "access_token": self.tls.sign_jwt(access),
            "client_info": _b64url(json.dumps({"uid": USER_OBJECT_ID, "utid": tenant}).encode()),
        }
        if refresh and "offline_access" in requested:
            body["refresh_token"] = self.issue_refresh_token(mfa="mfa" in amr)
        if "openid" in requested:
            identity = {**common, "aud": self.client_id, "exp": now + 3600, "sub": USER_OBJECT_ID}
            identity.update(preferred_username=USERNAME, name="Referrals Admin", ver="2.0")
            if nonce:
                identity["nonce"] = nonce
            body["id_token"] = self.tls.sign_jwt(identity)
        return body

    def _sign_in_amr(self) -> list[str]:
        return ["pwd", "mfa"] if self.mfa else ["pwd"]

    def _unknown_client(self, client_id: str | None) -> Response | None:
        if client_id != self.client_id:
            return _error(
                "unauthorized_client", f"AADSTS700016: Application with identifier '{client_id}' was not found."
            )
        return None

    # -- endpoints -------------------------------------------------------------------------------------------------
    def _openid_configuration(self, request: Request) -> Response:
        base = f"{self.url}/{request.params['tenant']}/oauth2/v2.0"
        return Response(
            200,
            {
                "issuer": self._issuer(request.params["tenant"]),
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "device_authorization_endpoint": f"{base}/devicecode",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            },
        )

    def _device_code(self, request: Request) -> Response:
        form = self._form(request)
        refused = self._unknown_client(form.get("client_id"))
        if refused is not None:
            return refused
        if not form.get("scope"):
            return _error("invalid_request", "AADSTS900144: The request body must contain the parameter: 'scope'.")
        code = secrets.token_urlsafe(12)
        with self.lock:
            self.pending[code] = False
            self.device_scopes[code] = form["scope"]
        return Response(
            200,
            {
                "device_code": code,
                "user_code": "ABCD-EFGH",
                "verification_uri": f"{self.url}/device",
                "expires_in": 900,
                "interval": 0,
                "message": f"To sign in, open {self.url}/device and enter the code ABCD-EFGH to authenticate.",
            },
        )

    def _authorize(self, request: Request) -> Response:
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        # Entra accepts any port on a registered http://localhost redirect URI; nothing else over plain http.
        if not (redirect_uri == "http://localhost" or redirect_uri.startswith("http://localhost:")):
            return Response(400, f"AADSTS50011: The redirect URI '{html.escape(redirect_uri)}' does not match.")
        refused = self._unknown_client(q.get("client_id"))
        if refused is not None:
            return Response(400, "AADSTS700016: unknown application")
        answer: dict[str, str] = {"state": q.get("state", "")}
        if q.get("response_type") != "code":
            answer.update(error="unsupported_response_type", error_description="AADSTS70005: code only")
        elif not q.get("code_challenge") or q.get("code_challenge_method") != "S256":
            answer.update(
                error="invalid_request",
                error_description="AADSTS9002325: Proof Key for Code Exchange is required (S256).",
            )
        else:
            code = secrets.token_urlsafe(24)
            with self.lock:
                self.auth_codes[code] = _AuthCode(
                    str(q.get("client_id")), redirect_uri, q["code_challenge"], q.get("scope", ""), q.get("nonce")
                )
            answer["code"] = code
        if q.get("response_mode") == "form_post":
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>' for k, v in answer.items()
            )
            page = (
                f'<html><body onload="document.forms[0].submit()"><form method="POST" '
                f'action="{html.escape(redirect_uri)}">{fields}</form></body></html>'
            )
            return Response(200, page, {"Content-Type": "text/html; charset=utf-8"})
        return Response(302, b"", {"Location": f"{redirect_uri}?{urlencode(answer)}"})

    def _token(self, request: Request) -> Response:
        form = self._form(request)
        tenant = request.params["tenant"]
        with self.lock:
            self.token_requests += 1
        refused = self._unknown_client(form.get("client_id"))
        if refused is not None:
            return refused
        grant = form.get("grant_type")
        if grant == DEVICE_GRANT:
            return self._device_code_grant(tenant, form)
        if grant == "authorization_code":
            return self._authorization_code_grant(tenant, form)
        if grant == "refresh_token":
            return self._refresh_grant(tenant, form)
        return _error("unsupported_grant_type", f"AADSTS70003: The app requested an unsupported grant type '{grant}'.")

    def _device_code_grant(self, tenant: str, form: dict[str, str]) -> Response:
        with self.lock:
            approved = self.pending.get(form.get("device_code", ""))
        if approved is None:
            return _error("expired_token", "AADSTS70019: Verification code expired.")
        if not approved:
            return _error("authorization_pending", "AADSTS70016: Authorization is pending.")
        with self.lock:
            self.pending.pop(form["device_code"], None)
            scope = self.device_scopes.pop(form["device_code"], "")
        if self.block_device_code:
            return _error("invalid_grant", DEVICE_CODE_BLOCKED)
        return Response(200, self._tokens(tenant, scope, self._sign_in_amr()))

    def _authorization_code_grant(self, tenant: str, form: dict[str, str]) -> Response:
        with self.lock:
            issued = self.auth_codes.pop(form.get("code", ""), None)  # a code is good for one redemption
        if issued is None or issued.client_id != form.get("client_id"):
            return _error("invalid_grant", "AADSTS70000: The provided authorization code is invalid or has expired.")
        if form.get("redirect_uri") != issued.redirect_uri:
            return _error("invalid_grant", "AADSTS500112: The reply address does not match the one in the request.")
        verifier = form.get("code_verifier", "")
        if not verifier or _b64url(hashlib.sha256(verifier.encode("ascii")).digest()) != issued.challenge:
            return _error(
                "invalid_grant", "AADSTS501481: The Code_Verifier does not match the code_challenge supplied."
            )
        return Response(200, self._tokens(tenant, form.get("scope") or issued.scope, self._sign_in_amr(), issued.nonce))

    def _refresh_grant(self, tenant: str, form: dict[str, str]) -> Response:
        presented = form.get("refresh_token", "")
        with self.lock:
            refusal = self.refresh_refusal
            amr = self.refresh_tokens.get(presented)
            if amr is not None and self.rotate and refusal is None:
                self.refresh_tokens.pop(presented)
        if refusal is not None:
            return _error(*refusal)
        if amr is None:
            return _error("invalid_grant", "AADSTS70008: The provided authorization code or refresh token has expired.")
        # A refresh token is a grant of offline access in itself: its redemption carries on issuing one.
        scope = " ".join(dict.fromkeys([*form.get("scope", "").split(), "offline_access"]))
        return Response(200, self._tokens(tenant, scope, amr, refresh=self.rotate))

    # -- Key Vault ---------------------------------------------------------------------------------------------------
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
