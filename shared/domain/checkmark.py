"""The check mark / cross appended to a CRM opportunity name to show the last sync outcome."""

from __future__ import annotations

CHECK = "\u2714"  # heavy check mark
CROSS = "\u2716"  # heavy multiplication x
_MARKS = (CHECK, CROSS, "\u2705", "\u274c", "\u2713", "\u2717")


def strip_marks(name: str) -> str:
    """Remove every trailing sync mark (and the spaces around them), however many were stacked."""
    text = name.rstrip()
    while text and text[-1] in _MARKS:
        text = text[:-1].rstrip()
    return text


def mark(name: str, success: bool) -> str:
    """The name with exactly one mark: a check mark on success, a cross on failure."""
    base = strip_marks(name)
    return f"{base} {CHECK if success else CROSS}" if base else (CHECK if success else CROSS)
