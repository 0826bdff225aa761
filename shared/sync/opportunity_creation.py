"""Partner Center -> CRM, first sync: the opportunity made from a referral that has none yet."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from ..domain.audit_text import audit_line
from ..domain.errors import StorageRejected
from ..domain.mapping import mapped_values
from ..domain.merge import agreed_on_create
from ..domain.opportunity import Opportunity
from ..domain.policies import Direction, only_what_travels
from ..ports import PC_TO_CRM, Clock, Crm
from .pairing import Pair
from .recording import Outcome, Recorder

CREATED_FROM_REFERRAL = "Created from Partner Center referral"


class OpportunityCreation:
    def __init__(
        self, crm: Crm, recorder: Recorder, clock: Clock, directions: Mapping[str, Direction] | None = None
    ) -> None:
        self.crm, self.recorder, self.clock = crm, recorder, clock
        self.directions = directions or {}

    def desired(self, pair: Pair) -> Opportunity:
        """The referral's values the new opportunity gets: fields the mapping never sends to the CRM stay empty."""
        return only_what_travels(pair.mapped, self.directions, "crm")

    def new_opportunity(self, pair: Pair, now: datetime) -> Opportunity:
        """What the CRM receives: the referral's values, the success mark and the first audit line."""
        desired = self.desired(pair)
        line = audit_line(now, True, CREATED_FROM_REFERRAL)
        return desired.model_copy(update={"name": self.recorder.marked(desired.name, True), "audit": line})

    def carry_out(self, pair: Pair) -> Outcome:
        referral = pair.referral
        assert referral.id is not None
        stored = self.crm.stored_form(self.desired(pair))
        # Written ahead: if the worker dies between creating the opportunity and recording it, the next job
        # finds the opportunity with these values as the base, so later edits on either side are told apart
        # (without a base, every difference would look changed on both sides and the owner would overwrite
        # the other side's edit).
        try:
            link = self.recorder.save_pending(pair.link, referral, pair.pc_fingerprint, mapped_values(stored))
        except StorageRejected:
            # Our bookkeeping does not fit: create anyway, so the refusal is reported on the opportunity itself
            # (cross mark and reason) when the link is refused again after the create.
            link = pair.link
        created = self.crm.create_opportunity(self.new_opportunity(pair, self.clock.now()))
        self.recorder.save_link(link, referral, pair.pc_fingerprint, created, agreed_on_create(stored, created))
        message = "opportunity created in the CRM"
        return self.recorder.audit(
            Outcome("created", referral.id, PC_TO_CRM, created.crm_id, referral.id, ("all",), message)
        )
