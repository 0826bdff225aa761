"""What a seller's close of a deal in the CRM needs before it can go to Partner Center.

A decline or loss carries its reason (Partner Center's ``statusReason``) from the CRM's reason column through the
mapping's value table. A value the seller picked that the table does not know is not sent as something else, and
not dropped silently: the close waits, and the seller and the admin are told what to add.
"""

from __future__ import annotations

from collections.abc import Iterable

from .merge import REASON_FIELD, STATUS_FIELDS
from .opportunity import Opportunity


def unmapped_reason_problems(record: Opportunity, to_pc: Iterable[str]) -> list[str]:
    """Why the close in ``record`` cannot go to Partner Center yet: its reason has no Partner Center value."""
    sending = set(to_pc)
    if record.status != "Closed" or not sending & {*STATUS_FIELDS, REASON_FIELD}:
        return []
    return [
        f"{what} has no Partner Center reason: add it to fields.{REASON_FIELD}.values in the CRM mapping file "
        "(CRM_MAPPING_FILE), or pick a listed reason; the close was not sent"
        for field, what in record.unmapped
        if field == REASON_FIELD
    ]


def reason_left_out(mapped: Opportunity, stored: Opportunity, to_crm: Iterable[str]) -> list[str]:
    """A note when Partner Center's reason for the close it sends has no value in the CRM's reason list: the
    close is written, the reason column stays empty, and the Audit column keeps the text."""
    reason = mapped.status_reason
    if reason is None or stored.status_reason is not None or not set(to_crm) & set(STATUS_FIELDS):
        return []
    return [f"Partner Center's reason '{reason}' is not in fields.{REASON_FIELD}.values; the reason is left empty"]
