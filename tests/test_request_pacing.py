"""A process keeps its Dataverse requests under the share of the request limit the service has shown it admits.

The pacer's rules, on a clock the tests move; then the adapter's threads against the Dataverse emulator's
sliding-window limit over real HTTP, counting the requests the emulator refused.
"""

from __future__ import annotations

import threading
from itertools import pairwise

import pytest

from emulators.dataverse.emulator import DataverseEmulator
from shared.crm.dynamics import DataverseConfig, DataverseCrm
from shared.domain.errors import Throttled
from shared.httpclient import ApiClient
from shared.inline_wait import job_waits
from shared.request_pacing import RequestPacer, dataverse_request_limit

LIMIT = "Number of requests exceeded the limit of 100 over time window of 10 seconds."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _send(pacer: RequestPacer, clock: Clock, count: int, every: float = 0.0) -> int:
    """Take ``count`` turns that are free now, ``every`` seconds apart; how many were given."""
    given = 0
    for _ in range(count):
        if pacer.turn() == 0.0:
            given += 1
        clock.now += every
    return given


def test_the_refusal_names_the_limit_and_its_window():
    assert dataverse_request_limit(
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
    ) == (6000, 300.0)
    assert dataverse_request_limit("Combined execution time of incoming requests exceeded limit of 1200000") is None
    assert dataverse_request_limit("Number of concurrent requests exceeded the limit of 52.") is None


def test_nothing_is_held_back_before_the_service_refuses():
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    assert _send(pacer, clock, 10_000) == 10_000
    assert pacer.budget is None


def test_a_refusal_closes_the_process_for_its_retry_after():
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    _send(pacer, clock, 50)
    pacer.refused(4.0, "Number of concurrent requests exceeded the limit of 52.")
    assert pacer.turn() == pytest.approx(4.0)
    clock.now += 3.5
    assert pacer.turn() == pytest.approx(0.5)
    clock.now += 0.5
    assert pacer.turn() == 0.0
    assert pacer.budget is None  # not the request limit: no budget learned


def _greedy(pacer: RequestPacer, clock: Clock, seconds: float) -> list[float]:
    """Ask for turns as soon as the pacer allows, for ``seconds``; when each was given."""
    given, end = [], clock.now + seconds
    while clock.now < end:
        wait = pacer.turn()
        if wait == 0.0:
            given.append(clock.now)
        else:
            clock.now += wait
    return given


def test_a_refusal_for_the_request_limit_spaces_the_process_within_what_it_got():
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    _send(pacer, clock, 60, every=0.1)  # 60 in the last 6 s: this process's share of the limit of 100 in 10 s
    refused_at = clock.now
    pacer.refused(1.0, LIMIT)
    assert pacer.budget == 54 and pacer.window_seconds == 10.0
    assert pacer.turn() == pytest.approx(1.0)  # closed for the Retry-After

    clock.now += 1.0
    given = _greedy(pacer, clock, 30.0)
    # Evenly spaced at the budget per window, never more than the budget in any 10 s. The budget grows by one step
    # (a two-hundredth of the limit, at least 1) for each 2 s (a fifth of the window) without a refusal.
    assert all(later - earlier >= 10.0 / pacer.budget - 1e-9 for earlier, later in pairwise(given))
    assert max(len([t for t in given if start <= t < start + 10.0]) for start in given) <= pacer.budget
    elapsed = clock.now - refused_at  # a step is taken at the first turn held back after each 2 s: it may lag
    assert 54 + elapsed // 2.5 <= pacer.budget <= 54 + elapsed // 2


def test_later_refusals_cut_the_budget_by_a_tenth_once_per_refusal_not_per_request_in_flight():
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    _send(pacer, clock, 100, every=0.05)
    for _ in range(8):  # the herd in flight when the limit was met: all refused at once
        pacer.refused(1.0, LIMIT)
    assert pacer.budget == 90
    clock.now += 1.0
    _greedy(pacer, clock, 1.0)
    pacer.refused(1.0, LIMIT)  # after the process opened again: a fresh refusal
    assert pacer.budget == 81


