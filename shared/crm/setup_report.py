"""What ``python -m shared setup-crm`` found, did and could not do, for either CRM, and the custom fields it sets up.

The command checks the CRM (or, with ``--apply``, changes it) one item at a time: a custom field, the key on the
referral id, the security role or permission set and its privileges, the assignment to the integration identity,
the form or layout section. Each item ends as one :class:`Step`. A report fails when something required is
missing (check mode) or could not be made (apply mode); ``manual`` steps are what no API call here can do, with
what to do by hand.

:func:`custom_fields` reads the effective field mapping into the fields a CRM has to be given: every mapped column the
CRM does not have by itself (the six Microsoft's Partner Center packages add, and any other custom column the
mapping names) and every ``[[extra]]`` column; :func:`lead_custom_fields` does the same for the ``[lead]`` table, whose
referral-id column (an alternate key / External ID like the opportunity's) every lead create is keyed on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ..domain.errors import SyncError
from .lead_mapping import LeadMapping
from .mapping import CrmMapping

T = TypeVar("T")
Outcome = Literal["exists", "created", "missing", "failed", "manual"]
FAILING: frozenset[str] = frozenset({"missing", "failed"})
MARKS: dict[str, str] = {
    "exists": "ok",
    "created": "created",
    "missing": "MISSING",
    "failed": "FAILED",
    "manual": "manual",
}


@dataclass(frozen=True)
class Step:
    what: str  # e.g. "column new_audit (Audit)"
    outcome: Outcome
    detail: str = ""


@dataclass
class SetupReport:
    crm: str
    applied: bool
    steps: list[Step] = field(default_factory=list)

    def add(self, what: str, outcome: Outcome, detail: str = "") -> None:
        self.steps.append(Step(what, outcome, detail))

    def count(self, outcome: Outcome) -> int:
        return sum(1 for step in self.steps if step.outcome == outcome)

    @property
    def ok(self) -> bool:
        return not any(step.outcome in FAILING for step in self.steps)

    def lines(self) -> Iterator[str]:
        mode = "apply" if self.applied else "check (nothing changed; --apply creates what is missing)"
        yield f"setup-crm for {self.crm}: {mode}"
        width = max((len(MARKS[s.outcome]) for s in self.steps), default=0)
        for step in self.steps:
            yield f"  {MARKS[step.outcome]:<{width}}  {step.what}" + (f": {step.detail}" if step.detail else "")
        counts = ", ".join(f"{self.count(o)} {o}" for o in ("exists", "created", "missing", "failed", "manual"))
        yield f"{counts}"


def guarded(report: SetupReport, what: str, step: Callable[[], T]) -> T | None:
    """Run one step; a refusal from the CRM (a missing privilege, an invalid definition) is reported with its
    reason, and the other steps still run."""
    try:
        return step()
    except (SyncError, LookupError) as exc:
        report.add(what, "failed", str(exc))
        return None


# -- the custom fields a CRM is given -----------------------------------------------------------------------------
Kind = Literal["boolean", "text", "url", "memo", "choice", "money", "date", "lookup"]


@dataclass(frozen=True)
class Shape:
    kind: Kind
    length: int | None = None
    key: bool = False  # the referral id: an alternate key (Dataverse) / an External ID (Salesforce)


# Microsoft's packages add these six opportunity fields; their sizes follow the packages' (Referral Identifier
# Text(100), Referral Link URL(255), Products Text(255), Audit Long Text Area(100000)).
CUSTOM_SHAPES: dict[str, Shape] = {
    "sync_enabled": Shape("boolean"),
    "referral_id": Shape("text", 100, key=True),
    "referral_link": Shape("url", 255),
    "help_code": Shape("choice"),
    "solution_ids": Shape("text", 255),
    "audit": Shape("memo", 100000),
}
# An [[extra]] column's shape, by its mapping type (a list is comma-separated text).
EXTRA_SHAPES: dict[str, Shape] = {
    "text": Shape("text", 255),
    "list": Shape("text", 255),
    "memo": Shape("memo", 100000),
    "money": Shape("money"),
    "date": Shape("date"),
    "boolean": Shape("boolean"),
    "choice": Shape("choice"),
    "lookup": Shape("lookup"),  # a relationship: no setup-crm creates one, the report says so
}


@dataclass(frozen=True)
class CustomField:
    source: str  # the neutral field it holds
    column: str
    label: str
    shape: Shape
    values: dict[str, Any] = field(default_factory=dict)  # choice: neutral code -> the CRM's value

    def option_label(self, code: str) -> str:
        """How users see a choice value: the CRM's value when it is text, else the code in words."""
        value = self.values[code]
        return value if isinstance(value, str) else words(code)


def words(code: str) -> str:
    """``ProofOfConceptOrDemo`` -> ``Proof of concept or demo``."""
    parts = re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", code) or [code]
    text = " ".join(p.lower() for p in parts)
    return text[:1].upper() + text[1:]


def custom_fields(mapping: CrmMapping, is_custom: Callable[[str], bool]) -> list[CustomField]:
    """The custom fields the mapping needs the CRM to have, in declaration order: every mapped column
    ``is_custom`` says the CRM does not have by itself (a standard column is the CRM's own and never created),
    then every ``[[extra]]`` column. A field mapped to no column is left out."""
    found: list[CustomField] = []
    for name, entry in mapping.mapped():
        if not is_custom(entry.column):
            continue
        shape = CUSTOM_SHAPES.get(name) or EXTRA_SHAPES[entry.type]
        length = min(entry.max_length, shape.length) if entry.max_length and shape.length else shape.length
        label = entry.label or words(name)
        found.append(CustomField(name, entry.column, label, Shape(shape.kind, length, shape.key), entry.values))
    for extra in mapping.extra:
        shape = EXTRA_SHAPES[extra.type]
        length = extra.max_length or shape.length
        source = mapping.fields[extra.source]
        label = f"{source.label or words(extra.source)} (copy)"
        found.append(CustomField(extra.source, extra.column, label, Shape(shape.kind, length), source.values))
    return found


# The ``[lead]`` columns a CRM may have to be given, with how users see them.
LEAD_SHAPES: dict[str, tuple[str, Shape]] = {
    "referral_id": ("Referral Identifier", CUSTOM_SHAPES["referral_id"]),
    "deal_value": ("Deal value", Shape("money")),
}


def lead_custom_fields(lead: LeadMapping, is_custom: Callable[[str], bool]) -> list[CustomField]:
    """The custom lead fields the ``[lead]`` table names: its referral-id column and its deal-value column, each
    only when it is named and ``is_custom`` says the CRM does not have it by itself (Dynamics' ``estimatedamount`` is
    the lead's own). A mapping that names no referral-id column opts out of leads, and gets none."""
    if not lead.referral_id:
        return []
    found: list[CustomField] = []
    for name, (label, shape) in LEAD_SHAPES.items():
        column = getattr(lead, name)
        if column and is_custom(column):
            found.append(CustomField(f"lead.{name}", column, label, shape))
    return found
