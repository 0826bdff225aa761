"""A record gone from one side of a pair: the link states that report it, and how the referral is closed.

Partner Center has no delete, so a referral that stops answering is reported and nothing is done to its
opportunity. An opportunity a seller deleted is never created again: the pair is detached for good, and the
referral is closed only when the operator asks for it (``CLOSE_REFERRAL_ON_CRM_DELETE``).
"""

from __future__ import annotations

from .policies import is_closed, transition_allowed

LINK_DETACHED = "detached"  # the CRM record was deleted; terminal
LINK_REFERRAL_MISSING = "referral-missing"  # the referral answers 404; cleared by the next sync that reads it

# Link states whose CRM id names an opportunity that was synchronised, so that not finding it means a seller
# deleted it. A "pending" row may be ahead of a create that never reached the CRM: not finding its record
# means "create it", as crash recovery expects.
SYNCHRONISED_STATES = frozenset({"ok", "failed", LINK_REFERRAL_MISSING})


def names_synchronised_record(crm_id: str | None, last_status: str | None) -> bool:
    return bool(crm_id) and last_status in SYNCHRONISED_STATES


def closing_move(status: str | None, direction: str | None) -> tuple[str, str] | None:
    """How a referral whose opportunity was deleted is closed: declined when Microsoft sent it and it was never
    taken up (New, incoming), lost otherwise; None when it is closed already or Partner Center allows no close
    from its status."""
    if is_closed(status):
        return None
    substatus = "Declined" if status == "New" and direction == "Incoming" else "Lost"
    return ("Closed", substatus) if transition_allowed(status, "Closed", substatus) else None
