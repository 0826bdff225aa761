"""The operator page: what it shows, gathered from the status report, the stores and the poison queue, and
rendered on the server (Jinja2 with autoescaping: every value from a record, a queue or the URL is escaped)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from jinja2 import Environment, select_autoescape

from .links import RecordLinks
from .template import CONSOLE_TEMPLATE

HISTORY_LIMIT = 50
POISON_SHOWN = 32


class AuditRows(Protocol):
    def audit_trail(self, record_key: str, limit: int = 50) -> list[Any]: ...

    def get_link(self, referral_id: str) -> Any: ...

    def find_link_by_crm_id(self, crm_id: str) -> Any: ...


@dataclass
class Page:
    status: dict[str, Any]
    registration: Any  # the stored webhook registration, or None
    links: RecordLinks
    poison: list[Any]  # PoisonedJob, oldest first
    token: str
    key: str | None  # the function key the page was opened with, kept on its own links and form
    query: str = ""
    history: list[Any] = field(default_factory=list)
    history_keys: tuple[str, ...] = ()
    notice: str = ""
    notice_error: bool = False
    now: datetime | None = None


def record_history(store: AuditRows, query: str) -> tuple[tuple[str, ...], list[Any]]:
    """One record's audit trail, by CRM id or referral id: the entries under both ids of its pair, newest first."""
    query = query.strip()
    if not query:
        return (), []
    keys = [query]
    link = store.get_link(query) or store.find_link_by_crm_id(query)
    if link is not None:
        keys += [k for k in (link.referral_id, link.crm_id) if k and k not in keys]
    entries = [entry for key in keys for entry in store.audit_trail(key, limit=HISTORY_LIMIT)]
    entries.sort(key=lambda e: e.at or datetime.min, reverse=True)
    return tuple(keys), entries[:HISTORY_LIMIT]


def _when(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            return value
    return "never"


def _plain(value: object) -> str:
    """A status value as words: a mapping as its set entries ("lastUsedAt: 2026-..."), nothing set as "-"."""
    if isinstance(value, dict):
        shown = [f"{k}: {_when(v) if 'At' in str(k) else v}" for k, v in value.items() if v not in (None, "")]
        return "; ".join(shown) or "-"
    return "-" if value in (None, "") else str(value)


_environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_environment.filters["when"] = _when
_environment.filters["plain"] = _plain
_template = _environment.from_string(CONSOLE_TEMPLATE)


def render(page: Page, url_for: Callable[[str], str]) -> str:
    return _template.render(page=page, s=page.status, url_for=url_for)
