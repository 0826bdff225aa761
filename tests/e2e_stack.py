"""The end-to-end stack: Partner Center and Dataverse emulators, Azurite, and the real function app
in process with its webhook on real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from azure.functions.timer import TimerRequest

from emulators.dataverse import DataverseEmulator
from emulators.partner_center import PartnerCenterEmulator
from shared import wiring
from shared.crm.dynamics import DataverseCrm
from tests.crm_seller import DataverseSeller
from tests.harness import InProcessHost, WebhookEndpoint

PC_TOKEN = "pc-emulator-token"
DV_TOKEN = "dv-emulator-token"


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


@dataclass
class Stack:
    pc: PartnerCenterEmulator
    dv: DataverseEmulator
    host: InProcessHost
    endpoint: WebhookEndpoint

    def opportunities(self) -> list[dict]:
        return self.dv.table("opportunities")

    def crm(self) -> DataverseCrm:
        return DataverseCrm.for_url(self.dv.url, DV_TOKEN)

    def deliver_and_drain(self, deliveries: int, parallel: int = 1) -> None:
        self.pc.wait_for_deliveries(deliveries, timeout=10)
        run = self.host.drain(parallel=parallel)
        assert self.host.queue.depth() == 0, run.errors

    def dv_writes(self) -> int:
        counters = self.dv.counters()
        tables = sum(t["creates"] + t["updates"] + t["deletes"] for t in counters["tables"].values())
        return tables + sum(counters["actions"].values())

    def poll(self) -> None:
        self.host.functions["poll_crm"](TimerRequest(past_due=False))

    def seller(self) -> DataverseSeller:
        return DataverseSeller(self.dv.url, DV_TOKEN)

    def audit_actions(self, referral_id: str) -> list[str]:
        return [e.action for e in wiring.container().store.audit_trail(referral_id)]


def configure(monkeypatch, azurite, storage_names, pc, dv, tmp_path, **overrides: str) -> None:
    values = {
        "AzureWebJobsStorage": azurite.connection_string,
        "CRM_PROVIDER": "dynamics",
        "DATAVERSE_URL": dv.url,
        "DATAVERSE_ACCESS_TOKEN": DV_TOKEN,
        "PARTNER_CENTER_API_URL": pc.url,
        "PARTNER_CENTER_WEBHOOK_API_URL": pc.url,
        "PARTNER_CENTER_ACCESS_TOKEN": PC_TOKEN,
        "PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES": f"{pc.url}/cert/",
        "PARTNER_CENTER_WEBHOOK_CA_BUNDLE": str(pc.write_ca_bundle(tmp_path / "pc-ca.pem")),
        "MAX_INLINE_RETRY_AFTER_SECONDS": "2",
        **storage_names,
        **overrides,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def make_stack(monkeypatch, azurite, storage_names, pc, dv, tmp_path):
    endpoints: list[WebhookEndpoint] = []

    def build(**overrides: str) -> Stack:
        pc.reset()
        dv.reset()
        # The emulators live for the whole session: undo what earlier tests switched.
        pc.dispatch_mode, pc.delivery_attempts = "async", 10
        pc.clear_faults()
        dv.clear_faults()
        configure(monkeypatch, azurite, storage_names, pc, dv, tmp_path, **overrides)
        host = InProcessHost()
        host.queue.ensure()
        host.queue.client.clear_messages()
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
        return Stack(pc, dv, host, endpoint)

    yield build
    for endpoint in endpoints:
        endpoint.stop()
    wiring.reset()


@pytest.fixture
def stack(make_stack) -> Stack:
    return make_stack()
