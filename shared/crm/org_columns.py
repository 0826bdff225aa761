"""Which mapped columns the CRM org actually has, and the mapping an org without some of them can still use.

A version that maps new columns (Microsoft's side, Partner Center's current fields, the decline reason) meets
orgs that ``python -m shared setup-crm --apply`` has not upgraded yet. Dataverse refuses a ``$select`` naming a
column the table lacks and Salesforce a SOQL field the object lacks, so without this every read would fail and
every job retry into the poison queue. Instead each adapter learns the org's columns once (one metadata request,
cached for the process), leaves out the ``optional`` fields whose column is missing, and reports them; a missing
column the connector cannot work without is an error naming the column and the command that adds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..domain.errors import SetupIncomplete
from .mapping import CrmMapping

log = logging.getLogger(__name__)

SETUP_COMMAND = "python -m shared setup-crm --apply"
M = TypeVar("M", bound=CrmMapping)


@dataclass(frozen=True)
class MissingColumn:
    field: str  # the neutral field
    column: str  # the column (Dataverse) or field (Salesforce) the mapping names for it

    def __str__(self) -> str:
        return f"{self.column} ({self.field})"


@dataclass(frozen=True)
class OrgColumns:
    """The mapped columns the org's table (``table``) lacks: ``optional`` ones are left out of the sync,
    ``required`` ones stop it."""

    service: str
    table: str
    optional: tuple[MissingColumn, ...] = ()
    required: tuple[MissingColumn, ...] = ()

    def warning(self) -> str:
        names = ", ".join(str(m) for m in self.optional)
        return (
            f"{self.service}: the {self.table} table has no column for {names}; these fields are left out of the "
            f"sync until `{SETUP_COMMAND}` adds them (then restart the app)"
        )

    def error(self) -> str:
        names = ", ".join(str(m) for m in self.required)
        return (
            f"{self.service}: the {self.table} table has no column for {names}, which the mapping does not mark "
            f"optional, so nothing is synchronised; run `{SETUP_COMMAND}`, or name the org's own column in "
            "CRM_MAPPING_FILE"
        )

    def status(self) -> dict[str, Any]:
        """The ``crm`` part of /api/status."""
        return {
            "columnsNotInOrg": [m.column for m in self.optional],
            "requiredColumnsNotInOrg": [m.column for m in self.required],
            "problem": self.error() if self.required else (self.warning() if self.optional else None),
        }


class RequiredColumnsMissing(SetupIncomplete):
    """The org lacks a column the connector cannot work without: no read or write is attempted, and jobs wait."""

    def __init__(self, columns: OrgColumns) -> None:
        super().__init__(columns.service, columns.error())
        self.columns = columns


def left_out(optional: bool) -> str:
    """What ``python -m shared mapping check`` adds to a missing column: whether the sync goes on without it."""
    if not optional:
        return ""
    return f"; the field is optional, so it is left out of the sync until `{SETUP_COMMAND}` adds the column"


def org_columns(
    mapping: CrmMapping, present: Iterable[str], service: str, table: str, *, case_sensitive: bool = True
) -> OrgColumns:
    """The mapped columns (one per field, as :meth:`CrmMapping.mapped` yields them) that are not in ``present``.
    Salesforce field names are case-insensitive (``case_sensitive=False``); Dataverse logical names are not."""

    def key(name: str) -> str:
        return name if case_sensitive else name.casefold()

    have = {key(name) for name in present}
    missing = [(name, entry) for name, entry in mapping.mapped() if key(entry.column) not in have]
    return OrgColumns(
        service,
        table,
        optional=tuple(MissingColumn(name, entry.column) for name, entry in missing if entry.optional),
        required=tuple(MissingColumn(name, entry.column) for name, entry in missing if not entry.optional),
    )


def without_missing(mapping: M, columns: OrgColumns) -> M:
    """The mapping with the missing optional fields unsynchronised (no column): reads do not select them, writes
    do not send them, and the stored form predicts them empty, so they never look changed."""
    if not columns.optional:
        return mapping
    fields = dict(mapping.fields)
    for missing in columns.optional:
        fields[missing.field] = fields[missing.field].model_copy(update={"column": ""})
    return mapping.model_copy(update={"fields": fields})


def checked(columns: OrgColumns) -> OrgColumns:
    """``columns`` once logged; raises :class:`RequiredColumnsMissing` when a required column is missing."""
    if columns.required:
        log.error("%s", columns.error())
        raise RequiredColumnsMissing(columns)
    if columns.optional:
        log.warning("%s", columns.warning())
    return columns
