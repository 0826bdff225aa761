"""The opportunity's mapped columns as this organisation has them, learned once per adapter (so once per process).

One metadata request (``EntityDefinitions(LogicalName='opportunity')/Attributes?$select=LogicalName``) lists the
table's columns; optional fields whose column is missing are left out of every read and write
(:mod:`shared.crm.org_columns`). A required column that is missing raises before any read, and is not cached: the
next job checks again, so the org heals as soon as ``setup-crm --apply`` has added the column.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..learned_once import LearnedOnce
from ..mapping import Converters, Lookups
from ..org_columns import OrgColumns, checked, org_columns, without_missing
from .auth import SERVICE
from .mapping import OPPORTUNITY_COLUMNS, DataverseMapping
from .webapi import DataverseRows

ATTRIBUTES_PATH = "EntityDefinitions(LogicalName='opportunity')/Attributes"


@dataclass(frozen=True)
class Layout:
    """What the organisation's columns make of the mapping: the mapping in use, its converters, and the columns
    and expansions one opportunity read asks for."""

    mapping: DataverseMapping
    columns: OrgColumns
    converters: Converters
    select: str
    read_params: dict[str, str]


class OrgLayout:
    def __init__(
        self, web: DataverseRows, mapping: DataverseMapping, lookups: Lookups, account_select: str, contact_select: str
    ) -> None:
        self._web = web
        self._mapping = mapping
        self._lookups = lookups
        # One request reads the opportunity with its account and primary contact.
        self._expand = f"customerid_account($select={account_select}),parentcontactid($select={contact_select})"
        # Workers share the adapter: the table is described once, not per thread.
        self._layout = LearnedOnce(self._learn)

    def known(self) -> OrgColumns | None:
        """The columns learned so far, without asking the organisation."""
        layout = self._layout.known()
        return layout.columns if layout is not None else None

    def get(self) -> Layout:
        return self._layout.get()

    def _learn(self) -> Layout:
        answer = self._web.get(ATTRIBUTES_PATH, {"$select": "LogicalName"}) or {}
        present = [str(a.get("LogicalName") or "") for a in answer.get("value") or []]
        columns = checked(org_columns(self._mapping, present, SERVICE, "opportunity"))
        mapping = without_missing(self._mapping, columns)
        converters = Converters(mapping, self._lookups)
        select = ",".join(dict.fromkeys([*OPPORTUNITY_COLUMNS, *converters.select()]))
        return Layout(mapping, columns, converters, select, {"$select": select, "$expand": self._expand})
