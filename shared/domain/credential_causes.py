"""Why a delegated credential was refused, and what the operator does about it.

Entra and Partner Center say why in codes: ``AADSTS...`` numbers in the token endpoint's answer, and 900421 from
Partner Center when an App+User token lacks MFA (enforced since April 2026). An operator needs the cause and the
fix, not the code; the code stays in the message for whoever searches for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

LOGIN = "`python -m shared login`"
# Entra ends a refresh token that has not been used for 90 days (its inactivity lifetime).
REFRESH_TOKEN_INACTIVITY = timedelta(days=90)
INACTIVITY_WARNING = timedelta(days=14)
_NUMBERS = re.compile(r"(?:AADSTS)?(\d{5,7})")


@dataclass(frozen=True)
class CredentialCause:
    name: str
    summary: str
    action: str


REFRESH_TOKEN_EXPIRED = CredentialCause(
    "refresh-token-expired",
    "the Partner Center refresh token has expired or was revoked",
    f"run {LOGIN} again as a Referrals admin and store the new token where the app reads it",
)
MFA_REQUIRED = CredentialCause(
    "mfa-required",
    "Partner Center requires multi-factor authentication for App+User calls and the token has none (900421)",
    f"run {LOGIN} again with an MFA-capable account (the sign-in must complete MFA)",
)
CONSENT_MISSING = CredentialCause(
    "consent-missing",
    "the app has no consent for the Partner Center API permissions (AADSTS65001)",
    "have an admin grant consent to the app registration's API permissions (Microsoft Partner Center and "
    f"Microsoft Partner), then run {LOGIN} again",
)
CAUSES = {c.name: c for c in (REFRESH_TOKEN_EXPIRED, MFA_REQUIRED, CONSENT_MISSING)}

# AADSTS numbers: 70008 expired grant, 700082 expired for inactivity, 700084 single-page app token expired,
# 50173 grant revoked (password change), 50076/50079 MFA required, 65001 consent missing.
_BY_NUMBER = {
    "70008": REFRESH_TOKEN_EXPIRED,
    "700082": REFRESH_TOKEN_EXPIRED,
    "700084": REFRESH_TOKEN_EXPIRED,
    "50173": REFRESH_TOKEN_EXPIRED,
    "900421": MFA_REQUIRED,
    "50076": MFA_REQUIRED,
    "50079": MFA_REQUIRED,
    "65001": CONSENT_MISSING,
}


def cause_of(code: str | None, message: str) -> CredentialCause | None:
    """The cause named by an error code or the numbers in a refusal's message; None when it names none."""
    for number in _NUMBERS.findall(f"{code or ''} {message}"):
        if number in _BY_NUMBER:
            return _BY_NUMBER[number]
    if (code or "") == "invalid_grant":
        return REFRESH_TOKEN_EXPIRED  # a refresh token refused without a number we know is spent all the same
    return None


def inactivity_warning(last_redeemed: datetime | None, now: datetime) -> str | None:
    """A warning once the refresh token nears the end of its inactivity lifetime, else None."""
    if last_redeemed is None:
        return None
    expires = last_redeemed + REFRESH_TOKEN_INACTIVITY
    if now < expires - INACTIVITY_WARNING:
        return None
    day = expires.date().isoformat()
    if now >= expires:
        return (
            f"the Partner Center refresh token has not been used since {last_redeemed.date().isoformat()} and "
            f"expired for inactivity on {day}: run {LOGIN} again"
        )
    return (
        f"the Partner Center refresh token has not been used since {last_redeemed.date().isoformat()} and expires "
        f"for inactivity on {day}: start the app (any sync uses it) or run {LOGIN} again"
    )
