"""Delegated sign-in for the Partner Center Referrals API (device code flow, Microsoft identity platform).

The Referrals API accepts only app + user tokens, and MFA rules out password grants, so a Referrals
admin signs in once from any browser; the app then lives on the refresh token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ..domain.errors import AuthenticationError
from .auth import REFERRALS_SCOPE
from .token_file import warn_about_stray_token_file, write_token_file

SERVICE = "Microsoft identity platform"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class SignIn:
    refresh_token: str
    scope: str


def _post(session: requests.Session, url: str, form: dict[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        response = session.post(url, data=form, timeout=timeout)
    except requests.RequestException as exc:
        raise AuthenticationError(SERVICE, f"could not reach the sign-in service ({type(exc).__name__})") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body if isinstance(body, dict) else {}


def device_code_sign_in(
    authority: str,
    tenant_id: str,
    client_id: str,
    show: Callable[[str], None],
    *,
    scope: str = REFERRALS_SCOPE,
    client_secret: str | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = 30.0,
) -> SignIn:
    base = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0"
    http = session or requests.Session()
    status, start = _post(http, f"{base}/devicecode", {"client_id": client_id, "scope": scope}, timeout)
    if status != 200 or "device_code" not in start:
        raise AuthenticationError(SERVICE, f"sign-in could not start ({start.get('error', status)})", status)
    show(str(start.get("message") or f"Open {start.get('verification_uri')} and enter {start.get('user_code')}"))
    interval = float(start.get("interval", 5))
    deadline = time.monotonic() + float(start.get("expires_in", 900))
    form = {"grant_type": DEVICE_GRANT, "client_id": client_id, "device_code": str(start["device_code"])}
    if client_secret:
        form["client_secret"] = client_secret
    while time.monotonic() < deadline:
        status, body = _post(http, f"{base}/token", form, timeout)
        if status == 200 and body.get("refresh_token"):
            return SignIn(str(body["refresh_token"]), str(body.get("scope", scope)))
        error = body.get("error")
        if error == "authorization_pending":
            sleep(interval)
            continue
        if error == "slow_down":
            interval += 5
            sleep(interval)
            continue
        raise AuthenticationError(SERVICE, f"sign-in failed ({error or status})", status)
    raise AuthenticationError(SERVICE, "sign-in timed out: the code was not entered in time")


def store_in_file(refresh_token: str, path: Path | None = None) -> Path:
    """Keep the token in the per-user file (or ``path``) when no Key Vault is given; return the file."""
    warn_about_stray_token_file(chosen=path)
    return write_token_file(refresh_token, path)
