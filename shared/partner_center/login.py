"""Delegated sign-in for the Partner Center Referrals API, with MSAL (Microsoft identity platform).

The Referrals API accepts only App+User tokens, and since April 2026 Partner Center refuses those without MFA
(error 900421), which rules out password grants: a Referrals admin signs in once, interactively, and the app
then lives on the refresh token (redeemed by :mod:`shared.partner_center.auth`).

Device code is the default: it works from a server shell with a browser anywhere. Where a Conditional Access
policy blocks that flow, the browser flow (authorization code with PKCE, answered on ``http://localhost``) is the
way; the error then says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import msal
import requests

from ..domain.errors import AuthenticationError
from .auth import REFERRALS_SCOPE
from .token_file import warn_about_stray_token_file, write_token_file

SERVICE = "Microsoft identity platform"
# Entra codes of a sign-in refused by Conditional Access (53003 blocked, 53000/53001 device not compliant or not
# joined, 530032/530033 blocked by a security policy) or that needs a confirmation the device code flow cannot
# show (50199): the browser flow on this machine is the way round.
BLOCKED_BY_POLICY = frozenset({50199, 53000, 53001, 53003, 530032, 530033})
_AADSTS = re.compile(r"AADSTS(\d+)")
BROWSER_HINT = "run `python -m shared login --browser` on a machine with a browser"
MFA_HINT = "run `python -m shared login` again with an MFA-capable account"
MSAL_ADDED_SCOPES = frozenset({"openid", "profile", "offline_access"})


class SignInBlocked(AuthenticationError):
    """The device code flow was refused by policy; the browser flow may be allowed."""


@dataclass(frozen=True)
class SignIn:
    refresh_token: str
    username: str | None = None


@dataclass(frozen=True)
class LoginConfig:
    authority: str  # e.g. https://login.microsoftonline.com
    tenant_id: str
    client_id: str
    scope: str = REFERRALS_SCOPE
    timeout: float = 120.0  # how long the browser flow waits for the answer


def _resource_scopes(scope: str) -> list[str]:
    # MSAL adds openid, profile and offline_access itself and refuses them in the list.
    return [s for s in scope.split() if s not in MSAL_ADDED_SCOPES]


def _application(config: LoginConfig, http: requests.Session | None) -> msal.PublicClientApplication:
    authority = f"{config.authority.rstrip('/')}/{config.tenant_id}"
    known = config.authority.rstrip("/").lower() in {
        "https://login.microsoftonline.com",
        "https://login.microsoftonline.us",
        "https://login.chinacloudapi.cn",
    }
    options: dict[str, Any] = {"authority": authority, "timeout": 30}
    if not known:
        # A sovereign or emulated authority: no instance discovery against login.microsoftonline.com.
        options.update(instance_discovery=False, validate_authority=False)
    if http is not None:
        options["http_client"] = http
    # Both interactive flows are public client flows: the app registration must allow them (docs/deploy.md).
    return msal.PublicClientApplication(config.client_id, **options)


def _codes(result: dict[str, Any]) -> set[int]:
    codes = {int(c) for c in result.get("error_codes") or [] if str(c).isdigit()}
    return codes | {int(n) for n in _AADSTS.findall(str(result.get("error_description") or ""))}


def _refused(result: dict[str, Any], flow: str) -> AuthenticationError:
    # The code and the AADSTS numbers only: the description can echo request details.
    error = str(result.get("error") or "unknown_error")
    codes = sorted(_codes(result))
    named = f"{error}{''.join(f', AADSTS{c}' for c in codes)}"
    if flow == "device code" and BLOCKED_BY_POLICY & set(codes):
        return SignInBlocked(
            SERVICE, f"the device code sign-in was blocked by a Conditional Access policy ({named}); {BROWSER_HINT}"
        )
    if 65001 in codes:
        return AuthenticationError(
            SERVICE, f"consent is missing ({named}): an admin must grant consent to the app's API permissions"
        )
    return AuthenticationError(SERVICE, f"{flow} sign-in failed ({named})")


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified: only to tell the operator what the sign-in produced (the resource checks
    the signature)."""
    try:
        return dict(jwt.decode(token, options={"verify_signature": False}))
    except jwt.PyJWTError:
        return {}


def _signed_in(result: dict[str, Any], flow: str) -> SignIn:
    if "error" in result:
        raise _refused(result, flow)
    refresh_token = result.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise AuthenticationError(SERVICE, "the sign-in returned no refresh token (is offline_access allowed?)")
    claims = _claims(str(result.get("access_token") or ""))
    if "amr" in claims and "mfa" not in (claims.get("amr") or []):
        # Partner Center would refuse every call made with it (900421): better to say so now than at the first sync.
        raise AuthenticationError(
            SERVICE, f"the sign-in did not use multi-factor authentication, which Partner Center requires; {MFA_HINT}"
        )
    username = (result.get("id_token_claims") or {}).get("preferred_username")
    return SignIn(refresh_token, username if isinstance(username, str) else None)


def device_code_sign_in(
    config: LoginConfig, show: Callable[[str], None], *, http: requests.Session | None = None
) -> SignIn:
    app = _application(config, http)
    flow = app.initiate_device_flow(scopes=_resource_scopes(config.scope))
    if "user_code" not in flow:
        raise _refused(flow, "device code")
    show(str(flow.get("message") or f"Open {flow.get('verification_uri')} and enter {flow.get('user_code')}"))
    return _signed_in(app.acquire_token_by_device_flow(flow), "device code")


def browser_sign_in(
    config: LoginConfig,
    show: Callable[[str], None],
    *,
    port: int | None = None,
    http: requests.Session | None = None,
) -> SignIn:
    app = _application(config, http)
    show("A browser opens for the sign-in; finish it there (the answer comes back to http://localhost).")
    result = app.acquire_token_interactive(
        _resource_scopes(config.scope),
        port=port,
        timeout=config.timeout,
        prompt="select_account",
        # Called when no browser could be started here (an SSH session): the operator opens the address elsewhere,
        # with the port forwarded.
        auth_uri_callback=lambda uri: show(f"No browser could be opened here. Open this address in one: {uri}"),
    )
    if result is None:
        raise AuthenticationError(SERVICE, "browser sign-in timed out: nothing came back to http://localhost")
    return _signed_in(result, "browser")


def store_in_file(refresh_token: str, path: Path | None = None) -> Path:
    """Keep the token in the per-user file (or ``path``) when no Key Vault is given; return the file."""
    warn_about_stray_token_file(chosen=path)
    return write_token_file(refresh_token, path)
