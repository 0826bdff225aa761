"""The human-readable Audit column on the CRM opportunity: one line per sync, newest first, bounded."""

from __future__ import annotations

from datetime import datetime

from .checkmark import CHECK, CROSS


def audit_line(at: datetime, success: bool, message: str) -> str:
    stamp = at.strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} {CHECK if success else CROSS} {' '.join(message.split())}"


def newest_failed(audit: str | None) -> bool:
    """Whether the newest line of an Audit column reports a failure (the record still shows it)."""
    newest = (audit or "").split("\n", 1)[0]
    return f" {CROSS} " in newest


def prepend(existing: str | None, line: str, max_chars: int) -> str:
    """New line on top; whole old lines dropped from the bottom to stay within ``max_chars``."""
    lines = [line, *(existing or "").splitlines()]
    kept: list[str] = []
    size = 0
    for text in lines:
        cost = len(text) + (1 if kept else 0)
        if size + cost > max_chars:
            break
        kept.append(text)
        size += cost
    if not kept:  # a single line longer than the limit is cut rather than lost
        return line[:max_chars]
    return "\n".join(kept)
