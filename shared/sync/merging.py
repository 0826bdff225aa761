"""Merging a linked pair: plan from the values both sides agreed on last time, then send each side the other's
changes (Partner Center first, then the CRM) and record the new agreement.

Planning reads nothing and writes nothing, so the dry run shows the plan the engine would carry out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ..domain.audit_text import audit_line, newest_failed, prepend
from ..domain.current_fields import SERVICES_COSELL_MEMBERS, services_cosell_problems
from ..domain.errors import StorageRejected
from ..domain.mapping import fingerprint, mapped_values
from ..domain.merge import STATUS_FIELDS, Plan, plan_merge, resolve_pending, with_pending
from ..domain.opportunity import Opportunity
from ..domain.seller_actions import reason_left_out, unmapped_reason_problems
from ..domain.validation import problems_for_partner_center
from ..ports import Clock, Crm, PartnerCenter
from .options import EngineOptions
from .pairing import Pair, Pairing
from .recording import Outcome, Recorder
from .referral_creation import ReferralCreator, remember_microsoft_copy


@dataclass(frozen=True)
class MergePlan:
    """``pc_side`` is the referral in the CRM's stored form, ``base`` what both sides agreed on last time (None before
    the first sync); ``problems`` say why the opportunity cannot go to Partner Center, when the plan asks
    Microsoft for help (which sends the whole opportunity to Microsoft's referral)."""

    pair: Pair
    record: Opportunity
    pc_side: Opportunity
    base: dict[str, object] | None
    plan: Plan
    problems: list[str]
    pc_values: dict[str, object]  # mapped values of each side as read, for recording what is about to be written
    crm_values: dict[str, object]

    @property
    def upgrade(self) -> bool:
        return "help_code" in self.plan.to_pc


@dataclass(frozen=True)
class CrmUpdate:
    """What the CRM record receives: ``fields`` of ``target``."""

    target: Opportunity
    fields: list[str]


class Merging:
    def __init__(
        self,
        pc: PartnerCenter,
        crm: Crm,
        pairing: Pairing,
        recorder: Recorder,
        creator: ReferralCreator,
        options: EngineOptions,
        clock: Clock,
    ) -> None:
        self.pc, self.crm, self.pairing, self.recorder, self.creator = pc, crm, pairing, recorder, creator
        self.options, self.clock = options, clock

    def plan(self, pair: Pair) -> MergePlan:
        record, link, referral = pair.record, pair.link, pair.referral
        assert record is not None
        pc_side = self.crm.stored_form(pair.mapped)
        stored = json.loads(link.last_values) if link and link.last_values else None
        pc_values, crm_values = mapped_values(pc_side), mapped_values(record)
        base = resolve_pending(stored, pc_values, crm_values)
        options = self.options
        plan = plan_merge(
            pc_side,
            record,
            base,
            options.field_owners,
            referral.status,
            referral.substatus,
            options.field_directions,
            referral_direction=referral.direction,
        )
        plan.notes.extend(reason_left_out(pair.mapped, pc_side, plan.to_crm))
        problems = problems_for_partner_center(record) if "help_code" in plan.to_pc else []
        if not problems and set(plan.to_pc) & set(SERVICES_COSELL_MEMBERS):
            problems = services_cosell_problems(record)  # Partner Center takes the three only together
        if not problems:
            problems = unmapped_reason_problems(record, plan.to_pc)
        return MergePlan(pair, record, pc_side, base, plan, problems, pc_values, crm_values)

    def crm_update(self, merge: MergePlan, now: datetime) -> CrmUpdate | None:
        """The values from Partner Center, the success mark and the audit line; None when the record already
        holds everything (no change, no note, the mark in place; with CRM_AUDIT_LINE=changes also when only its own
        edit went to Partner Center), or when the only news is ours and the record is
        a closed, read-only one: reopening a closed deal for our own bookkeeping changes the seller's deal (a
        second close activity) and leaves it open if the job dies half way. The audit trail has the line."""
        plan, record = merge.plan, merge.record
        if not plan.to_crm and self.recorder.read_only(record):
            return None
        name = self.recorder.marked(merge.pc_side.name if "name" in plan.to_crm else record.name, True)
        # Notes (a value Partner Center would not take) reach the seller through the Audit column too.
        # A record whose newest Audit line reports a failure gets a line when it syncs again, so a seller sees it end.
        recovered = newest_failed(record.audit)
        if not (plan.changed or plan.notes or name != record.name or recovered):
            return None
        if not (self.options.audit_every_sync or plan.to_crm or plan.notes or name != record.name or recovered):
            return None  # only the CRM's own edit went to Partner Center: a line would cost a CRM write per edit
        audit = prepend(record.audit, audit_line(now, True, plan.summary()), self.options.audit_max_chars)
        target = record.model_copy(update={f: getattr(merge.pc_side, f) for f in plan.to_crm})
        target = target.model_copy(update={"name": name, "audit": audit})
        # Only fields that change: a name written back unchanged would overwrite a rename saved meanwhile that
        # the write's condition cannot see (Salesforce's If-Unmodified-Since has whole seconds).
        mark = ["name"] if "name" not in plan.to_crm and name != record.name else []
        return CrmUpdate(target, [*plan.to_crm, *mark, "audit"])

    def carry_out(self, merge: MergePlan, direction: str) -> Outcome:
        plan, record, link = merge.plan, merge.record, merge.pair.link
        referral, pc_fingerprint = merge.pair.referral, merge.pair.pc_fingerprint
        now = self.clock.now()
        if merge.problems:
            return self.recorder.fail_crm_side(record, link, merge.problems)
        update = self.crm_update(merge, now)
        if plan.changed:
            # What each side is about to receive, with the value it holds now, recorded before either write: if
            # the job dies or meets a conflict (412) before it records the result, the next job tells our landed
            # writes from edits (see resolve_pending).
            intents = {
                "pc": {f: (merge.pc_values[f], plan.agreed[f]) for f in plan.to_pc},
                "crm": {f: (merge.crm_values[f], plan.agreed[f]) for f in plan.to_crm},
            }
            passing: dict[str, list[str]] = {}
            if update is not None and self.recorder.read_only(record):
                # The write reopens the deal and closes it again; a job dying in between leaves it open.
                intents["crm"] |= {f: (merge.crm_values[f], plan.agreed[f]) for f in STATUS_FIELDS}
                passing["crm"] = list(STATUS_FIELDS)
            pending = with_pending(merge.base, intents, passing)
            try:
                link = self.recorder.save_pending(link, referral, pc_fingerprint, pending)
            except StorageRejected:
                pass  # our bookkeeping does not fit: write anyway; recording the result reports the refusal
        if plan.to_pc:
            referral = self.pc.update(referral, self._outgoing(merge), plan.to_pc)
            pc_fingerprint = fingerprint(self.pairing.map(referral))
        if merge.upgrade:
            _, made = self.creator.ensure_microsoft_referral(referral, record)
            remember_microsoft_copy(link, made)
        written: str | None = None
        if update is not None:
            record = self.crm.update_opportunity(record, update.target, update.fields)
            written = self.recorder.written_fingerprint(update.target)
        text = plan.summary() if update is not None or plan.changed else "both sides already match"
        action = "updated" if plan.changed else "unchanged"
        self.recorder.save_link(link, referral, pc_fingerprint, record, plan.agreed, written, last=True)
        assert referral.id
        if update is None and not plan.changed:
            return self.recorder.note(action, direction, text, record.crm_id, referral.id)
        outcome = Outcome(action, referral.id, direction, record.crm_id, referral.id, tuple(plan.changed), text)
        return self.recorder.audit(outcome)

    def _outgoing(self, merge: MergePlan) -> Opportunity:
        """What Partner Center receives: the record, with the customer contacts the CRM cannot hold (Dynamics
        keeps only the primary one) taken from the referral, so that a new primary contact replaces only the
        first of Partner Center's contacts and drops none of the others."""
        held = len(merge.pc_side.customer_contacts)
        # The status as planned: a decline on a referral Partner Center has accepted goes as lost.
        moving = {f: merge.plan.agreed[f] for f in STATUS_FIELDS if f in merge.plan.to_pc}
        record = merge.record.model_copy(update=moving) if moving else merge.record
        if "customer_contacts" not in merge.plan.to_pc:
            return record
        emails = {c.email.lower() for c in record.customer_contacts if c.email}
        rest = [
            c
            for c in merge.pair.mapped.customer_contacts[held:]
            if not (c.email and c.email.lower() in emails) and c not in record.customer_contacts
        ]
        return record.model_copy(update={"customer_contacts": (*record.customer_contacts, *rest)})