def test_a_process_refused_after_a_handful_of_requests_keeps_a_fiftieth_of_the_limit():
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    _send(pacer, clock, 3)
    pacer.refused(1.0, "Number of requests exceeded the limit of 6000 over time window of 300 seconds.")
    assert pacer.budget == 120


def test_a_wait_longer_than_the_inline_wait_is_throttled_before_anything_is_sent():
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    pacer.refused(30.0, LIMIT)
    sent: list[str] = []

    class Session:
        def request(self, *args, **kwargs):  # pragma: no cover - must not be reached
            sent.append("sent")
            raise AssertionError("sent while held back")

    client = ApiClient("Dataverse", "http://dataverse.invalid", None, pacer=pacer, session=Session())  # type: ignore[arg-type]
    with pytest.raises(Throttled) as caught:
        client.request("GET", "opportunities")
    assert caught.value.retry_after == 30 and sent == [] and client.calls == 0


def test_a_job_that_has_had_an_answer_waits_for_its_turn_past_the_inline_wait(dataverse_emu: DataverseEmulator):
    """Another thread's refusal closes the process for 30 s, longer than a request may wait inline (2 s). A job that
    has had an answer waits for its turn (up to its 60 s): deferred, it would ask for that answer again. A job that
    has had none is deferred at no cost, and so is a started job whose wait would pass its allowance."""
    clock = Clock()
    pacer = RequestPacer(clock=clock)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    root = f"{dataverse_emu.url}/api/data/v9.2"
    client = ApiClient("Dataverse", root, lambda: "pacing-test-token", max_inline_wait=2.0, pacer=pacer, sleep=sleep)
    with job_waits(60.0):
        pacer.refused(30.0, LIMIT)
        with pytest.raises(Throttled):
            client.request("GET", "opportunities")  # nothing answered yet
        assert client.calls == 0 and slept == []

    clock.now += 30.0
    with job_waits(60.0):
        client.request("GET", "WhoAmI")  # once the process is open again: the job's first answer
        pacer.refused(30.0, LIMIT)
        assert client.request("GET", "opportunities").status_code == 200
        assert sum(slept) == pytest.approx(30.0) and client.calls == 2

        pacer.refused(90.0, LIMIT)
        with pytest.raises(Throttled) as caught:
            client.request("GET", "opportunities")
        assert caught.value.retry_after == 90 and client.calls == 2

    clock.now += 90.0
    client.request("GET", "WhoAmI")  # outside a job (the poll): the inline wait alone
    pacer.refused(30.0, LIMIT)
    with pytest.raises(Throttled):
        client.request("GET", "opportunities")


# -- against the emulator's limit, over HTTP ------------------------------------------------------------------------
def _read_in_threads(crm: DataverseCrm, reads: int, threads: int) -> list[BaseException]:
    errors: list[BaseException] = []
    left = iter(range(reads))
    lock = threading.Lock()

    def reader() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            try:
                crm.find_by_referral_id("0b5e3a6c-1111-4c1e-9d1a-000000000001")
            except BaseException as exc:  # every one is reported by the test
                errors.append(exc)

    started = [threading.Thread(target=reader) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def test_threads_of_a_process_stop_meeting_refusals_once_the_limit_is_learned(dataverse_emu: DataverseEmulator):
    """Eight threads read 200 times through one adapter against 40 requests per 2 s. Each refusal is a request
    spent: retrying each on its own after its Retry-After refuses the herd again in every window. The process
    learns its share from the first refusal and waits for turns instead."""
    dataverse_emu.set_request_limit(40, 2.0)
    crm = DataverseCrm(DataverseConfig(dataverse_emu.url, max_inline_wait=30.0), lambda: "pacing-test-token")
    assert _read_in_threads(crm, reads=200, threads=8) == []
    refused = dataverse_emu.counters()["throttled"]
    # The first window's herd (at most one per thread), then a few as the budget grows back: about a third of
    # what retrying each request on its own after its Retry-After meets (33 here).
    assert refused <= 18, refused
