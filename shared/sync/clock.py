"""Wall-clock time in UTC (a port so tests and benchmarks can pin it)."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
