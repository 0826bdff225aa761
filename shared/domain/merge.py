"""Two-way merge of one referral <-> opportunity pair against the values both agreed on last time.

A field that changed on one side only goes to the other side; a field both changed goes the way its
owner says (:mod:`.policies`). A field the mapping sends one way only (``pc->crm`` or ``crm->pc``) never
goes the other way: a change on the side it does not come from stays there and is noted. Fields Partner
Center cannot take (the customer's location after creation), status moves it does not allow, and anything
for a closed referral stay where they are and are explained in ``notes``. ``agreed`` is what both sides
hold once the plan has been carried out.

A value the CRM filled in by itself where the referral has none (Salesforce requires ``CloseDate``, so
the adapter sets one; a CRM may default the currency) is not the partner's data: it is kept under
:data:`CRM_DEFAULTS` in ``agreed`` and stays in the CRM until either side really changes the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .bounded import same_value
from .mapping import mapped_values
from .opportunity import MAPPED_FIELDS, Opportunity
from .policies import Direction, Side, is_closed, transition_allowed, travels_to, winner
from .referral import INCOMING, OUTGOING
from .referral_rules import PATCHABLE_FIELDS

STATUS_FIELDS = ("status", "substatus")
REASON_FIELD = "status_reason"  # why the deal was declined or lost: it goes to Partner Center with a closing status
PC_ONLY_FIELDS = ("referral_id", "referral_link")
PENDING = "pending"  # key in stored base values: {"pc"|"crm": {field: value}} a job was about to write
PASSING = "passing"  # key in PENDING: {"pc"|"crm": [field]} that the write takes through other values on its way
CRM_DEFAULTS = "crm_defaults"  # key in ``agreed``: {field: value the CRM filled in where Partner Center has none}


@dataclass
class Plan:
    to_crm: list[str] = field(default_factory=list)
    to_pc: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    agreed: dict[str, object] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        return [*self.to_crm, *self.to_pc]

    def summary(self) -> str:
        parts = []
        if self.to_crm:
            parts.append("from Partner Center: " + ", ".join(self.to_crm))
        if self.to_pc:
            parts.append("to Partner Center: " + ", ".join(self.to_pc))
        text = "Updated " + "; ".join(parts) if parts else "Synchronised"
        return text + (" (" + "; ".join(self.notes) + ")" if self.notes else "")


def _side_name(side: Side) -> str:
    return "Partner Center" if side == "pc" else "the CRM"


def agreed_on_create(desired: Opportunity, created: Opportunity) -> dict[str, object]:
    """What both sides hold once the CRM record was created: ``desired`` is the referral in the CRM's stored
    form, ``created`` the record as read back. Fields Partner Center left empty but the CRM filled in are
    remembered as the CRM's own defaults, so a later merge does not send them to Partner Center."""
    agreed = mapped_values(desired)
    stored = mapped_values(created)
    defaults = {name: stored[name] for name in MAPPED_FIELDS if agreed[name] is None and stored[name] is not None}
    if defaults:
        agreed[CRM_DEFAULTS] = defaults
    return agreed


def with_pending(
    base: Mapping[str, object] | None,
    intents: Mapping[str, Mapping[str, tuple[object, object]]],
    passing: Mapping[str, list[str]] | None = None,
) -> dict[str, object]:
    """``base`` plus, per side, each field a job is about to write with its value before and after the write,
    recorded before the job writes anything. ``passing`` names fields the write moves through other values
    (Dataverse reopens a closed opportunity to write it, then closes it again)."""
    pending: dict[str, object] = {
        side: {name: list(pair) for name, pair in fields.items()} for side, fields in intents.items() if fields
    }
    if passing:
        pending[PASSING] = {side: list(names) for side, names in passing.items() if names}
    return {**(base or {}), PENDING: pending}


