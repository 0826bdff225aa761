"""Echoes: the webhook or poll that our own write causes. A job that names the very version of the record
the pair was last synchronised at has nothing to do, and ends before any API call.

The version comes from where the job came from: the CRM poll gives the row's version (Dataverse etag,
Salesforce ``SystemModstamp``), the reconciliation the referral's eTag, a webhook its
``ResourceChangeUtcDate``, compared with the referral's ``updatedDateTime`` as last written or read. Partner
Center does not document that these two are equal; when they are not, no webhook job is taken for an echo
and the job runs in full, which is always safe.
"""

from __future__ import annotations

import re
from datetime import datetime

from ..ports import KIND_CRM, KIND_CRM_LEAD, LINK_MICROSOFT_COPY, Job, Link


def is_echo(job: Job, link: Link | None) -> bool:
    if not job.version or link is None or link.last_status not in ("ok", LINK_MICROSOFT_COPY):
        return False
    if job.kind in (KIND_CRM, KIND_CRM_LEAD):
        return job.version == link.crm_etag
    return job.version == link.pc_etag or _same_moment(job.version, link.pc_updated_at)


def _same_moment(first: str, second: str | None) -> bool:
    """Two timestamps written differently (seven fractional digits or six, ``Z`` or ``+00:00``) that name the
    same microsecond."""
    moments = [_moment(first), _moment(second)]
    return None not in moments and moments[0] == moments[1]


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    value = text.strip().replace("Z", "+00:00")
    # Python reads at most six fractional digits; Partner Center writes seven.
    value = re.sub(r"\.(\d+)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), value, count=1)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
