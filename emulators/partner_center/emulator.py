"""In-memory emulator of the Partner Center Referrals and Webhooks APIs, with signed callbacks.

Run it with ``python -m emulators.partner_center [--port N]`` (default 7101) or start it in-process:
``emu = PartnerCenterEmulator().start()``. The connector's Referrals and Webhooks base URLs both point at
``emu.url``. Besides the two APIs it serves the webhook signing certificates (``/cert/...``, ``/pki/...``,
``/_emulator/ca.pem``) and a control API under ``/_emulator/`` whose operations are also methods:

=======================================  ===============================================================
``POST /_emulator/reset``                 :meth:`reset`
``GET|POST /_emulator/referrals``         every referral / :meth:`seed_referral` ``{"kind", "overrides"}``
                                          or ``{"referral": {...}}``, optional ``"raiseEvent": false``
``GET|PATCH /_emulator/referrals/{id}``   raw referral / :meth:`portal_update` (merge, new eTag, event)
``GET|DELETE /_emulator/counters``        :meth:`counters` / :meth:`reset_counters`
``POST|DELETE /_emulator/faults``         :meth:`add_fault` ``{"status", "count", "retryAfter", "method",
                                          "path", "after"}`` / :meth:`clear_faults`
``GET|POST /_emulator/deliveries``        :meth:`deliveries` (``?status=held|pending|...&top=N``) / :meth:`send_event`
                                          ``{"referralId", "eventName", "redeliver", "corruptSignature",
                                          "certificateUrl", "signer", "url"}``
``POST /_emulator/deliveries/release``    :meth:`release_deliveries` (``dispatchMode`` ``hold``)
``POST .../referrals/{id}/microsoft``     :meth:`microsoft_update`: Microsoft's seller acts on its referral in the
                                          engagement ``{"status", "substatus", "team", "trackingInfo", ...}``
``POST /_emulator/config``                ``{"pageSize", "dispatchMode", "deliveryAttempts", "retryDelay",
                                          "requiredToken", "relatedEventResource": "partner"|"related"}``
=======================================  ===============================================================

Events: a write to one of the partner's own referrals raises ``referral-created``/``referral-updated``;
a write to another party's copy in the same engagement (e.g. Microsoft's, see :mod:`.microsoft`) raises
``related-referral-*`` pointing at each of the partner's referrals in that engagement (or, with
``relatedEventResource`` ``related``, at the copy that changed).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from .._server import Emulator, Handler, Request, Response
from .control import register_control_routes
from .dispatch import (
    Delivery,
    DispatchMode,
    WebhookDispatcher,
    event_body,
    new_delivery,
    signed_headers,
)
from .faults import Fault
from .microsoft import check_new_status, checked_changes, find_microsoft_referral, new_microsoft_referral
from .odata import FILTERABLE_ROOTS, ODataError
from .pki import DEFAULT_ISSUER_ORG, DEFAULT_SUBJECT, ROOT_PEM_PATH, EmulatorPki
from .query import list_page
from .registration import WEBHOOK_EVENTS, WebhookRegistry, error
from .rules import (
    READ_ONLY_FIELDS,
    RuleViolation,
    apply_patch,
    check_services_cosell,
    check_transition,
    missing_fields,
)
from .samples import MICROSOFT_ORG_ID, cosell_referral, lead_referral, merge

DEFAULT_PORT = 7101
REFERRALS = "/v1.0/engagements/referrals"
REGISTRATION = "/webhooks/v1/registration"
MFA_REQUIRED_CODE = "900421"
MFA_REQUIRED_MESSAGE = (
    "Multi-factor authentication is required for App+User calls to Partner Center APIs; the token was issued "
    "without it."
)
REQUIRED_ON_CREATE = ("type", "customerProfile", "consent", "details")


def _etag_matches(header: str, etag: str) -> bool:
    # Clients may send the eTag exactly as the body shows it or without the quotes.
    wanted = [part.strip().removeprefix("W/").strip('"') for part in header.split(",")]
    return "*" in wanted or etag.strip('"') in wanted


class PartnerCenterEmulator(Emulator):
    name = "partner-center"

    def __init__(
        self,
        *,
        required_token: str | None = None,
        page_size: int = 100,
        organization_id: str = "4a1a4d6e-2f5c-4a3a-9d38-0c6b3f1e7a11",
        organization_name: str = "Contoso Partner Ltd",
        dispatch_mode: DispatchMode = "async",
        delivery_attempts: int = 10,
        retry_delay: float = 0.1,
        cert_subject: str = DEFAULT_SUBJECT,
        cert_issuer_org: str = DEFAULT_ISSUER_ORG,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.required_token = required_token
        # Since April 2026 App+User calls without MFA are refused with 900421: a JWT whose amr lacks "mfa" is.
        self.require_mfa = False
        self.page_size = page_size
        # Which properties $filter accepts; tests narrow it to play a service that refuses a documented filter.
        self.filterable = FILTERABLE_ROOTS
        # Which referral a related-referral event's ResourceUri names: each of the partner's referrals on the
        # engagement ("partner", the default) or the related referral that changed ("related"); undocumented.
        self._related_event_resource = "partner"
        self.organization_id, self.organization_name = organization_id, organization_name
        self.cert_subject, self.cert_issuer_org = cert_subject, cert_issuer_org
        self.clock = clock or (lambda: datetime.now(UTC))
        self.dispatcher = WebhookDispatcher(dispatch_mode, delivery_attempts, retry_delay)
        self.webhooks = WebhookRegistry(organization_id)
        self._pki: EmulatorPki | None = None
        self._referrals: dict[str, dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._counters: Counter[str] = Counter()
        self._last_event: dict[str, tuple[str, bytes]] = {}
        self._last_time: datetime | None = None
        # (operation, MS-CorrelationId or None) of each authorised Referrals API call, in order.
        self.correlation_ids: list[tuple[str, str | None]] = []
        self._register_routes()

    # -- configuration -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.url if self._server is not None else f"http://127.0.0.1:{DEFAULT_PORT}"

    @property
    def dispatch_mode(self) -> DispatchMode:
        return self.dispatcher.mode

    @dispatch_mode.setter
    def dispatch_mode(self, mode: DispatchMode) -> None:
        if mode not in ("async", "sync", "off", "hold"):
            raise ValueError("dispatch_mode must be async, sync, off or hold")
        self.dispatcher.mode = mode
        if mode != "hold":
            self.dispatcher.release()  # nothing stays held once delivery resumes

    @property
    def related_event_resource(self) -> str:
        return self._related_event_resource

    @related_event_resource.setter
    def related_event_resource(self, value: str) -> None:
        if value not in ("partner", "related"):
            raise ValueError("relatedEventResource must be partner or related")
        self._related_event_resource = value

    @property
    def delivery_attempts(self) -> int:
        return self.dispatcher.max_attempts

    @delivery_attempts.setter
    def delivery_attempts(self, attempts: int) -> None:
        self.dispatcher.max_attempts = max(1, int(attempts))

    @property
    def retry_delay(self) -> float:
        return self.dispatcher.retry_delay

    @retry_delay.setter
    def retry_delay(self, seconds: float) -> None:
        self.dispatcher.retry_delay = max(0.0, float(seconds))

    @property
    def pki(self) -> EmulatorPki:
        with self.lock:
            if self._pki is None or self._pki.base_url != self.base_url:
                self._pki = EmulatorPki(self.base_url, self.cert_subject, self.cert_issuer_org)
            return self._pki

    def start(self, port: int = 0, host: str = "127.0.0.1") -> PartnerCenterEmulator:
        super().start(port, host)
        _ = self.pki  # the certificates embed the emulator's URL, so they are made once it is known
        return self

    def stop(self) -> None:
        super().stop()
        self.dispatcher.close()

    def certificate_url(self, signer: str = "default") -> str:
        return self.pki.certificate_url(signer)

    def write_ca_bundle(self, path: str | Path) -> Path:
        """Write the root CA (PEM) for ``PARTNER_CENTER_WEBHOOK_CA_BUNDLE``; call it after :meth:`start`,
        which makes the PKI for the emulator's address."""
        target = Path(path)
        target.write_bytes(self.pki.root_pem())
        return target

    # -- control operations ------------------------------------------------------------------------
    def reset(self) -> None:
        self.dispatcher.wait_idle(timeout=2)
        with self.lock:
            self._referrals.clear()
            self._faults.clear()
            self._counters.clear()
            self._last_event.clear()
            self.correlation_ids.clear()
            self.related_event_resource = "partner"
            self.webhooks.reset()
            self.dispatcher.clear()

    def counters(self) -> dict[str, int]:
        with self.lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self.lock:
            self._counters.clear()

    @property
    def reads(self) -> int:
        return self.counters().get("reads", 0)

    @property
    def writes(self) -> int:
        return self.counters().get("writes", 0)

    def add_fault(
        self,
        status: int = 429,
        count: int = 1,
        retry_after: float | None = 1,
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
    ) -> None:
        """Make the next ``count`` matching API requests fail with ``status`` (429 or 503), once ``after``
        matching requests have been answered."""
        if status not in (429, 503):
            raise ValueError("only 429 and 503 faults are emulated")
        fault = Fault(status, int(count), retry_after, method, re.compile(path) if path else None, int(after))
        with self.lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def referrals(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self._referrals.values()]

    def referral(self, referral_id: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._referrals.get(referral_id)
            return copy.deepcopy(found) if found else None

    def seed_referral(
        self,
        referral: Mapping[str, Any] | None = None,
        *,
        kind: str = "cosell",
        raise_event: bool = True,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Create a referral as Microsoft would send it (incoming, invited by msft), bypassing auth."""
        if referral is None:
            builders = {"cosell": cosell_referral, "lead": lead_referral}
            if kind not in builders:
                raise ValueError("kind must be 'cosell' or 'lead'")
            body = builders[kind](**overrides)
        else:
            body = merge(dict(referral), overrides)
        body.setdefault("direction", "Incoming")
        body.setdefault("status", "New")
        body.setdefault("substatus", "Pending")
        invite = body.setdefault("inviteContext", {})
        invite.setdefault("invitedBy", {"organizationId": MICROSOFT_ORG_ID, "organizationName": "Microsoft"})
        with self.lock:
            stored = self._store_new(body, keep_identity=True)
        self._raise_events(stored, created=True, enabled=raise_event)
        return copy.deepcopy(stored)

    def portal_update(self, referral_id: str, changes: Mapping[str, Any], raise_event: bool = True) -> dict[str, Any]:
        """Merge ``changes`` as a person editing in the portal would (no transition rules), new eTag."""
        with self.lock:
            current = self._referrals.get(referral_id)
            if current is None:
                raise KeyError(referral_id)
            updated = merge(current, {k: v for k, v in changes.items() if k not in ("id", "eTag")})
            stored = self._commit(current, updated)
        self._raise_events(stored, created=False, enabled=raise_event)
        return copy.deepcopy(stored)

    def microsoft_update(self, referral_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Microsoft's seller works the engagement of ``referral_id`` (see :mod:`.microsoft`): Microsoft's referral
        there gets ``changes`` (status, substatus, statusReason, team, trackingInfo, inviteContext) under the
        documented transition rules, and the partner's referrals hear of it as ``related-referral-*``. KeyError
        for an unknown referral, RuleViolation for a change Microsoft could not make."""
        wanted = checked_changes(changes)
        with self.lock:
            partner = self._referrals.get(referral_id)
            if partner is None:
                raise KeyError(referral_id)
            current = find_microsoft_referral(self._referrals.values(), partner["engagementId"])
            if current is None:
                created = merge(new_microsoft_referral(partner), wanted)
                check_new_status(created)
                stored = self._store_new(
                    created, keep_identity=False, organizationId=MICROSOFT_ORG_ID, organizationName="Microsoft"
                )
            else:
                updated = merge(current, wanted)
                check_transition(current, updated)
                current["organizationId"], current["organizationName"] = MICROSOFT_ORG_ID, "Microsoft"
                stored = self._commit(current, updated)
        self._raise_events(stored, created=current is None)
        return copy.deepcopy(stored)

    def withdraw(self, referral_id: str) -> None:
        """The referral stops existing for the partner (its GET answers 404): Partner Center has no delete, but
        a referral can vanish from the partner's view, and the connector must report it, not act on it."""
        with self.lock:
            if self._referrals.pop(referral_id, None) is None:
                raise KeyError(referral_id)

    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self.dispatcher.deliveries)

    def release_deliveries(self) -> int:
        """In ``hold`` mode: send what is held so far (later events are held in turn); how many were sent."""
        return self.dispatcher.release()

    def wait_for_deliveries(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Wait until at least ``count`` deliveries exist and none is still being retried."""
        if not self.dispatcher.wait_for(count, timeout):
            raise TimeoutError(f"expected {count} finished webhook deliveries, saw {len(self.dispatcher.deliveries)}")
        return self.deliveries()

    def send_event(
        self,
        referral_id: str,
        event_name: str = "referral-updated",
        *,
        redeliver: bool = False,
        url: str | None = None,
        signer: str = "default",
        certificate_url: str | None = None,
        corrupt_signature: bool = False,
        ms_signature_header: bool | None = None,
    ) -> Delivery:
        """Deliver one callback on demand: a duplicate of the last event (``redeliver``), a corrupted
        signature, another signer or another certificate URL. Goes to ``url`` or the registered URL."""
        with self.lock:
            last = self._last_event.get(referral_id)
            if redeliver and last is None:
                raise KeyError(f"no event was raised for referral {referral_id}")
            if redeliver and last is not None:
                event_name, body = last
            else:
                body = event_body(event_name, self._resource_uri(referral_id), "referral")
            target = url or self.webhooks.url_for(event_name)
            header_flag = self.webhooks.ms_signature_header if ms_signature_header is None else ms_signature_header
        if target is None:
            raise ValueError(f"no webhook is registered for {event_name} and no url was given")
        headers = signed_headers(
            body,
            self.pki.signer(signer),
            certificate_url or self.certificate_url(signer),
            header_flag,
            corrupt_signature,
        )
        delivery = new_delivery(event_name, self._resource_uri(referral_id), target, body, headers, referral_id)
        self.dispatcher.submit(delivery, force=True)
        return delivery

    def redeliver(self, referral_id: str) -> Delivery:
        """Send the last event raised for the referral again, byte for byte (a duplicate delivery)."""
        return self.send_event(referral_id, redeliver=True)

    def deliver_with_corrupted_signature(self, referral_id: str) -> Delivery:
        return self.send_event(referral_id, redeliver=referral_id in self._last_event, corrupt_signature=True)

    def deliver_with_certificate_url(self, referral_id: str, certificate_url: str) -> Delivery:
        return self.send_event(referral_id, certificate_url=certificate_url)

    # -- storage -----------------------------------------------------------------------------------
    def _timestamp(self) -> str:
        now = self.clock()
        if self._last_time is not None and now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)  # every write must sort after the previous one
        self._last_time = now
        return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _links(self, referral: dict[str, Any]) -> dict[str, Any]:
        base = self.base_url + REFERRALS
        return {
            "self": {"uri": f"{base}/{referral['id']}", "method": "GET", "headers": []},
            "relatedReferrals": {
                "uri": f"{base}?$filter=engagementId eq '{referral['engagementId']}'",
                "method": "GET",
                "headers": [],
            },
        }

    def _store_new(self, body: dict[str, Any], keep_identity: bool, **assigned: Any) -> dict[str, Any]:
        referral = copy.deepcopy(body)
        if not keep_identity:
            for name in READ_ONLY_FIELDS - {"engagementId"}:
                referral.pop(name, None)
        referral.update(assigned)
        stamp = self._timestamp()
        referral.setdefault("id", str(uuid.uuid4()))
        referral["engagementId"] = referral.get("engagementId") or str(uuid.uuid4())
        referral.setdefault("organizationId", self.organization_id)
        referral.setdefault("organizationName", self.organization_name)
        referral.setdefault("createdDateTime", stamp)
        if keep_identity:
            # Seeds may bring their own times (e.g. an old referral for a reconcile watermark test).
            referral.setdefault("updatedDateTime", referral["createdDateTime"])
            referral.setdefault("eTag", f'"{uuid.uuid4()}"')
        else:
            referral["updatedDateTime"] = stamp
            referral["eTag"] = f'"{uuid.uuid4()}"'
        referral["links"] = self._links(referral)
        if referral["id"] in self._referrals:
            raise RuleViolation(f"a referral with id {referral['id']} already exists")
        self._referrals[referral["id"]] = referral
        return copy.deepcopy(referral)

    def _commit(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        stamp = self._timestamp()
        for name in ("id", "engagementId", "createdDateTime", "organizationId", "organizationName", "direction"):
            if name in before:
                after[name] = before[name]
        if after.get("status") == "Active" and before.get("status") != "Active":
            after.setdefault("acceptedDateTime", stamp)
        if after.get("status") == "Closed" and before.get("status") != "Closed":
            after["closedDateTime"] = stamp
        after["updatedDateTime"] = stamp
        after["eTag"] = f'"{uuid.uuid4()}"'
        after["links"] = self._links(after)
        self._referrals[after["id"]] = after
        return copy.deepcopy(after)

    # -- events ------------------------------------------------------------------------------------
    def _resource_uri(self, referral_id: str) -> str:
        return f"{self.base_url}/engagements/v1/referrals/{referral_id}"

    def _raise_events(self, referral: dict[str, Any], created: bool, enabled: bool = True) -> None:
        suffix = "created" if created else "updated"
        if referral.get("organizationId") == self.organization_id:
            targets = [(f"referral-{suffix}", referral["id"])]
        else:
            with self.lock:
                targets = [
                    (f"related-referral-{suffix}", r["id"])
                    for r in self._referrals.values()
                    if r.get("engagementId") == referral.get("engagementId")
                    and r.get("organizationId") == self.organization_id
                ]
            if targets and self.related_event_resource == "related":
                # Partner Center does not document which referral a related event names; this reading names
                # the related referral itself, once.
                targets = [(f"related-referral-{suffix}", referral["id"])]
        pending: list[Delivery] = []
        for event_name, referral_id in targets:
            body = event_body(event_name, self._resource_uri(referral_id), "referral", referral.get("updatedDateTime"))
            with self.lock:
                self._last_event[referral_id] = (event_name, body)
                url, header_flag = self.webhooks.url_for(event_name), self.webhooks.ms_signature_header
            if enabled and url:
                headers = signed_headers(body, self.pki.signer(), self.certificate_url(), header_flag)
                pending.append(
                    new_delivery(event_name, self._resource_uri(referral_id), url, body, headers, referral_id)
                )
        # Submitted outside the lock: a synchronous delivery may make the receiver call us back.
        for delivery in pending:
            self.dispatcher.submit(delivery)

    # -- request plumbing --------------------------------------------------------------------------
    def _api(self, operation: str, handler: Handler, kind: str | None = None) -> Handler:
        def wrapped(request: Request) -> Response:
            with self.lock:
                fault = next((f for f in self._faults if f.remaining > 0 and f.matches(request)), None)
                if fault is not None and fault.spared > 0:
                    fault.spared -= 1
                    fault = None
                if fault is not None:
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    self._counters["throttled" if fault.status == 429 else "unavailable"] += 1
            if fault is not None:
                return fault.response()
            if not self._authorised(request.header("Authorization")):
                with self.lock:
                    self._counters["unauthenticated"] += 1
                return error(401, "unauthenticated", "A valid bearer token is required.")
            if self.require_mfa and not _mfa_performed(str(request.header("Authorization"))[7:].strip()):
                with self.lock:
                    self._counters["mfa_required"] += 1
                return error(401, MFA_REQUIRED_CODE, MFA_REQUIRED_MESSAGE)
            with self.lock:
                self._counters[operation] += 1
                self.correlation_ids.append((operation, request.header("MS-CorrelationId")))
                if kind:
                    self._counters[kind] += 1
            return handler(request)

        return wrapped

    def _authorised(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        token = header[7:].strip()
        return bool(token) and (self.required_token is None or token == self.required_token)

    def _register_routes(self) -> None:
        one = REFERRALS + r"/(?P<id>[^/]+)"
        self.route("GET", REFERRALS, self._api("list", self._list, "reads"))
        self.route("POST", REFERRALS, self._api("create", self._create, "writes"))
        self.route("GET", one, self._api("get", self._get, "reads"))
        self.route("PUT", one, self._api("update", self._put, "writes"))
        self.route("PATCH", one, self._api("patch", self._patch, "writes"))
        self.route("GET", REGISTRATION + "/events", self._api("webhook_events", self._events))
        self.route("GET", REGISTRATION, self._api("webhook_get", lambda r: self._locked(self.webhooks.get)))
        self.route(
            "POST",
            REGISTRATION,
            self._api("webhook_create", lambda r: self._locked(lambda: self.webhooks.create(r.json()))),
        )
        self.route(
            "PUT",
            REGISTRATION,
            self._api("webhook_update", lambda r: self._locked(lambda: self.webhooks.update(r.json()))),
        )
        self.route("POST", REGISTRATION + "/validationEvents", self._api("webhook_test", self._validation_event))
        self.route(
            "GET",
            REGISTRATION + r"/validationEvents/(?P<cid>[^/]+)",
            self._api(
                "webhook_test_status", lambda r: self._locked(lambda: self.webhooks.validation_status(r.params["cid"]))
            ),
        )
        self.route("GET", r"(?:/cert/.+|/pki/.+)", self._serve_certificate)
        self.route(
            "GET",
            ROOT_PEM_PATH,
            lambda r: Response(200, self.pki.root_pem(), {"Content-Type": "application/x-pem-file"}),
        )
        register_control_routes(self)

    def _locked(self, action: Callable[[], Response]) -> Response:
        with self.lock:
            return action()

    def _serve_certificate(self, request: Request) -> Response:
        der = self.pki.served_der(request.path)
        if der is None:
            return Response(404, b"", {"Content-Type": "text/plain"})
        return Response(200, der, {"Content-Type": "application/pkix-cert"})

    # -- Referrals API -----------------------------------------------------------------------------
    def _list(self, request: Request) -> Response:
        try:
            with self.lock:
                body = list_page(
                    self._referrals.values(), request.query, self.page_size, self.base_url, REFERRALS, self.filterable
                )
        except ODataError as exc:
            return error(400, "invalidRequest", str(exc))
        return Response(200, body)

    def _found(self, referral: dict[str, Any], status: int = 200) -> Response:
        return Response(status, referral, {"ETag": referral["eTag"]})

    def _get(self, request: Request) -> Response:
        found = self.referral(request.params["id"])
        if found is None:
            return error(404, "itemNotFound", f"Referral {request.params['id']} was not found.")
        return self._found(found)

    def _create(self, request: Request) -> Response:
        body = _json_object(request)
        if body is None:
            return error(400, "invalidRequest", "The body must be a referral object.")
        missing = missing_fields(body, REQUIRED_ON_CREATE)
        if missing:
            return error(400, "invalidRequest", f"Missing required fields: {', '.join(missing)}.")
        if body["type"] not in ("Independent", "Shared"):
            return error(400, "invalidRequest", "type must be Independent or Shared.")
        try:
            check_services_cosell(body)
        except RuleViolation as exc:
            return error(400, "invalidRequest", str(exc))
        # Deals a partner creates start accepted; only a create that is already closed keeps its status.
        if not (body.get("status") == "Closed" and body.get("substatus") in ("Won", "Lost")):
            body["status"], body["substatus"] = "Active", "Accepted"
        with self.lock:
            try:
                stored = self._store_new(body, keep_identity=False, direction="Outgoing")
            except RuleViolation as exc:
                return error(400, "invalidRequest", str(exc))
            if stored["status"] == "Active":
                self._referrals[stored["id"]]["acceptedDateTime"] = stored["createdDateTime"]
                stored["acceptedDateTime"] = stored["createdDateTime"]
        self._raise_events(stored, created=True)
        return self._found(stored, 201)

    def _put(self, request: Request) -> Response:
        if_match = request.header("If-Match")
        if not if_match:
            return error(428, "invalidRequest", "The If-Match header with the referral eTag is required.")
        body = _json_object(request)
        if body is None:
            return error(400, "invalidRequest", "The body must be the whole referral.")
        if body.get("id") not in (None, request.params["id"]):
            return error(400, "invalidRequest", "The id in the body does not match the URL.")
        missing = missing_fields(body, REQUIRED_ON_CREATE)
        if missing:
            return error(400, "invalidRequest", f"Missing required fields: {', '.join(missing)}.")
        replacement = {k: v for k, v in body.items() if k not in READ_ONLY_FIELDS}
        return self._write(request.params["id"], if_match, lambda current: replacement, full=True)

    def _patch(self, request: Request) -> Response:
        try:
            operations = request.json()
        except ValueError:
            return error(400, "invalidRequest", "The body must be a JSON Patch array.")
        response = self._write(
            request.params["id"], request.header("If-Match"), lambda current: apply_patch(current, operations)
        )
        prefer = (request.header("Prefer") or "").lower()
        if response.status == 200 and "return=representation" not in prefer:
            return Response(204, None, dict(response.headers))
        return response

    def _write(
        self,
        referral_id: str,
        if_match: str | None,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        full: bool = False,
    ) -> Response:
        with self.lock:
            current = self._referrals.get(referral_id)
            if current is None:
                return error(404, "itemNotFound", f"Referral {referral_id} was not found.")
            if if_match and not _etag_matches(if_match, current["eTag"]):
                return error(412, "preconditionFailed", "The eTag does not match the current referral.")
            try:
                updated = change(copy.deepcopy(current))
                if full:
                    updated = {**{k: v for k, v in current.items() if k in READ_ONLY_FIELDS}, **updated}
                check_transition(current, updated)
                check_services_cosell(updated)
            except RuleViolation as exc:
                return error(400, "invalidRequest", str(exc))
            stored = self._commit(current, updated)
        self._raise_events(stored, created=False)
        return self._found(stored)

    # -- Webhooks API ------------------------------------------------------------------------------
    def _events(self, request: Request) -> Response:
        return Response(200, list(WEBHOOK_EVENTS))

    def _validation_event(self, request: Request) -> Response:
        with self.lock:
            url = self.webhooks.url_for("test-created")
            if url is None:
                return error(400, "invalidRequest", "Register the webhook for test-created before sending tests.")
            if not self.webhooks.take_validation_slot():
                return Response(
                    429,
                    {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 60 seconds."},
                    {"Retry-After": "60"},
                )
            correlation_id = self.webhooks.new_correlation_id()
            header_flag = self.webhooks.ms_signature_header
        resource_uri = f"{self.base_url}{REGISTRATION}/validationEvents/{correlation_id}"
        body = event_body("test-created", resource_uri, "test")
        headers = signed_headers(body, self.pki.signer(), self.certificate_url(), header_flag)
        delivery = new_delivery("test-created", resource_uri, url, body, headers, correlation_id=correlation_id)
        with self.lock:
            self.webhooks.validation_events[correlation_id] = delivery
        self.dispatcher.submit(delivery, force=True)
        return Response(200, {"correlationId": correlation_id})


def _mfa_performed(token: str) -> bool:
    """Whether a bearer JWT says its sign-in used MFA (``amr`` holds ``mfa``); an opaque token says nothing."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return "mfa" in (claims.get("amr") or [])


def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
