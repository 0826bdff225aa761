"""Telemetry: OpenTelemetry spans, custom events and metrics, exported to Application Insights through the
Azure Monitor distro when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set (see :mod:`.setup`).

The names emitted are in :mod:`.names`; the alert rules and the workbook in ``infra/`` query them."""

from .correlation import correlation_headers, current_correlation_id
from .job import current_job, job_span
from .setup import configure_telemetry
from .traced import TracedEngine, TracedFeed, TracedIntake

__all__ = [
    "TracedEngine",
    "TracedFeed",
    "TracedIntake",
    "configure_telemetry",
    "correlation_headers",
    "current_correlation_id",
    "current_job",
    "job_span",
]
