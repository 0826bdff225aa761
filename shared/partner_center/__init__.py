"""Partner Center adapter: token providers, the Referrals API client and webhook verification.

Submodules are imported on use so that the webhook trigger does not pay for the HTTP client and the
client does not pay for X.509 verification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import RefreshTokenProvider, StaticToken, partner_center_token_provider
    from .client import PartnerCenterClient, referral_id_from_resource_uri
    from .webhook import WebhookRejected, WebhookVerifier

__all__ = [
    "PartnerCenterClient",
    "RefreshTokenProvider",
    "StaticToken",
    "WebhookRejected",
    "WebhookVerifier",
    "partner_center_token_provider",
    "referral_id_from_resource_uri",
]

_HOMES = {
    "PartnerCenterClient": "client",
    "referral_id_from_resource_uri": "client",
    "RefreshTokenProvider": "auth",
    "StaticToken": "auth",
    "partner_center_token_provider": "auth",
    "WebhookRejected": "webhook",
    "WebhookVerifier": "webhook",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
