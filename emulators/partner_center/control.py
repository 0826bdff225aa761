"""The ``/_emulator/...`` control API of the Partner Center emulator (no auth: it is test plumbing).

Each route calls the emulator method of the same purpose, so the demo (over HTTP) and in-process tests
drive the emulator the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._server import Request, Response
from .registration import error
from .rules import RuleViolation

if TYPE_CHECKING:
    from .emulator import PartnerCenterEmulator

CONTROL = "/_emulator"
_CONFIG_KEYS = {
    "pageSize": "page_size",
    "dispatchMode": "dispatch_mode",
    "deliveryAttempts": "delivery_attempts",
    "retryDelay": "retry_delay",
    "requiredToken": "required_token",
    "relatedEventResource": "related_event_resource",
}


def _body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def register_control_routes(emu: PartnerCenterEmulator) -> None:
    def reset(request: Request) -> Response:
        emu.reset()
        return Response(204)

    def list_referrals(request: Request) -> Response:
        return Response(200, {"value": emu.referrals()})

    def seed(request: Request) -> Response:
        body = _body(request)
        try:
            created = emu.seed_referral(
                body.get("referral"),
                kind=str(body.get("kind", "cosell")),
                raise_event=bool(body.get("raiseEvent", True)),
                **(body.get("overrides") or {}),
            )
        except (ValueError, RuleViolation) as exc:
            return error(400, "invalidRequest", str(exc))
        return Response(201, created)

    def get_referral(request: Request) -> Response:
        found = emu.referral(request.params["id"])
        return Response(200, found) if found else error(404, "itemNotFound", "no such referral")

    def withdraw(request: Request) -> Response:
        try:
            emu.withdraw(request.params["id"])
        except KeyError:
            return error(404, "itemNotFound", "no such referral")
        return Response(204)

    def portal_update(request: Request) -> Response:
        body = _body(request)
        try:
            updated = emu.portal_update(request.params["id"], body, raise_event=True)
        except KeyError:
            return error(404, "itemNotFound", "no such referral")
        return Response(200, updated)

    def microsoft_update(request: Request) -> Response:
        try:
            updated = emu.microsoft_update(request.params["id"], _body(request))
        except KeyError:
            return error(404, "itemNotFound", "no such referral")
        except RuleViolation as exc:
            return error(400, "invalidRequest", str(exc))
        return Response(200, updated)

    def counters(request: Request) -> Response:
        return Response(200, emu.counters())

    def reset_counters(request: Request) -> Response:
        emu.reset_counters()
        return Response(204)

    def add_fault(request: Request) -> Response:
        body = _body(request)
        try:
            emu.add_fault(
                status=int(body.get("status", 429)),
                count=int(body.get("count", 1)),
                retry_after=body.get("retryAfter", 1),
                method=body.get("method"),
                path=body.get("path"),
                after=int(body.get("after", 0)),
            )
        except (TypeError, ValueError) as exc:
            return error(400, "invalidRequest", str(exc))
        return Response(204)

    def clear_faults(request: Request) -> Response:
        emu.clear_faults()
        return Response(204)

    def deliveries(request: Request) -> Response:
        status, top = request.query.get("status"), int(request.query.get("top") or 0)
        # minAttempts=2: the events sent more than once (the receiver failed, or answered after the timeout).
        least = int(request.query.get("minAttempts") or 0)
        found = [d for d in emu.deliveries() if status in (None, d.status) and len(d.attempts) >= least]
        return Response(200, {"value": [d.to_json() for d in (found[:top] if top else found)]})

    def release(request: Request) -> Response:
        return Response(200, {"released": emu.release_deliveries()})

    def send(request: Request) -> Response:
        body = _body(request)
        if not body.get("referralId"):
            return error(400, "invalidRequest", "referralId is required")
        try:
            delivery = emu.send_event(
                str(body["referralId"]),
                str(body.get("eventName", "referral-updated")),
                redeliver=bool(body.get("redeliver", False)),
                url=body.get("url"),
                signer=str(body.get("signer", "default")),
                certificate_url=body.get("certificateUrl"),
                corrupt_signature=bool(body.get("corruptSignature", False)),
                ms_signature_header=body.get("msSignatureHeader"),
            )
        except (KeyError, ValueError) as exc:
            return error(400, "invalidRequest", str(exc))
        return Response(202, delivery.to_json())

    def config(request: Request) -> Response:
        body = _body(request)
        unknown = sorted(set(body) - set(_CONFIG_KEYS))
        if unknown:
            return error(400, "invalidRequest", f"unknown settings: {', '.join(unknown)}")
        try:
            for key, value in body.items():
                setattr(emu, _CONFIG_KEYS[key], value)
        except ValueError as exc:
            return error(400, "invalidRequest", str(exc))
        return Response(200, {key: getattr(emu, attr) for key, attr in _CONFIG_KEYS.items() if key != "requiredToken"})

    emu.route("POST", CONTROL + "/reset", reset)
    emu.route("GET", CONTROL + "/referrals", list_referrals)
    emu.route("POST", CONTROL + "/referrals", seed)
    emu.route("GET", CONTROL + r"/referrals/(?P<id>[^/]+)", get_referral)
    emu.route("PATCH", CONTROL + r"/referrals/(?P<id>[^/]+)", portal_update)
    emu.route("DELETE", CONTROL + r"/referrals/(?P<id>[^/]+)", withdraw)
    emu.route("POST", CONTROL + r"/referrals/(?P<id>[^/]+)/microsoft", microsoft_update)
    emu.route("GET", CONTROL + "/counters", counters)
    emu.route("DELETE", CONTROL + "/counters", reset_counters)
    emu.route("POST", CONTROL + "/faults", add_fault)
    emu.route("DELETE", CONTROL + "/faults", clear_faults)
    emu.route("GET", CONTROL + "/deliveries", deliveries)
    emu.route("POST", CONTROL + "/deliveries", send)
    emu.route("POST", CONTROL + "/deliveries/release", release)
    emu.route("POST", CONTROL + "/config", config)
