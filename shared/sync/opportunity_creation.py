"""Partner Center -> CRM, first sync: the opportunity made from a referral that has none yet; and what is done
instead when the referral had one that a seller deleted (:class:`DeletedOpportunity`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from ..domain.audit_text import audit_line
from ..domain.bounded import same_value
from ..domain.deletions import closing_move
from ..domain.errors import PermanentError, PreconditionFailed, StorageRejected
from ..domain.mapping import fingerprint, mapped_values, referral_to_opportunity
from ..domain.merge import STATUS_FIELDS, agreed_on_create
from ..domain.opportunity import Opportunity
from ..domain.policies import Direction, is_closed, only_what_travels
from ..domain.referral import Referral
from ..ports import PC_TO_CRM, Clock, Crm, Link, PartnerCenter
from .pairing import Pair, synchronised_here
from .recording import Outcome, Recorder

CREATED_FROM_REFERRAL = "Created from Partner Center referral"
DELETED_IN_CRM = "the opportunity was deleted in the CRM; not recreated."
LEFT_OPEN = "The referral is left as it is in Partner Center (CLOSE_REFERRAL_ON_CRM_DELETE is off)."


class OpportunityCreation:
    def __init__(
        self,
        crm: Crm,
        recorder: Recorder,
        clock: Clock,
        directions: Mapping[str, Direction] | None,
        pc: PartnerCenter,
    ) -> None:
        """``pc`` closes the referral of a deleted opportunity when the options ask for it."""
        self.crm, self.recorder, self.clock = crm, recorder, clock
        self.directions = directions or {}
        self.deleted = DeletedOpportunity(pc, recorder)

    def desired(self, pair: Pair) -> Opportunity:
        """The referral's values the new opportunity gets: fields the mapping never sends to the CRM stay empty."""
        return only_what_travels(pair.mapped, self.directions, "crm")

    def new_opportunity(self, pair: Pair, now: datetime) -> Opportunity:
        """What the CRM receives: the referral's values, the success mark and the first audit line."""
        desired = self.desired(pair)
        line = audit_line(now, True, CREATED_FROM_REFERRAL)
        return desired.model_copy(update={"name": self.recorder.marked(desired.name, True), "audit": line})

    def carry_out(self, pair: Pair) -> Outcome:
        if synchronised_here(pair.link, self.crm.provider):
            # The link names an opportunity we synchronised, and neither its id nor the referral id finds it: a
            # seller deleted it. Creating it again would undo that decision under a new id.
            return self.deleted.carry_out(pair)
        referral = pair.referral
        assert referral.id is not None
        stored = self.crm.stored_form(self.desired(pair))
        # Written ahead: if the worker dies between creating the opportunity and recording it, the next job
        # finds the opportunity with these values as the base, so later edits on either side are told apart
        # (without a base, every difference would look changed on both sides and the owner would overwrite
        # the other side's edit).
        agreed_before = pair.link.last_values if pair.link is not None else None  # save_pending changes the link
        try:
            link: Link | None = self.recorder.save_pending(
                pair.link, referral, pair.pc_fingerprint, mapped_values(stored)
            )
        except StorageRejected:
            # Our bookkeeping does not fit: create anyway, so the refusal is reported on the opportunity itself
            # (cross mark and reason) when the link is refused again after the create.
            link = None
        # The record's owner (INBOUND_OWNER) is chosen from the referral as read, not only from what travels to the
        # CRM, and given on create only: updates never name one, so a seller's reassignment sticks.
        rule = self.recorder.options.inbound_routing.rule_for(pair.mapped)
        owner = rule.owner if rule is not None else None
        try:
            created = self.crm.create_opportunity(self.new_opportunity(pair, self.clock.now()), owner)
        except PreconditionFailed:
            # The CRM's duplicate guard: the referral has an opportunity this job did not make (the create made
            # nothing). The link goes back to the values it agreed before, so that the engine, reading both sides
            # again, merges with that opportunity exactly as a lookup before the create would have had it.
            if link is not None:
                link.last_values = agreed_before
                self.recorder.store.save_link(link)
            raise
        link = link or pair.link
        # A seller's edit saved between the create and its read-back (Salesforce reads the record again) must not
        # be recorded as what we wrote: then the written values are the fingerprint, and the next job merges.
        sent, read = mapped_values(stored), mapped_values(created)
        slipped = any(value is not None and not same_value(read[name], value) for name, value in sent.items())
        written = fingerprint(stored) if slipped else None
        agreed = agreed_on_create(stored, created)
        self.recorder.save_link(link, referral, pair.pc_fingerprint, created, agreed, written, last=True)
        message = "opportunity created in the CRM"
        if rule is not None:
            message += f"; routed to {rule.owner} by INBOUND_OWNER rule '{rule.text}'"
        return self.recorder.audit(
            Outcome("created", referral.id, PC_TO_CRM, created.crm_id, referral.id, ("all",), message)
        )


class DeletedOpportunity:
    """A pair whose opportunity a seller deleted: detached for good (link and audit say so), and its referral
    closed in Partner Center only when ``close_referral_on_crm_delete`` is on."""

    def __init__(self, pc: PartnerCenter, recorder: Recorder) -> None:
        self.pc, self.recorder = pc, recorder

    def carry_out(self, pair: Pair) -> Outcome:
        assert pair.link is not None
        referral, outcome = pair.referral, LEFT_OPEN
        if self.recorder.options.close_referral_on_crm_delete:
            referral, outcome = self._close(pair.referral)
        # Closed first, recorded after: a job that dies in between finds the pair undetached and the referral
        # closed, and detaches it then; recorded first, a failed close would never be tried again.
        pc_fingerprint = pair.pc_fingerprint if referral is pair.referral else self._fingerprint(referral)
        return self.recorder.detach(pair.link, referral, pc_fingerprint, f"{DELETED_IN_CRM} {outcome}")

    def _close(self, referral: Referral) -> tuple[Referral, str]:
        """The referral after closing it the way a lost deal is sent (status fields of the PC port's update),
        and what the audit says about it. A 412 goes up: the engine reads both sides again and decides anew."""
        move = closing_move(referral.status, referral.direction)
        if move is None:
            now = f"{referral.status}/{referral.substatus}"
            if is_closed(referral.status):
                return referral, f"The referral was already {now} in Partner Center; left as it is."
            return referral, f"Partner Center allows no close from {now}; the referral is left as it is."
        status, substatus = move
        try:
            closed = self.pc.update(referral, Opportunity(status=status, substatus=substatus), list(STATUS_FIELDS))
        except PermanentError as exc:
            return referral, f"Closing the referral in Partner Center failed: {exc}"
        return closed, f"The referral was closed in Partner Center as {status}/{substatus}."

    def _fingerprint(self, referral: Referral) -> str:
        return fingerprint(referral_to_opportunity(referral, self.recorder.options.referral_link_template))
