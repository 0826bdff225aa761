"""Custom events: one log record each (App Insights files it under customEvents by the
``microsoft.custom_event.name`` attribute) and the same event on the current span.

The log line reads well without App Insights too: ``SyncJobCompleted action=created referralId=...``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry import trace

# The attribute the Azure Monitor exporter turns into a customEvents row named by its value.
CUSTOM_EVENT_ATTRIBUTE = "microsoft.custom_event.name"
Dimension = str | int | float | bool

log = logging.getLogger("shared.telemetry.events")
# Events are the structured record of what happened: they must not depend on the root logger's level.
log.setLevel(logging.INFO)


def emit(name: str, dimensions: Mapping[str, Dimension | None], level: int = logging.INFO) -> dict[str, Dimension]:
    """Emit one event with its dimensions (``None`` and empty values are left out); returns what was sent."""
    sent = {key: value for key, value in dimensions.items() if value is not None and value != ""}
    trace.get_current_span().add_event(name, sent)
    text = " ".join(f"{key}={value}" for key, value in sent.items())
    log.log(level, "%s %s", name, text, extra={CUSTOM_EVENT_ATTRIBUTE: name, **sent})
    return sent
