"""host.json as the runner needs it: queue semantics, HTTP route prefix, function timeout.

App settings named ``AzureFunctionsJobHost__<path>`` override host.json values, the same mechanism
the Functions host offers (e.g. ``AzureFunctionsJobHost__extensions__queues__visibilityTimeout``),
so tests can shorten the retry delay without a runner-only knob.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERRIDE_PREFIX = "AzureFunctionsJobHost__"
_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


class HostConfigError(ValueError):
    """host.json (or an override) holds a value the runner cannot use."""


def parse_timespan(text: str, name: str) -> float:
    """A .NET TimeSpan string (``[d.]hh:mm:ss[.fff]``) in seconds."""
    match = _TIMESPAN.match(str(text).strip())
    if not match:
        raise HostConfigError(f"{name}: '{text}' is not a TimeSpan like 00:00:30")
    days = int(match.group("days") or 0)
    return days * 86400 + int(match.group("h")) * 3600 + int(match.group("m")) * 60 + float(match.group("s"))


@dataclass(frozen=True)
class QueueOptions:
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 2.0  # the host's default when running locally
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str
    queues: QueueOptions
    function_timeout: float | None


def _get(section: Mapping[str, Any], key: str) -> Any:
    # host.json keys are case-insensitive for the host; accept any casing here too.
    for name, value in section.items():
        if name.lower() == key.lower():
            return value
    return None


def _apply_override(data: dict[str, Any], path: list[str], value: str) -> None:
    node = data
    for key in path[:-1]:
        existing = next((k for k in node if k.lower() == key.lower()), None)
        if existing is None or not isinstance(node[existing], dict):
            existing = existing or key
            node[existing] = {}
        node = node[existing]
    leaf = next((k for k in node if k.lower() == path[-1].lower()), path[-1])
    node[leaf] = value


def load_host_config(app_dir: Path, settings: Mapping[str, str]) -> HostConfig:
    path = app_dir / "host.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except json.JSONDecodeError as exc:
        raise HostConfigError(f"{path} is not valid JSON: {exc}") from None
    for name, value in settings.items():
        if name.startswith(OVERRIDE_PREFIX):
            _apply_override(data, name[len(OVERRIDE_PREFIX) :].split("__"), value)

    extensions = _get(data, "extensions") or {}
    http = _get(extensions, "http") or {}
    prefix = _get(http, "routePrefix")
    queues = _get(extensions, "queues") or {}
    defaults = QueueOptions()
    batch_size = int(_get(queues, "batchSize") or defaults.batch_size)
    threshold = _get(queues, "newBatchThreshold")
    options = QueueOptions(
        max_dequeue_count=int(_get(queues, "maxDequeueCount") or defaults.max_dequeue_count),
        visibility_timeout=_timespan_or(queues, "visibilityTimeout", defaults.visibility_timeout),
        batch_size=min(batch_size, 32),  # Storage returns at most 32 messages per request
        new_batch_threshold=int(threshold) if threshold is not None else batch_size // 2,
        max_polling_interval=max(_timespan_or(queues, "maxPollingInterval", defaults.max_polling_interval), 0.1),
        message_encoding=str(_get(queues, "messageEncoding") or defaults.message_encoding).lower(),
    )
    if options.message_encoding not in ("base64", "none"):
        raise HostConfigError(f"extensions.queues.messageEncoding: '{options.message_encoding}' is not base64 or none")
    timeout = _get(data, "functionTimeout")
    return HostConfig(
        route_prefix="api" if prefix is None else str(prefix).strip("/"),
        queues=options,
        function_timeout=parse_timespan(timeout, "functionTimeout") if timeout else None,
    )


def _timespan_or(section: Mapping[str, Any], key: str, default: float) -> float:
    value = _get(section, key)
    return default if value is None else parse_timespan(value, f"extensions.queues.{key}")
