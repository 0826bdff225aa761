"""Switches telemetry on at start-up, only when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set.

The Azure Monitor OpenTelemetry distro then exports spans (requests -> App Insights requests and
dependencies), logs of the app's ``shared`` loggers (traces; the events of :mod:`.events` as
customEvents) and metrics (customMetrics), and instruments ``requests`` (Partner Center and CRM calls)
and the Azure SDK (Table and queue calls) so their spans nest under the job's. With the app setting
``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` (``Authorization=AAD``) the exporter signs in with the
managed identity.

Telemetry never stops the app: any problem setting it up is logged and the app runs without it. Without
the setting the OpenTelemetry API stays a no-op and the spans and events in the code cost next to nothing.
"""

from __future__ import annotations

import logging
import threading

from .correlation import install_log_correlation
from .metrics import QueueDepths, register_queue_depth_gauge
from .redact import redact

log = logging.getLogger(__name__)
APP_LOGGER = "shared"  # only the app's own loggers are exported (not every SDK's)
SERVICE_NAME = "cosell-connector"
# The distro's instrumentations for frameworks this app does not use stay off.
_UNUSED_INSTRUMENTATIONS = ("django", "fastapi", "flask", "psycopg2")

_lock = threading.Lock()
_configured = False


def configure_telemetry(connection_string: str | None, queue_depths: QueueDepths | None = None) -> bool:
    """True when telemetry is on (now or from an earlier call); False when it is off."""
    global _configured
    if not connection_string:
        return False
    with _lock:
        if _configured:
            return True
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor
            from opentelemetry.sdk.resources import Resource

            configure_azure_monitor(
                connection_string=connection_string,
                logger_name=APP_LOGGER,
                resource=Resource.create({"service.name": SERVICE_NAME}),
                instrumentation_options={name: {"enabled": False} for name in _UNUSED_INSTRUMENTATIONS},
                enable_live_metrics=False,
            )
            if queue_depths is not None:
                register_queue_depth_gauge(queue_depths)
        except Exception as exc:  # telemetry is an aid: without it the app must still start
            # The message may quote the connection string it could not parse.
            log.warning("telemetry is off: %s: %s", type(exc).__name__, redact(str(exc))[:300])
            return False
        install_log_correlation()
        # The structured job records are INFO; the app's loggers must pass them to the exporter.
        logging.getLogger(APP_LOGGER).setLevel(logging.INFO)
        _configured = True
        log.info("telemetry on: exporting to Application Insights")
        return True
