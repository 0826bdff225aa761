"""Microsoft's side of a co-sell engagement, brought to the partner's opportunity on a related-referral event.

Partner Center raises ``related-referral-created/updated`` on the partner's referral when Microsoft's referral in
the same engagement changes (Microsoft accepts, assigns a seller, adds its CRM id or notes). After the pair itself
is synchronised, the engagement's referrals are listed (the one Partner Center call this adds, on this path
only), Microsoft's is picked out, and what the opportunity shows of it is compared with what it should show. Only
a difference is written: the changed columns and one Audit line, in one CRM write. A repeated or unchanged event
reads and writes nothing more.
"""

from __future__ import annotations

import logging

from ..domain.audit_text import audit_line, prepend
from ..domain.mapping import fingerprint
from ..domain.microsoft_side import (
    changed_side,
    describe,
    is_microsoft_referral,
    microsoft_referral,
    microsoft_side,
)
from ..domain.opportunity import Opportunity
from ..domain.referral import Referral
from ..ports import PC_TO_CRM, Clock, Crm, Link, PartnerCenter, SyncStore
from .options import EngineOptions
from .recording import Outcome, Recorder

log = logging.getLogger(__name__)

CLOSED_NOT_SHOWN = " (not shown on the opportunity: it is closed and read-only)"


class MicrosoftSideSync:
    def __init__(
        self, pc: PartnerCenter, crm: Crm, store: SyncStore, recorder: Recorder, options: EngineOptions, clock: Clock
    ) -> None:
        self.pc, self.crm, self.store = pc, crm, store
        self.recorder, self.options, self.clock = recorder, options, clock

    def partner_of(self, microsoft: Referral) -> tuple[list[Referral], Referral | None]:
        """The engagement of Microsoft's referral and the partner's referral on it (None when there is none): for
        an event that names Microsoft's referral rather than the partner's."""
        if not microsoft.engagement_id:
            return [], None
        engagement = list(self.pc.by_engagement(microsoft.engagement_id))
        return engagement, next((r for r in engagement if not is_microsoft_referral(r)), None)

    def bring_in(self, referral: Referral, outcome: Outcome, engagement: list[Referral] | None = None) -> Outcome:
        """Show Microsoft's side of ``referral``'s engagement on its opportunity; ``outcome`` is what the job did
        with the pair, returned unless Microsoft's side changed something. ``engagement``: its referrals, when the
        job has listed them already."""
        if not referral.id or not referral.engagement_id:
            return outcome
        link = self.store.get_link(referral.id)
        if link is None or not link.crm_id or link.last_status != "ok":
            return outcome  # no synchronised opportunity to show it on (skipped, failed, detached, missing)
        if engagement is None:
            engagement = list(self.pc.by_engagement(referral.engagement_id))
        microsoft = microsoft_referral(referral, engagement)
        if microsoft is None:
            log.info("referral %s: its engagement holds no referral of Microsoft's", referral.id)
            return outcome
        record = self.crm.get_opportunity(link.crm_id)
        if record is None:
            return outcome  # deleted meanwhile: the next job for the pair detaches it
        wanted = self.crm.stored_form(record.model_copy(update=microsoft_side(referral, microsoft)))
        fields = changed_side(record, wanted)
        if not fields:
            log.info("referral %s: Microsoft's side is shown already", referral.id)
            return outcome
        message = describe(wanted, fields)
        crm_id = record.crm_id
        if self.recorder.read_only(record):
            note = Outcome(
                "skipped", referral.id, PC_TO_CRM, crm_id, referral.id, tuple(fields), message + CLOSED_NOT_SHOWN
            )
            return self.recorder.audit(note)
        audit = prepend(record.audit, audit_line(self.clock.now(), True, message), self.options.audit_max_chars)
        written = self.crm.update_opportunity(record, wanted.model_copy(update={"audit": audit}), [*fields, "audit"])
        self._expect_echo(link, written)
        return self.recorder.audit(
            Outcome("updated", referral.id, PC_TO_CRM, crm_id, referral.id, tuple(fields), message)
        )

    def _expect_echo(self, link: Link, written: Opportunity) -> None:
        """The poll that sees this write finds the version recorded, and ends as an echo instead of reading the
        record again; only when the synchronised fields are still what the pair last agreed on."""
        if written.etag and link.crm_fingerprint == fingerprint(written):
            link.crm_etag = written.etag
            self.store.save_link(link)
