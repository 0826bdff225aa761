"""Cross-site request protection for the console's Replay button.

A POST is accepted only when the browser says it came from this site (``Sec-Fetch-Site: same-origin``, or an
``Origin`` equal to the page's own) and it carries the token of the page it was sent from, which must equal
the token in the page's cookie (``SameSite=Strict``: a cross-site request never carries it). The function
key alone is not enough: a page of another site could otherwise make the operator's browser send it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

COOKIE = "console_token"
FIELD = "token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_cookie(token: str, secure: bool) -> str:
    """The Set-Cookie value carrying the page's token (HttpOnly: no script reads it)."""
    attributes = f"{COOKIE}={token}; Path=/api/console; HttpOnly; SameSite=Strict; Max-Age=7200"
    return attributes + ("; Secure" if secure else "")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _cookie_token(headers: Mapping[str, str]) -> str | None:
    raw = _header(headers, "cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def refusal(url: str, headers: Mapping[str, str], form_token: str | None) -> str | None:
    """Why this POST must be refused, or None when it came from the console page of this site."""
    site = _header(headers, "sec-fetch-site")
    if site is not None and site.lower() != "same-origin":
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = _header(headers, "origin")
    if origin is not None and origin.lower() != origin_of(url):
        return "cross-site request refused (Origin does not match this site)"
    if site is None and origin is None:
        return "request refused: the browser did not say where it came from (no Origin or Sec-Fetch-Site)"
    cookie = _cookie_token(headers)
    if not cookie or not form_token or not hmac.compare_digest(cookie.encode(), form_token.encode()):
        return "request refused: the page's token is missing or does not match; reload the console"
    return None
