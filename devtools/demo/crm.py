"""The CRM side of ``make demo``, behind one small interface so the scenario reads the same for every CRM.

A :class:`CrmSide` is one CRM's emulator as the demo sees it: its opportunities as neutral
:class:`CrmRecord` rows, its write log, how a record is shown in the report, and a :class:`CrmSeller`
who acts in that CRM through its own public API, as a user of its UI would. The implementations are
:mod:`devtools.demo.dataverse` (Dynamics 365) and :mod:`devtools.demo.salesforce`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypedDict

import requests

TIMEOUT = 10
# Microsoft's side of the engagement as the CRM holds it (the mapping's field names), with the labels a viewer reads.
MICROSOFT_FIELDS = {
    "microsoft_status": "Microsoft status",
    "microsoft_seller_name": "Microsoft seller",
    "microsoft_seller_email": "seller e-mail",
    "microsoft_crm_id": "MSX id",
    "microsoft_notes": "Microsoft notes",
}


class StepFailed(Exception):
    """A step's expected outcome was not observed in time."""


class CrmRecord(TypedDict):
    """An opportunity in CRM-neutral terms; ``raw`` is the record as the CRM's emulator holds it."""

    id: str
    name: str
    deal_value: float | None
    sync: bool
    referral_id: str | None
    referral_link: str | None
    audit: str
    state: str  # the deal's state as the seller sees it, e.g. "Open / On Hold" or "Stage Prospecting"
    microsoft: dict[str, str]  # Microsoft's side (MICROSOFT_FIELDS) as far as the CRM shows it
    raw: dict[str, Any]


def latest_audit(record: CrmRecord) -> str:
    """The newest line of the record's Audit field (the app puts the newest entry first)."""
    lines = record["audit"].splitlines()
    return lines[0] if lines else ""


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def short(text: str, width: int = 96) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def audit_summary(record: CrmRecord) -> str:
    """The latest audit line, shortened, and how many older ones there are."""
    lines = record["audit"].splitlines()
    return short(lines[0]) + (f" (+{len(lines) - 1} older)" if lines[1:] else "")


def microsoft_side(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, str]:
    """The Microsoft columns (``columns``: field -> the CRM's column) that hold a value, by field name."""
    return {field: str(row[column]) for field, column in columns.items() if row.get(column)}


def microsoft_summary(record: CrmRecord) -> str:
    """Microsoft's side as one line, in MICROSOFT_FIELDS order."""
    shown = record["microsoft"]
    return "; ".join(
        f"{label} {short(shown[field], 60)}" for field, label in MICROSOFT_FIELDS.items() if field in shown
    )


def setting(settings: Mapping[str, str], name: str, field: str) -> str:
    """The configured value, else the app's own default (no second copy of the defaults here)."""
    from shared.settings import Settings

    return settings.get(name) or str(Settings.model_fields[field].default)


def crm_mapping(settings: Mapping[str, str]) -> Any:
    """The app's effective field mapping for these app settings: the CRM's columns, choice values and stages
    (the shipped mapping, CRM_MAPPING_FILE and the field-name settings), as the app itself builds it."""
    from shared.settings import load_settings
    from shared.wiring import load_crm_mapping

    values = {name: value for name, value in settings.items() if value}
    return load_crm_mapping(load_settings(crm_only=True, **values)).mapping


def control_json(response: requests.Response) -> Any:
    """The body of an emulator control API answer; an error answer is raised."""
    response.raise_for_status()
    return response.json()


class CrmSeller(Protocol):
    """A seller working in the CRM: what they enter goes through the CRM's API, never the connector."""

    writes: int  # the CRM's write log does not say who wrote: counting the seller's tells the app's apart

    def create_opportunity(
        self,
        *,
        name: str,
        customer: str,
        country: str,
        deal_value: float,
        products: str | None,
        help_needed: str | None,
        contact: tuple[str, str, str],
        currency: str = "USD",
    ) -> str:
        """An account, its contact (first name, last name, e-mail) and an opportunity flagged "Sync with
        Partner Center", asking for Microsoft's help with ``help_needed`` (an ``assistanceRequestCode``);
        the opportunity's id."""
        ...

    def set_deal_value(self, crm_id: str, value: float) -> None: ...

    def accept(self, crm_id: str) -> str:
        """Accept the referral behind the opportunity as the README's seller's guide says; what the seller set."""
        ...

    def win(self, crm_id: str) -> str:
        """Close the opportunity as won as the seller's guide says; what the seller did."""
        ...


class CrmSide(Protocol):
    provider: str  # CRM_PROVIDER
    product: str  # "Dynamics 365", "Salesforce"
    store: str  # where the opportunities live, as step titles say it: "Dataverse", "Salesforce"
    seller_api: str  # the API the seller's UI uses
    sign_in: str  # how the app authenticates to the emulated CRM
    deal_value_label: str  # what a seller sees the deal value called

    def opportunities(self) -> list[CrmRecord]: ...

    def opportunity(self, crm_id: str) -> CrmRecord | None: ...

    def writes(self) -> list[dict[str, Any]]:
        """Successful writes to the CRM in order, by anyone (the seller and the app)."""
        ...

    def write_kind(self, write: dict[str, Any]) -> str:
        """A write as the report groups it, e.g. ``create accounts``."""
        ...

    def shows(self, status: str, substatus: str | None) -> str:
        """How the CRM shows a deal the mapping writes for this Partner Center status (as ``CrmRecord.state``)."""
        ...

    def render(self, record: CrmRecord) -> list[str]:
        """The record's lines in the report, with the CRM's own field names."""
        ...

    def report_notes(self) -> list[str]:
        """Further lines about the CRM for the report."""
        ...

    def seller(self) -> CrmSeller: ...
