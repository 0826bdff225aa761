"""The emulators' network faults, and how the shared HTTP client treats each of them.

A create whose answer is lost must not be sent again blind (that made a second referral); reads and
conditional writes are retried; throttling is waited out or deferred with the server's Retry-After.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from emulators.partner_center import PartnerCenterEmulator
from emulators.partner_center.samples import outgoing_cosell_body
from shared.domain.errors import LeaseLost, OutcomeUnknown, Throttled, TransientError
from shared.httpclient import ApiClient, create_once, parse_retry_after
from shared.partner_center.auth import StaticToken
from shared.partner_center.client import REFERRALS_PATH, PartnerCenterClient, PartnerCenterConfig
from shared.write_fence import fenced


@pytest.fixture(scope="module")
def emu() -> Iterator[PartnerCenterEmulator]:
    emulator = PartnerCenterEmulator(dispatch_mode="off").start()
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def fresh(emu: PartnerCenterEmulator) -> Iterator[None]:
    emu.reset()
    emu.network_faults.clear()
    emu.required_token = None
    yield
    emu.network_faults.clear()


def client(emu: PartnerCenterEmulator, waits: list[float] | None = None) -> PartnerCenterClient:
    sink = waits if waits is not None else []
    return PartnerCenterClient(PartnerCenterConfig(emu.url, timeout=5), StaticToken("t"), sleep=sink.append)


def body(name: str = "Contoso") -> dict[str, object]:
    data = outgoing_cosell_body()
    data["name"] = name
    return data


@pytest.mark.parametrize("mode", ["drop", "502", "504"])
def test_a_create_whose_answer_is_lost_took_effect_and_is_not_sent_again(emu: PartnerCenterEmulator, mode: str):
    emu.network_faults.add("lose_answer", method="POST", path=REFERRALS_PATH, mode=mode)
    with pytest.raises(OutcomeUnknown):
        client(emu).create_referral(body())
    # The emulator made it; the client did not send it a second time.
    assert len(emu.referrals()) == 1
    assert emu.network_faults.stats()["injected"] == {f"lose_answer:{mode}": 1}


def test_create_once_finds_what_the_lost_attempt_made(emu: PartnerCenterEmulator):
    pc = client(emu)
    emu.network_faults.add("lose_answer", method="POST", path=REFERRALS_PATH, mode="drop")

    def find() -> object:
        return next(iter(pc.list_referrals("name eq 'Lost answer'")), None)

    made = create_once(lambda: pc.create_referral(body("Lost answer")), find, "a referral")
    assert [r["id"] for r in emu.referrals()] == [made.id]


def test_create_once_sends_again_when_the_first_attempt_never_arrived(emu: PartnerCenterEmulator):
    pc = client(emu)
    emu.network_faults.add("reset", method="POST", path=REFERRALS_PATH)

    def find() -> object:
        return next(iter(pc.list_referrals("name eq 'Reset'")), None)

    made = create_once(lambda: pc.create_referral(body("Reset")), find, "a referral")
    assert [r["id"] for r in emu.referrals()] == [made.id]


def test_reads_are_retried_after_a_reset_and_a_lost_answer(emu: PartnerCenterEmulator):
    created = client(emu).create_referral(body())
    emu.network_faults.add("reset", method="GET")
    emu.network_faults.add("lose_answer", method="GET", mode="504")
    waits: list[float] = []
    assert client(emu, waits).get(created.id or "").id == created.id
    assert len(waits) == 2


def test_a_throttled_create_is_retried_because_nothing_happened(emu: PartnerCenterEmulator):
    emu.network_faults.add("status", method="POST", status=429, retry_after=2, count=2)
    waits: list[float] = []
    client(emu, waits).create_referral(body())
    assert waits == [2.0, 2.0]
    assert len(emu.referrals()) == 1


def test_a_long_retry_after_as_an_http_date_is_raised_with_its_delay(emu: PartnerCenterEmulator):
    when = datetime.now(UTC) + timedelta(minutes=10)
    api = ApiClient("Partner Center", emu.url, None, max_inline_wait=20, sleep=lambda s: None)
    emu.network_faults.add("status", method="GET", status=429, retry_after=None)
    # A rule's Retry-After is numeric; an HTTP date is checked through the parser the client uses.
    assert parse_retry_after(format_datetime(when, usegmt=True)) == pytest.approx(600, abs=2)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    emu.network_faults.clear()
    emu.network_faults.add("status", method="GET", status=503, retry_after=600, count=1)
    with pytest.raises(TransientError) as raised:
        api.request("GET", REFERRALS_PATH)
    assert raised.value.retry_after == 600
    emu.network_faults.add("status", method="GET", status=429, retry_after=600, count=1)
    with pytest.raises(Throttled):
        api.request("GET", REFERRALS_PATH)


def test_latency_longer_than_the_timeout_is_a_lost_answer_for_a_create(emu: PartnerCenterEmulator):
    emu.network_faults.add("lose_answer", method="POST", mode="drop", delay=0.0)
    emu.network_faults.add("latency", method="POST", delay=1.5)
    pc = PartnerCenterClient(PartnerCenterConfig(emu.url, timeout=0.5), StaticToken("t"), sleep=lambda s: None)
    with pytest.raises(OutcomeUnknown):
        pc.create_referral(body())
    with pytest.raises(OutcomeUnknown):
        pc.create_referral(body())
    deadline = time.monotonic() + 5
    while len(emu.referrals()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the slow attempt finishes on the server after the client gave up on it
    time.sleep(0.2)
    assert len(emu.referrals()) == 2  # each attempt took effect once; neither was repeated blind


def test_a_fenced_job_cannot_write_but_can_read(emu: PartnerCenterEmulator):
    pc = client(emu)
    created = pc.create_referral(body())

    def lost() -> None:
        raise LeaseLost("sync", "lease lost")

    before = len(emu.request_log)
    with fenced(lost):
        assert pc.get(created.id or "").id == created.id
        with pytest.raises(LeaseLost):
            pc.create_referral(body("Second"))
    assert len(emu.referrals()) == 1
    assert all(method == "GET" for method, _ in emu.request_log[before:])


def test_faults_are_controlled_over_http(emu: PartnerCenterEmulator):
    url = f"{emu.url}/_faults"
    assert requests.post(url, json={"kind": "reset", "method": "GET", "count": 2}, timeout=5).status_code == 204
    assert requests.get(url, timeout=5).json() == {"injected": {}, "pendingRules": 2}
    assert requests.post(url, json={"kind": "nonsense"}, timeout=5).status_code == 400
    random_mix = {"random": {"seed": 7, "loseAnswer": 0.5, "methods": ["POST"], "latency": [0, 0.01]}}
    assert requests.post(url, json=random_mix, timeout=5).status_code == 204
    assert requests.delete(url, timeout=5).status_code == 204
    assert requests.get(url, timeout=5).json() == {"injected": {}, "pendingRules": 0}


def test_a_random_mix_is_reproducible_from_its_seed(emu: PartnerCenterEmulator):
    def run() -> dict[str, int]:
        emu.network_faults.clear()
        emu.network_faults.configure_random(seed=42, lose_answer=0.2, reset=0.2, burst=0.1, retry_after=0)
        for _ in range(200):
            emu.network_faults.decide("POST", REFERRALS_PATH)
        return dict(emu.network_faults.stats()["injected"])

    first = run()
    assert first == run()
    assert first.get("reset", 0) > 10 and first.get("lose_answer:drop", 0) + first.get("lose_answer:502", 0) > 5
