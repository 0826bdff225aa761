"""The end-to-end stack: the Partner Center emulator, a CRM emulator (Dataverse or Salesforce), Azurite,
and the real function app in process with its webhook on real HTTP.

``make_stack(crm="dynamics"|"salesforce", **setting_overrides)`` builds one; without ``crm`` it takes the
``crm`` fixture, which is ``"dynamics"`` unless a test module overrides it (the end-to-end modules
parametrize it over both CRMs). The CRM is reached through ``stack.view`` (:mod:`tests.crm_view`), so a
test reads the same for both. Salesforce is signed in with the client credentials flow, as in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from azure.functions.timer import TimerRequest

from emulators.dataverse import DataverseEmulator
from emulators.partner_center import PartnerCenterEmulator
from emulators.salesforce.emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SalesforceEmulator
from emulators.salesforce.rest import MAX_BATCH_SIZE
from shared import wiring
from shared.ports import Crm
from tests.crm_seller import Seller
from tests.crm_view import DV_TOKEN, CrmView, DataverseView, SalesforceView
from tests.harness import InProcessHost, WebhookEndpoint

PC_TOKEN = "pc-emulator-token"
CRMS = ("dynamics", "salesforce")


@pytest.fixture(scope="session")
def pc() -> Iterator[PartnerCenterEmulator]:
    emulator = PartnerCenterEmulator(required_token=PC_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def dv() -> Iterator[DataverseEmulator]:
    emulator = DataverseEmulator(required_token=DV_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def sf() -> Iterator[SalesforceEmulator]:
    emulator = SalesforceEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def crm() -> str:
    """The CRM of ``stack`` / ``make_stack()``; end-to-end modules override this with both CRMs."""
    return "dynamics"


@dataclass
class Stack:
    pc: PartnerCenterEmulator
    view: CrmView
    host: InProcessHost
    endpoint: WebhookEndpoint

    @property
    def crm_name(self) -> str:
        return self.view.name

    def opportunities(self) -> list[dict[str, Any]]:
        """Neutral opportunity dicts (see :mod:`tests.crm_view`)."""
        return self.view.opportunities()

    def opportunity(self, crm_id: str) -> dict[str, Any]:
        return self.view.opportunity(crm_id)

    def crm(self) -> Crm:
        """The connector's adapter for this CRM, with its own credentials (a reader for the test)."""
        return self.view.reader()

    def crm_writes(self) -> int:
        return self.view.writes()

    def seller(self) -> Seller:
        return self.view.seller()

    def deliver_and_drain(self, deliveries: int, parallel: int = 1) -> None:
        self.pc.wait_for_deliveries(deliveries, timeout=10)
        run = self.host.drain(parallel=parallel)
        assert self.host.queue.depth() == 0, run.errors

    def poll(self) -> None:
        self.host.functions["poll_crm"](TimerRequest(past_due=False))

    def status(self) -> dict[str, Any]:
        return json.loads(self.host.get("status").get_body())

    def audit_actions(self, referral_id: str) -> list[str]:
        """Audit actions for a record, newest first."""
        return [e.action for e in wiring.container().store.audit_trail(referral_id)]


