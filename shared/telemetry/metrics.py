"""The queue depth gauge: ``cosell.queue.depth`` per queue (``sync-jobs``, ``sync-jobs-poison``).

Observed only when a metric reader collects (once a minute with Azure Monitor), so it costs two queue
reads a minute while telemetry is on and nothing otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .names import DIM_QUEUE, METRIC_QUEUE_DEPTH
from .redact import redact

log = logging.getLogger(__name__)
QueueDepths = Callable[[], Mapping[str, int]]


def register_queue_depth_gauge(depths: QueueDepths, meter_provider: MeterProvider | None = None) -> None:
    meter = (meter_provider or metrics.get_meter_provider()).get_meter("shared.telemetry")

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            current = depths()
        except Exception as exc:  # an unreachable queue must not break the metric export of everything else
            log.warning("queue depth not measured: %s: %s", type(exc).__name__, redact(str(exc))[:300])
            return []
        return [Observation(depth, {DIM_QUEUE: queue}) for queue, depth in current.items()]

    meter.create_observable_gauge(METRIC_QUEUE_DEPTH, callbacks=[observe], unit="{message}")
