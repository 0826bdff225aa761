"""Faults of the network and the front door, shared by every emulator: what real services do on a bad day.

Each emulator also has its own service-level faults (a 429 with the service's own body, an expired session);
these are the ones that sit in front of any service:

- ``latency``: the request waits ``delay`` seconds (or a random delay in ``latency``) before it is handled;
- ``reset``: the connection is dropped before the request is handled (nothing happens);
- ``lose_answer``: the request is handled (it takes effect), then the answer is lost: the connection is
  dropped (``mode="drop"``) or a gateway answers 502/504 instead (``mode="502"`` / ``"504"``);
- ``status``: a 5xx or 429 with ``Retry-After`` instead of an answer (nothing happens); in random mode such
  answers come in bursts, as real throttling does.

Faults are one-shot rules (``add``: the next ``count`` matching requests) or a seeded random mix
(``configure_random``) for fault-injection runs. Control paths (``/_emulator``, ``/_faults``) are never hit.
Over HTTP: ``POST /_faults`` (a rule, or ``{"random": {...}}``), ``DELETE /_faults``, ``GET /_faults`` (what
was injected so far).
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FAULTS_PATH = "/_faults"
CONTROL_PREFIXES = ("/_emulator", FAULTS_PATH)
KINDS = ("latency", "reset", "lose_answer", "status")
LOSE_MODES = ("drop", "502", "504")


@dataclass
class Decision:
    """What the server does with one request."""

    delay: float = 0.0
    reset: bool = False
    lose: str | None = None  # None, or one of LOSE_MODES
    status: int | None = None
    retry_after: float | None = None


@dataclass
class Rule:
    kind: str
    count: int = 1
    method: str | None = None
    path: re.Pattern[str] | None = None
    delay: float = 0.0
    mode: str = "drop"
    status: int = 503
    retry_after: float | None = None
    skip: int = 0  # matching requests let through before the rule starts to hit

    def matches(self, method: str, path: str) -> bool:
        if self.count <= 0 or (self.method and self.method.upper() != method):
            return False
        return self.path is None or bool(self.path.search(path))


@dataclass
class RandomMix:
    """Probabilities per request; ``methods`` limits which requests can be hit (None = all)."""

    seed: int | None = None
    lose_answer: float = 0.0
    reset: float = 0.0
    burst: float = 0.0
    burst_length: int = 3
    burst_statuses: tuple[int, ...] = (429, 503)
    retry_after: float = 1.0
    latency: tuple[float, float] = (0.0, 0.0)
    methods: frozenset[str] | None = None
    lose_modes: tuple[str, ...] = LOSE_MODES
    path: re.Pattern[str] | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class NetworkFaults:
    """Thread-safe registry of rules and the random mix; :meth:`decide` is called once per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._random: RandomMix | None = None
        self._burst_left = 0
        self._burst_status = 503
        self.injected: Counter[str] = Counter()

    def add(
        self,
        kind: str,
        *,
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
        delay: float = 0.0,
        mode: str = "drop",
        status: int = 503,
        retry_after: float | None = None,
        skip: int = 0,
    ) -> None:
        """``skip``: let that many matching requests through first (the second of two alike requests is hit)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if kind == "lose_answer" and mode not in LOSE_MODES:
            raise ValueError(f"mode must be one of {LOSE_MODES}")
        rule = Rule(
            kind,
            max(1, int(count)),
            method.upper() if method else None,
            re.compile(path) if path else None,
            float(delay),
            mode,
            int(status),
            retry_after,
            max(0, int(skip)),
        )
        with self._lock:
            self._rules.append(rule)

    def configure_random(self, **options: Any) -> None:
        if "methods" in options and options["methods"] is not None:
            options["methods"] = frozenset(m.upper() for m in options["methods"])
        if "latency" in options:
            low, high = options["latency"]
            options["latency"] = (float(low), float(high))
        for key in ("burst_statuses", "lose_modes"):
            if key in options:
                options[key] = tuple(options[key])
        if options.get("path"):
            options["path"] = re.compile(options["path"])
        mix = RandomMix(**options)
        with self._lock:
            self._random = mix
            self._burst_left = 0

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._random = None
            self._burst_left = 0
            self.injected.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"injected": dict(self.injected), "pendingRules": sum(r.count for r in self._rules)}

    def decide(self, method: str, path: str) -> Decision:
        if path.startswith(CONTROL_PREFIXES):
            return Decision()
        with self._lock:
            decision = self._from_rules(method, path)
            if decision is None:
                decision = self._from_random(method, path)
            for name, hit in (
                ("latency", decision.delay > 0),
                ("reset", decision.reset),
                (f"lose_answer:{decision.lose}", decision.lose is not None),
                (f"status:{decision.status}", decision.status is not None),
            ):
                if hit:
                    self.injected[name] += 1
            return decision

    def _from_rules(self, method: str, path: str) -> Decision | None:
        for rule in self._rules:
            if not rule.matches(method, path):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            rule.count -= 1
            self._rules[:] = [r for r in self._rules if r.count > 0]
            if rule.kind == "latency":
                return Decision(delay=rule.delay)
            if rule.kind == "reset":
                return Decision(reset=True)
            if rule.kind == "lose_answer":
                return Decision(delay=rule.delay, lose=rule.mode)
            return Decision(status=rule.status, retry_after=rule.retry_after)
        return None

    def _from_random(self, method: str, path: str) -> Decision:
        mix = self._random
        if mix is None or (mix.path is not None and not mix.path.search(path)):
            return Decision()
        low, high = mix.latency
        delay = mix.rng.uniform(low, high) if high > 0 else 0.0
        if mix.methods is not None and method not in mix.methods:
            return Decision(delay=delay)
        if self._burst_left > 0:
            self._burst_left -= 1
            return Decision(delay=delay, status=self._burst_status, retry_after=mix.retry_after)
        roll = mix.rng.random()
        if roll < mix.burst:
            self._burst_status = mix.rng.choice(mix.burst_statuses)
            self._burst_left = max(0, mix.burst_length - 1)
            return Decision(delay=delay, status=self._burst_status, retry_after=mix.retry_after)
        roll -= mix.burst
        if roll < mix.reset:
            return Decision(delay=delay, reset=True)
        roll -= mix.reset
        if roll < mix.lose_answer:
            return Decision(delay=delay, lose=mix.rng.choice(mix.lose_modes))
        return Decision(delay=delay)


def control(faults: NetworkFaults, method: str, body: Any) -> tuple[int, Any]:
    """The ``/_faults`` control route: (status, JSON body)."""
    if method == "GET":
        return 200, faults.stats()
    if method == "DELETE":
        faults.clear()
        return 204, None
    if method != "POST" or not isinstance(body, dict):
        return 400, {"error": {"code": "BadRequest", "message": "POST a fault rule or {'random': {...}}"}}
    try:
        if isinstance(body.get("random"), dict):
            options = {_snake(k): v for k, v in body["random"].items()}
            faults.configure_random(**options)
        else:
            faults.add(
                str(body.get("kind")),
                count=int(body.get("count", 1)),
                method=body.get("method"),
                path=body.get("path"),
                delay=float(body.get("delay", 0.0)),
                mode=str(body.get("mode", "drop")),
                status=int(body.get("status", 503)),
                retry_after=body.get("retryAfter"),
                skip=int(body.get("skip", 0)),
            )
    except (TypeError, ValueError) as exc:
        return 400, {"error": {"code": "BadRequest", "message": str(exc)}}
    return 204, None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()
