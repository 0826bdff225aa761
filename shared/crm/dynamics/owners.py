"""Who owns a row the connector creates in Dataverse (``INBOUND_OWNER``): the ``ownerid`` lookup of opportunities
and leads alike points at a systemuser or a team."""

from __future__ import annotations

import uuid

from ...domain.errors import ValidationFailed
from ...domain.routing import Owner, OwnerKind

OWNER_SETS: dict[OwnerKind, str] = {"user": "systemusers", "team": "teams"}


def owner_bind(owner: Owner) -> str:
    """The ``ownerid@odata.bind`` value naming ``owner``; ValidationFailed before any write for an id that is not a
    Dataverse row id."""
    try:
        owner_id = str(uuid.UUID(owner.id))
    except ValueError:
        raise ValidationFailed([f"'{owner.id}' is not a Dynamics 365 record id"]) from None
    return f"/{OWNER_SETS[owner.kind]}({owner_id})"
