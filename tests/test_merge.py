"""The pure two-way merge: who gets which field, conflicts, fields Partner Center cannot take, statuses."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from shared.crm.dynamics.mapping import default_mapping
from shared.domain.mapping import mapped_values
from shared.domain.merge import CRM_DEFAULTS, agreed_on_create, plan_merge
from shared.domain.opportunity import CustomerAddress, Opportunity
from shared.domain.policies import parse_field_owners

DEFAULT_FIELD_OWNERS = default_mapping().owners()  # who wins a conflict, as the shipped mapping declares it

BASE = Opportunity(
    name="Deal",
    deal_value=Decimal(100),
    currency="USD",
    notes="n",
    customer_name="C",
    customer_address=CustomerAddress(country="US"),
    status="Active",
    substatus="Accepted",
    referral_id="r",
    solution_ids=("SOL-1",),
)


def plan(pc: Opportunity, crm: Opportunity, base: Opportunity | None = BASE, owners=DEFAULT_FIELD_OWNERS):
    return plan_merge(pc, crm, mapped_values(base) if base else None, owners, pc.status, pc.substatus)


def test_one_sided_changes_go_to_the_other_side():
    p = plan(BASE.model_copy(update={"notes": "from pc"}), BASE.model_copy(update={"deal_value": Decimal(5)}))
    assert (p.to_crm, p.to_pc, p.notes) == (["notes"], ["deal_value"], [])
    assert p.agreed["notes"] == "from pc" and p.agreed["deal_value"] == "5"


def test_nothing_changed_means_nothing_to_do():
    p = plan(BASE, BASE)
    assert p.changed == [] and p.summary() == "Synchronised"


def test_conflict_goes_to_the_owner_and_is_explained():
    pc, crm = BASE.model_copy(update={"notes": "pc"}), BASE.model_copy(update={"notes": "crm"})
    assert plan(pc, crm).to_pc == ["notes"]
    assert "notes changed on both sides; the CRM wins" in plan(pc, crm).summary()
    assert plan(pc, crm, owners={**DEFAULT_FIELD_OWNERS, **parse_field_owners("notes=pc")}).to_crm == ["notes"]


def test_location_cannot_be_sent_after_creation():
    crm = BASE.model_copy(update={"customer_address": CustomerAddress(country="DE")})
    p = plan(BASE, crm)
    assert p.to_pc == [] and "customer_address cannot be changed" in p.notes[0]
    assert p.agreed["customer_address"] == mapped_values(BASE)["customer_address"]


def test_closed_referral_gets_nothing():
    closed = BASE.model_copy(update={"status": "Closed", "substatus": "Won"})
    p = plan(closed, closed.model_copy(update={"deal_value": Decimal(1)}), base=closed)
    assert p.to_pc == [] and "referral is closed" in p.notes[0]


def test_status_moves_only_along_allowed_transitions():
    won = BASE.model_copy(update={"status": "Closed", "substatus": "Won"})
    assert sorted(plan(BASE, won).to_pc) == ["status", "substatus"]
    back_to_new = BASE.model_copy(update={"status": "New", "substatus": "Pending"})
    p = plan(BASE, back_to_new)
    assert p.to_pc == [] and "does not allow Active/Accepted -> New/Pending" in p.notes[0]


def test_first_sync_without_base_lets_owners_decide():
    pc = BASE.model_copy(update={"notes": "pc", "status": "New", "substatus": "Pending"})
    crm = BASE.model_copy(update={"notes": "crm"})
    p = plan(pc, crm, base=None)
    assert "notes" in p.to_pc and "status" in p.to_crm and p.notes == []


def test_a_value_the_crm_filled_in_stays_in_the_crm_until_a_side_changes_it():
    no_date = BASE.model_copy(update={"close_date": None})
    placeholder = BASE.model_copy(update={"close_date": date(2030, 1, 31)})  # e.g. Salesforce's required CloseDate
    base = agreed_on_create(no_date, placeholder)
    assert base["close_date"] is None and base[CRM_DEFAULTS] == {"close_date": "2030-01-31"}

    p = plan_merge(no_date, placeholder, base, DEFAULT_FIELD_OWNERS, "Active", "Accepted")
    assert p.changed == [] and p.agreed[CRM_DEFAULTS] == {"close_date": "2030-01-31"}  # kept, not sent

    seller = placeholder.model_copy(update={"close_date": date(2030, 6, 30)})
    p = plan_merge(no_date, seller, base, DEFAULT_FIELD_OWNERS, "Active", "Accepted")
    assert p.to_pc == ["close_date"] and CRM_DEFAULTS not in p.agreed  # a seller's date is the partner's data

    partner = no_date.model_copy(update={"close_date": date(2030, 3, 31)})
    p = plan_merge(partner, placeholder, base, DEFAULT_FIELD_OWNERS, "Active", "Accepted")
    assert p.to_crm == ["close_date"] and p.agreed["close_date"] == "2030-03-31"
    assert CRM_DEFAULTS not in p.agreed


def _one_way(pc: Opportunity, crm: Opportunity, direction: str, base: Opportunity | None = BASE):
    directions = {"notes": direction}
    return plan_merge(pc, crm, mapped_values(base) if base else None, DEFAULT_FIELD_OWNERS, "Active", None, directions)


def test_a_field_sent_from_partner_center_only_keeps_crm_edits_in_the_crm():
    seller = BASE.model_copy(update={"notes": "seller's own"})
    p = _one_way(BASE, seller, "pc->crm")
    assert (p.to_crm, p.to_pc) == ([], [])
    assert p.notes == ["notes changed in the CRM; the mapping does not send it to Partner Center"]
    assert p.agreed["notes"] == "n"  # still what both sides agreed: the seller's text is not taken as agreed
    partner = BASE.model_copy(update={"notes": "from pc"})
    assert _one_way(partner, BASE, "pc->crm").to_crm == ["notes"]
    both = _one_way(partner, seller, "pc->crm")  # the CRM owns notes, but its value may not travel
    assert (both.to_crm, both.to_pc) == (["notes"], [])


def test_a_field_sent_to_partner_center_only_keeps_partner_center_edits_there():
    partner = BASE.model_copy(update={"notes": "from pc"})
    p = _one_way(partner, BASE, "crm->pc")
    assert (p.to_crm, p.to_pc) == ([], [])
    assert p.notes == ["notes changed in Partner Center; the mapping does not send it to the CRM"]
    assert p.agreed["notes"] == "n"
    # The next job, from what this one agreed, decides the same: nothing to write.
    again = plan_merge(partner, BASE, p.agreed, DEFAULT_FIELD_OWNERS, "Active", None, {"notes": "crm->pc"})
    assert again.changed == []
    seller = BASE.model_copy(update={"notes": "seller's own"})
    assert _one_way(BASE, seller, "crm->pc").to_pc == ["notes"]
    first = _one_way(partner, seller, "crm->pc", base=None)  # no base yet: only the CRM's value may travel
    assert (first.to_crm, first.to_pc) == ([], ["notes"])


def test_a_new_record_gets_one_way_fields_empty():
    from shared.domain.policies import only_what_travels

    directions = {"notes": "crm->pc", "deal_value": "pc->crm"}
    to_crm = only_what_travels(BASE, directions, "crm")
    assert (to_crm.notes, to_crm.deal_value) == (None, BASE.deal_value)
    to_pc = only_what_travels(BASE, directions, "pc")
    assert (to_pc.notes, to_pc.deal_value) == (BASE.notes, None)
    assert only_what_travels(BASE, {}, "crm") is BASE


def test_a_recorded_write_that_landed_becomes_the_base():
    from shared.domain.merge import resolve_pending, with_pending

    base = {"notes": "old", "name": "Deal"}
    stored = with_pending(base, {"crm": {"notes": ("old", "v5")}, "pc": {}})
    assert resolve_pending(stored, {"notes": "v47", "name": "Deal"}, {"notes": "v5", "name": "Deal"}) == {
        "notes": "v5",
        "name": "Deal",
    }


def test_a_recorded_write_that_did_not_land_leaves_the_base():
    from shared.domain.merge import resolve_pending, with_pending

    stored = with_pending({"notes": "old"}, {"crm": {"notes": ("old", "v5")}})
    assert resolve_pending(stored, {"notes": "v5"}, {"notes": "old"}) == {"notes": "old"}


def test_a_field_edited_after_the_job_read_it_keeps_that_edit_as_a_change():
    from shared.domain.merge import resolve_pending, with_pending

    stored = with_pending({"deal_value": "250000"}, {"pc": {"deal_value": ("250000", "251000")}})
    # Partner Center now holds a third value: newer than what the job carried, so it must count as PC's change.
    assert resolve_pending(stored, {"deal_value": "262000"}, {"deal_value": "251000"}) == {"deal_value": "251000"}