def resolve_pending(
    base: Mapping[str, object] | None, pc_vals: Mapping[str, object], crm_vals: Mapping[str, object]
) -> dict[str, object] | None:
    """The base after a job that recorded what it was about to write and did not live to record the result.

    For each field it meant to write: if that side still holds the value from before, the write did not land
    and the old base stands. Otherwise the write landed, or someone edited the field on that side after the job
    read it, which is newer than the value the job was carrying: either way the carried value becomes the base,
    so that side's current value counts as its own change. Without this, our own landed write would look like
    an edit of that side and could overwrite a newer edit of the other side."""
    if base is None or PENDING not in base:
        return dict(base) if base is not None else None
    resolved = {name: value for name, value in base.items() if name != PENDING}
    intents = base[PENDING]
    if not isinstance(intents, Mapping):
        return resolved  # too large to keep: the old base stands
    for side, current in (("pc", pc_vals), ("crm", crm_vals)):
        fields = intents.get(side)
        if not isinstance(fields, Mapping):
            continue
        for name, pair in fields.items():
            if name not in current or not isinstance(pair, list) or len(pair) != 2:
                continue
            before, after = pair
            if not same_value(current[name], before):
                resolved[name] = after
    _resolve_passing(resolved, base, intents, {"pc": pc_vals, "crm": crm_vals})
    return resolved


def _resolve_passing(
    resolved: dict[str, object],
    base: Mapping[str, object],
    intents: Mapping[str, object],
    values: Mapping[str, Mapping[str, object]],
) -> None:
    """A field the job's write moved through another value (a reopened deal), now holding neither the value
    before nor the value after, was left half way by the job: that value is ours, not an edit, so it becomes
    the base and the other side's value goes back to it. Counted as an edit, a reopen Partner Center refuses
    would keep the pair apart for good."""
    passing = intents.get(PASSING)
    if not isinstance(passing, Mapping):
        return
    for side, names in passing.items():
        current, fields = values.get(side, {}), intents.get(side)
        for name in names if isinstance(names, list) else []:
            if name not in current:
                continue
            pair = fields.get(name) if isinstance(fields, Mapping) else None
            known = pair if isinstance(pair, list) and len(pair) == 2 else [base.get(name)]
            if not any(same_value(current[name], value) for value in known):
                resolved[name] = current[name]


def plan_merge(
    pc: Opportunity,
    crm: Opportunity,
    base: Mapping[str, object] | None,
    owners: Mapping[str, Side],
    pc_status: str | None,
    pc_substatus: str | None,
    directions: Mapping[str, Direction] | None = None,
    referral_direction: str | None = None,
) -> Plan:
    """``pc`` is the referral mapped into the CRM's stored form; ``base`` is None before the first sync;
    ``directions`` says which fields travel one way only (the rest travel both ways). ``referral_direction``:
    ``Incoming`` (shared by Microsoft or another partner: its help request is theirs and is never sent back) or
    ``Outgoing`` (the partner's own: accepted from the start, so a CRM stage before acceptance is no status)."""
    one_way = directions or {}
    shared_with_us = referral_direction == INCOMING
    pc_vals, crm_vals = mapped_values(pc), mapped_values(crm)
    if referral_direction == OUTGOING and crm_vals["status"] == "New" and pc_status != "New":
        # Salesforce's first stage (Prospecting) reads as New: on a deal Partner Center accepted at creation it
        # is where the seller is in the sale, not a move back that Partner Center would refuse on every edit.
        crm_vals["status"], crm_vals["substatus"] = "Active", "Accepted"
    if _declined_after_acceptance(crm_vals, pc_status, pc_vals, base):
        # Declining is only possible before acceptance: the CRM's decline state (Canceled, or the lost stage with a
        # reason) on a referral Partner Center has accepted means the deal was lost.
        crm_vals["substatus"] = "Lost"
    stored_defaults = base.get(CRM_DEFAULTS) if base is not None else None
    defaults: Mapping[str, object] = stored_defaults if isinstance(stored_defaults, dict) else {}
    plan = Plan(agreed=dict(pc_vals))
    kept: dict[str, object] = {}
    for name in MAPPED_FIELDS:
        if pc_vals[name] == crm_vals[name]:
            continue
        if name in PC_ONLY_FIELDS and pc_vals[name] is not None:
            plan.to_crm.append(name)  # Partner Center's own id and link: only it can set them
            continue
        crm_base = defaults[name] if name in defaults else (base or {}).get(name)
        # A value too large to store whole is kept as a digest marker: same_value compares by digest.
        pc_changed = base is None or not same_value(pc_vals[name], base.get(name))
        crm_changed = base is None or not same_value(crm_vals[name], crm_base)
        if not (pc_changed or crm_changed):
            kept[name] = crm_base  # Partner Center still has none; the CRM keeps what it filled in
            continue
        if pc_changed and crm_changed:
            side = winner(name, owners)
            if base is not None:
                plan.notes.append(f"{name} changed on both sides; {_side_name(side)} wins")
        else:
            side = "pc" if pc_changed else "crm"
        if not travels_to(name, "crm" if side == "pc" else "pc", one_way):
            if crm_changed if side == "pc" else pc_changed:
                side = "crm" if side == "pc" else "pc"  # both changed: only the other side's value may travel
            else:
                where, towards = ("Partner Center", "the CRM") if side == "pc" else ("the CRM", "Partner Center")
                plan.notes.append(f"{name} changed in {where}; the mapping does not send it to {towards}")
                plan.agreed[name] = crm_vals[name] if side == "pc" else pc_vals[name]
                continue
        if side == "pc":
            plan.to_crm.append(name)
        elif name not in PATCHABLE_FIELDS:
            plan.notes.append(f"{name} cannot be changed in Partner Center after creation; not sent")
        elif name == "help_code" and shared_with_us:
            plan.notes.append("the help request of a referral shared with you is Microsoft's; not sent")
            plan.agreed[name] = pc_vals[name]
        elif name == "help_code" and crm_vals[name] is None:
            plan.notes.append("a request for Microsoft's help cannot be withdrawn in Partner Center; not sent")
        else:
            plan.to_pc.append(name)
            plan.agreed[name] = crm_vals[name]
    _check_status_move(plan, pc_status, pc_substatus, pc_vals, crm_vals)
    if plan.to_pc and is_closed(pc_status):
        plan.notes.append(f"referral is closed in Partner Center; not sent: {', '.join(plan.to_pc)}")
        for name in plan.to_pc:
            plan.agreed[name] = pc_vals[name]
        plan.to_pc = []
    if kept:
        plan.agreed[CRM_DEFAULTS] = kept
    return plan


