"""GET /api/status and ``python -m shared status``: one report, built from the container's parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..sync.job_runner import health_status
from ..sync.status import build_status
from ..version import APP_VERSION
from .crm_columns import crm_columns

if TYPE_CHECKING:
    from ..wiring import Container


def current_status(c: Container) -> dict[str, Any]:
    report = build_status(
        c.tally.totals(), c.store, c.queue, c.settings.credential_modes(), health_status(c.jobs), APP_VERSION
    )
    return {**report, "crm": crm_columns(c)}  # mapped columns the org lacks (setup-crm --apply adds them)