def crm_settings(crm: str, dv: DataverseEmulator | None, sf: SalesforceEmulator | None) -> dict[str, str]:
    if crm == "dynamics":
        assert dv is not None
        return {"CRM_PROVIDER": "dynamics", "DATAVERSE_URL": dv.url, "DATAVERSE_ACCESS_TOKEN": DV_TOKEN}
    if crm == "salesforce":
        assert sf is not None
        # The My Domain login URL and a connected app's client credentials, as configured in production.
        return {
            "CRM_PROVIDER": "salesforce",
            "SALESFORCE_AUTH_FLOW": "client_credentials",
            "SALESFORCE_LOGIN_URL": sf.url,
            "SALESFORCE_CLIENT_ID": DEFAULT_CLIENT_ID,
            "SALESFORCE_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        }
    raise ValueError(f"crm must be one of {CRMS}, not {crm!r}")


def configure(monkeypatch, azurite, storage_names, pc, tmp_path, crm_values: dict[str, str], **overrides: str) -> None:
    # Whatever the surrounding environment holds for either CRM must not leak into the stack.
    for name in (
        "DATAVERSE_URL",
        "DATAVERSE_ACCESS_TOKEN",
        "SALESFORCE_ACCESS_TOKEN",
        "SALESFORCE_INSTANCE_URL",
        "SALESFORCE_TOKEN_URL",
        "SALESFORCE_AUTH_FLOW",
    ):
        monkeypatch.delenv(name, raising=False)
    values = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PARTNER_CENTER_API_URL": pc.url,
        "PARTNER_CENTER_WEBHOOK_API_URL": pc.url,
        "PARTNER_CENTER_ACCESS_TOKEN": PC_TOKEN,
        "PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES": f"{pc.url}/cert/",
        "PARTNER_CENTER_WEBHOOK_CA_BUNDLE": str(pc.write_ca_bundle(tmp_path / "pc-ca.pem")),
        "MAX_INLINE_RETRY_AFTER_SECONDS": "2",
        "MAX_STARTED_JOB_WAIT_SECONDS": "5",
        "BUSY_RETRY_SECONDS": "0",  # the test host drains the queue at once; no need to wait for busy pairs
        **crm_values,
        **storage_names,
        **overrides,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _reset_crm(
    crm: str, request: pytest.FixtureRequest
) -> tuple[CrmView, DataverseEmulator | None, SalesforceEmulator | None]:
    """The emulators live for the whole session: empty them and undo what earlier tests switched."""
    if crm == "dynamics":
        dv: DataverseEmulator = request.getfixturevalue("dv")
        dv.reset()
        dv.clear_faults()
        dv.network_faults.clear()
        return DataverseView(dv), dv, None
    sf: SalesforceEmulator = request.getfixturevalue("sf")
    sf.reset()  # records, sessions, quota, faults, counters
    sf.network_faults.clear()
    sf.configure(upsert_update_status=200, query_batch_size=MAX_BATCH_SIZE, min_batch_size=200)
    return SalesforceView(sf), None, sf


@pytest.fixture
def make_stack(request, monkeypatch, azurite, storage_names, pc, tmp_path, crm):
    endpoints: list[WebhookEndpoint] = []

    def build(crm: str = crm, **overrides: str) -> Stack:
        if crm not in CRMS:
            raise ValueError(f"crm must be one of {CRMS}, not {crm!r}")
        pc.reset()
        pc.dispatch_mode, pc.delivery_attempts = "async", 10
        pc.clear_faults()
        pc.network_faults.clear()
        view, dv, sf = _reset_crm(crm, request)
        configure(monkeypatch, azurite, storage_names, pc, tmp_path, crm_settings(crm, dv, sf), **overrides)
        host = InProcessHost()
        host.queue.ensure()
        host.queue.client.clear_messages()
        host.queue.poison.clear_messages()
        endpoint = WebhookEndpoint(host).start()
        endpoints.append(endpoint)
        response = requests.post(
            f"{pc.url}/webhooks/v1/registration",
            headers={"Authorization": f"Bearer {PC_TOKEN}"},
            json={
                "WebhookUrl": endpoint.webhook_url,
                "WebhookEvents": [
                    "referral-created",
                    "referral-updated",
                    "related-referral-created",
                    "related-referral-updated",
                ],
            },
            timeout=5,
        )
        assert response.status_code in (200, 201), response.text
        return Stack(pc, view, host, endpoint)

    yield build
    for endpoint in endpoints:
        endpoint.stop()
    wiring.reset()


@pytest.fixture
def stack(make_stack) -> Stack:
    return make_stack()