def _declined_after_acceptance(
    crm_vals: Mapping[str, object],
    pc_status: str | None,
    pc_vals: Mapping[str, object],
    base: Mapping[str, object] | None,
) -> bool:
    """The CRM reads as declined while Partner Center has the referral accepted, or holds the loss both sides
    agreed on (sent from this same CRM state: without this, its read-back would look like a new decline)."""
    if (crm_vals["status"], crm_vals["substatus"]) != ("Closed", "Declined"):
        return False
    agreed_lost = base is not None and base.get("substatus") == "Lost" and pc_vals["substatus"] == "Lost"
    return pc_status == "Active" or agreed_lost


def _check_status_move(
    plan: Plan,
    pc_status: str | None,
    pc_substatus: str | None,
    pc_vals: dict[str, object],
    crm_vals: dict[str, object],
) -> None:
    """Status and substatus travel together and only along Partner Center's allowed transitions; the reason goes
    with a closing status and is held back otherwise (Partner Center keeps it for a closed referral only)."""
    status, substatus = crm_vals["status"], crm_vals["substatus"]
    moving = [f for f in STATUS_FIELDS if f in plan.to_pc]
    closing = bool(moving) and status == "Closed" and transition_allowed(pc_status, str(status), str(substatus))
    if REASON_FIELD in plan.to_pc and not closing:
        plan.to_pc.remove(REASON_FIELD)
        plan.agreed[REASON_FIELD] = pc_vals[REASON_FIELD]
    if not moving:
        return
    if transition_allowed(pc_status, str(status), str(substatus)):
        for name in (*STATUS_FIELDS, *((REASON_FIELD,) if closing else ())):
            if name == REASON_FIELD and name in plan.to_crm:
                continue  # a reason Partner Center changed and the CRM did not: the close keeps it, the CRM learns it
            if name not in plan.to_pc and pc_vals[name] != crm_vals[name]:
                plan.to_pc.append(name)
                if name in plan.to_crm:
                    plan.to_crm.remove(name)
            plan.agreed[name] = crm_vals[name]
        return
    plan.notes.append(
        f"Partner Center does not allow {pc_status}/{pc_substatus} -> {status}/{substatus}; status not sent"
    )
    for name in moving:
        plan.to_pc.remove(name)
        plan.agreed[name] = pc_vals[name]
