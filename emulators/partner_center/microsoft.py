"""Microsoft's seller working a co-sell engagement in the emulated Partner Center.

Microsoft's referral in an engagement is the one addressed to Microsoft (target ``BusinessProfileLocation``
``msft``) or owned by Microsoft's organisation. When Microsoft acts on it (accepts, assigns a seller, records its
CRM id, writes notes) it is Microsoft's: its owner becomes Microsoft's organisation, so the partner's referrals in
the engagement hear of it as ``related-referral-created`` / ``related-referral-updated``, as the real service
raises them. An engagement shared by Microsoft (an incoming referral) gets Microsoft's referral the first time
Microsoft acts on it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from .rules import READ_ONLY_FIELDS, SUBSTATUSES, RuleViolation
from .samples import MICROSOFT_ORG_ID

MICROSOFT_TARGET = {"type": "BusinessProfileLocation", "id": MICROSOFT_ORG_ID}
# What Microsoft's seller changes on its referral.
MICROSOFT_FIELDS = frozenset({"status", "substatus", "statusReason", "team", "trackingInfo", "inviteContext"})


def is_microsoft_referral(referral: Mapping[str, Any]) -> bool:
    targets = referral.get("target") or []
    return referral.get("organizationId") == MICROSOFT_ORG_ID or any(
        isinstance(t, Mapping) and t.get("type") == MICROSOFT_TARGET["type"] and t.get("id") == MICROSOFT_ORG_ID
        for t in targets
    )


def find_microsoft_referral(referrals: Iterable[dict[str, Any]], engagement_id: str) -> dict[str, Any] | None:
    found = [r for r in referrals if r.get("engagementId") == engagement_id and is_microsoft_referral(r)]
    owned = [r for r in found if r.get("organizationId") == MICROSOFT_ORG_ID]
    return (owned or found or [None])[0]


def checked_changes(changes: Any) -> dict[str, Any]:
    """The changes Microsoft's seller may make; RuleViolation (400) for anything else."""
    if not isinstance(changes, Mapping) or not changes:
        raise RuleViolation("the body must be an object of changes to Microsoft's referral")
    unknown = sorted(set(changes) - MICROSOFT_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(MICROSOFT_FIELDS))
        raise RuleViolation(f"Microsoft's seller cannot change {', '.join(unknown)} (only {allowed})")
    return dict(changes)


def new_microsoft_referral(partner: Mapping[str, Any]) -> dict[str, Any]:
    """Microsoft's referral on the engagement of ``partner``'s, before Microsoft's changes: the deal as shared."""
    body = {k: copy.deepcopy(v) for k, v in partner.items() if k not in READ_ONLY_FIELDS | {"externalReferenceId"}}
    body.update(
        engagementId=partner["engagementId"],
        organizationId=MICROSOFT_ORG_ID,
        organizationName="Microsoft",
        target=[dict(MICROSOFT_TARGET)],
        team=[],
        status="New",
        substatus="Pending",
    )
    body.pop("inviteContext", None)
    return body


def check_new_status(referral: Mapping[str, Any]) -> None:
    status, substatus = referral.get("status"), referral.get("substatus")
    if status not in SUBSTATUSES or substatus not in SUBSTATUSES[str(status)]:
        raise RuleViolation(f"'{status}/{substatus}' is not a valid status and substatus")
