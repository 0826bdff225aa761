"""How the engine behaves, from settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..domain.leads import LeadRules
from ..domain.mapping import DEFAULT_REFERRAL_LINK_TEMPLATE
from ..domain.policies import Direction, Side
from ..domain.routing import Routing


@dataclass(frozen=True)
class EngineOptions:
    checkmark_enabled: bool = True
    sync_cosell_only: bool = True
    referral_link_template: str = DEFAULT_REFERRAL_LINK_TEMPLATE
    audit_max_chars: int = 20000
    # CRM_AUDIT_LINE: "changes" writes the CRM record's Audit line only when the record itself changes (values from
    # Partner Center, a note, its mark, or the first success after a failure); "every-sync" on every sync as well.
    audit_every_sync: bool = False
    # Close the referral in Partner Center when its opportunity was deleted in the CRM (CLOSE_REFERRAL_ON_CRM_DELETE).
    close_referral_on_crm_delete: bool = False
    lease_seconds: int = 120
    # A job starting while the CRM holds this process back longer than this (MAX_INLINE_RETRY_AFTER_SECONDS) is
    # deferred before it reads anything: its first CRM request would be, after a Partner Center read spent for nothing.
    max_inline_wait_seconds: float = 20.0
    # A job that has had an answer from either side waits inline up to this (MAX_STARTED_JOB_WAIT_SECONDS) before it
    # is deferred: deferred, it would ask for those answers again.
    started_job_wait_seconds: float = 120.0
    # Writes stop this long before the lease row expires: one HTTP timeout plus allowed clock skew between
    # workers (shared.sync.lease explains why; settings derive it from HTTP_TIMEOUT_SECONDS).
    lease_margin_seconds: float = 35.0
    # From the CRM's field mapping (CONFLICT_RULES over it): who wins a field both sides changed (Partner Center
    # when unnamed), and the fields that travel one way only (the rest travel both ways).
    field_owners: Mapping[str, Side] = field(default_factory=dict)
    field_directions: Mapping[str, Direction] = field(default_factory=dict)
    # Who owns an opportunity made from a referral (INBOUND_OWNER); no rules: the CRM's default, the integration user.
    inbound_routing: Routing = field(default_factory=Routing)
    # How the CRM's lead states read (the mapping's [lead] table), for Partner Center leads (sync_cosell_only off).
    lead_rules: LeadRules = field(default_factory=LeadRules)
