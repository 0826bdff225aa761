"""Dataverse emulator: what a write may do to a lead's state (the ``QualifyLead`` action is in :mod:`.leads`)."""

from __future__ import annotations

from typing import Any

from .schema import LEAD_STATE_NAMES, LEAD_STATUSES, bad_request

CODE_LEAD_NOT_OPEN = "0x8004d31b"  # the lead is already closed (qualified or disqualified)


def check_lead_state(before: dict[str, Any] | None, changes: dict[str, Any]) -> None:
    """Open leads take a disqualification (statecode 2 with a Disqualified status) or a new open status; a lead
    that is not open takes only a reactivation (statecode 0). Qualified comes from QualifyLead only."""
    current = before["statecode"] if before else 0
    if current != 0 and not (changes.get("statecode") == 0 and set(changes) <= {"statecode", "statuscode"}):
        raise bad_request(
            f"The lead is {LEAD_STATE_NAMES.get(current)} and cannot be edited. Reactivate it first with a PATCH "
            "of statecode 0 and statuscode 1.",
            CODE_LEAD_NOT_OPEN,
        )
    state = changes.get("statecode", current)
    if state not in LEAD_STATUSES:
        raise bad_request(f"{state} is not a valid state code for lead.")
    if state == 1 and current != 1:
        raise bad_request("A lead is qualified with the QualifyLead action, not by setting statecode.")
    if "statecode" in changes and "statuscode" not in changes:
        changes["statuscode"] = LEAD_STATUSES[state][0]
    status = changes.get("statuscode", before["statuscode"] if before else 1)
    if status not in LEAD_STATUSES[state]:
        raise bad_request(
            f"{status} is not a valid status code for state code LeadState.{LEAD_STATE_NAMES[state]} on lead."
        )
