"""Property-based tests of the pure sync core: mapping both ways, fingerprints, the merge plan, audit text, marks.

Partner Center is played by the emulator's own JSON Patch rules (``emulators.partner_center.rules``) and JSON
goes through ``json.dumps``/``json.loads`` as it does over HTTP, so a property that holds here holds for what
the connector really sends and reads back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from emulators.partner_center.rules import apply_patch, check_transition
from shared.crm.dynamics.mapping import default_mapping
from shared.domain.audit_text import audit_line, prepend
from shared.domain.bounded import AGREED_MAX_UNITS, encode_agreed, utf16_units
from shared.domain.checkmark import CHECK, CROSS, mark, strip_marks
from shared.domain.current_fields import SERVICES_COSELL_MEMBERS
from shared.domain.mapping import fingerprint, mapped_values, referral_to_opportunity
from shared.domain.merge import PC_ONLY_FIELDS, STATUS_FIELDS, Plan, agreed_on_create, plan_merge
from shared.domain.opportunity import MAPPED_FIELDS, Contact, CustomerAddress, Opportunity
from shared.domain.policies import (
    SUBSTATUS_OF,
    Side,
    is_closed,
    transition_allowed,
    winner,
)
from shared.domain.referral import AssistanceRequestCode, Referral
from shared.domain.referral_rules import PATCHABLE_FIELDS, referral_created_from
from shared.partner_center.bodies import partner_referral_body, patch_operations
from shared.ports import KIND_REFERRAL, Job, Link
from shared.sync.echoes import is_echo

DEFAULT_FIELD_OWNERS = default_mapping().owners()  # who wins a conflict, as the shipped mapping declares it

# Sized for a 2-core CI machine: the whole file runs in well under 20 s.
FAST = settings(max_examples=120, deadline=None)

# Everything the create body carries back to Partner Center. Status and substatus start as New/Pending on
# every new referral and travel later through patches; the id and link are Partner Center's own.
CREATE_ROUND_TRIP = (
    "name",
    "deal_value",
    "currency",
    "close_date",
    "notes",
    "customer_name",
    "customer_address",
    "customer_contacts",
    "help_code",
    "solution_ids",
)
MARKS = (CHECK, CROSS, "\u2705", "\u274c", "\u2713", "\u2717")  # every mark strip_marks recognises
VALID_PAIRS = tuple((status, sub) for status, subs in SUBSTATUS_OF.items() for sub in sorted(subs))
HELP_CODES = tuple(code.value for code in AssistanceRequestCode)

# -- strategies ------------------------------------------------------------------------------------------------

AWKWARD = (
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "\x00",
    "\x1f",
    "\x7f",
    "\u200b",
    "\u2028",
    "\ufeff",
    "e\u0301",
    "\U0001f680",
    "\U0001d518\U0001d52b",
    "\u0130",
    "\u00df",
    *MARKS,
)
# Any code point but lone surrogates (JSON cannot carry those), with whitespace, controls, marks and non-BMP
# characters mixed in far more often than uniform sampling would.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(AWKWARD),
    st.lists(st.one_of(st.sampled_from(AWKWARD), st.text(max_size=6)), max_size=6).map("".join),
)
optional_texts = st.none() | texts
long_texts = st.builds(lambda unit, times: unit * times, st.text(min_size=1, max_size=8), st.integers(2_500, 6_000))
names = st.builds(
    lambda base, gap, marks: base + gap + "".join(marks),
    texts,
    st.sampled_from(("", " ", "  ", "\t")),
    st.lists(st.sampled_from(MARKS), max_size=3),
)
emails = st.one_of(
    st.emails().map(lambda e: e.upper() if len(e) % 2 else e),
    st.sampled_from(("Ada@Contoso.COM", " bob@example.org ", "\u0130nci@example.com")),
    texts,
)
# JSON numbers are binary floats on both ends of the wire (requests' json= and response.json()), so a deal
# value comes back exact up to 15 significant digits (under 10 trillion with 2 decimals), and no further.
exact_deal_values = st.builds(
    lambda units, places, zeros: (Decimal(units).scaleb(-places)).quantize(Decimal(1).scaleb(-(places + zeros))),
    st.integers(-(10**15 - 1), 10**15 - 1),
    st.integers(0, 6),
    st.integers(0, 3),
)


def _closing_text(day: date, form: int) -> str:
    return (
        f"{day.isoformat()}T00:00:00Z",
        f"{day.isoformat()}T23:59:59.1234567Z",
        f"{day.isoformat()}T12:00:00+05:30",
        day.isoformat(),
    )[form]


members = st.fixed_dictionaries(
    {},
    optional={
        "firstName": optional_texts,
        "lastName": optional_texts,
        "email": st.none() | emails,
        "phoneNumber": optional_texts,
        "title": optional_texts,
    },
)
addresses = st.fixed_dictionaries(
    {},
    optional={
        "addressLine1": optional_texts,
        "addressLine2": optional_texts,
        "city": optional_texts,
        "state": optional_texts,
        "postalCode": optional_texts,
        "country": st.none() | st.sampled_from(("us", "DE", " gb ")) | texts,
    },
)
solution_ids = st.one_of(
    st.sampled_from(("SOL-12345-ABC", "SOL-2", "sol \U0001f680")), st.text(min_size=1, max_size=20)
)


def referrals(min_solutions: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Referral JSON as Partner Center returns it: any field may be absent, null, empty or odd."""
    attribute = st.sampled_from(
        (
            {"id": "Yes", "type": "CustomerMarketplaceIntent"},
            {"id": "HaveNotDecided", "type": "CustomerMarketplaceIntent"},
            {"id": "Retail", "type": "SubIndustry"},
        )
    )
    additional = st.fixed_dictionaries({}, optional={"attributes": st.lists(attribute, max_size=2)})
    requirements = st.fixed_dictionaries(
        {"solutions": st.lists(st.fixed_dictionaries({"id": solution_ids}), min_size=min_solutions, max_size=4)},
        optional={"industries": st.just([{"id": "Retail"}]), "additionalRequirements": st.none() | additional},
    )
    details = st.fixed_dictionaries(
        {"requirements": requirements} if min_solutions else {},
        optional={
            "notes": st.none() | texts | long_texts,
            "dealValue": st.none() | exact_deal_values.map(float),
            "currency": st.none() | st.sampled_from(("usd", "EUR", " jpy ")) | texts,
            "closingDateTime": st.none() | st.builds(_closing_text, st.dates(), st.integers(0, 3)),
            **({} if min_solutions else {"requirements": st.none() | requirements}),
        },
    )
    profile = st.fixed_dictionaries(
        {},
        optional={"name": optional_texts, "address": st.none() | addresses, "team": st.lists(members, max_size=3)},
    )
    invite = st.fixed_dictionaries(
        {}, optional={"assistanceRequestCode": st.none() | st.sampled_from(HELP_CODES) | texts, "notes": texts}
    )
    return st.builds(
        lambda base, pair, optional: {**base, "status": pair[0], "substatus": pair[1], **optional},
        st.fixed_dictionaries({"id": st.sampled_from(("ref-1", "4f2a6d1e-8b7c-4e39-9a51-1c2d3e4f5a6b"))}),
        st.sampled_from(VALID_PAIRS),
        st.fixed_dictionaries(
            {"details": details} if min_solutions else {},
            optional={
                "name": st.none() | names,
                "customerProfile": st.none() | profile,
                **({} if min_solutions else {"details": st.none() | details}),
                "inviteContext": st.none() | invite,
                "consent": st.just({"consentToContact": False}),
                **{member: st.none() | optional_texts for member in SERVICES_COSELL_MEMBERS.values()},
            },
        ),
    )


def _read(data: Mapping[str, Any]) -> Opportunity:
    """What the connector makes of referral JSON it received over HTTP."""
    return referral_to_opportunity(Referral.model_validate(json.loads(json.dumps(data))))


def _wire(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _stored(agreed: Mapping[str, object]) -> dict[str, Any]:
    """The agreed values as the next sync reads them back from the link row (see SyncEngine._save_link)."""
    return json.loads(encode_agreed(agreed))


# -- mapping both ways -----------------------------------------------------------------------------------------


@FAST
@given(referrals(min_solutions=1))
@example(
    {
        "id": "r",
        "status": "New",
        "substatus": "Pending",
        "name": "  Deal \u2714\u2716 ",
        "details": {
            "notes": "\n\U0001f680 notes \x00\n",
            "dealValue": 123456789012345.0,
            "currency": " usd ",
            "closingDateTime": "2026-12-31T23:59:59.1234567Z",
            "requirements": {"solutions": [{"id": "SOL-1"}]},
        },
        "customerProfile": {"name": "", "team": [{"email": "Ada@Contoso.COM", "firstName": " "}, {}]},
        "inviteContext": {"assistanceRequestCode": "Unknown"},
    }
)
def test_a_referral_comes_back_unchanged_from_the_create_body(data: dict[str, Any]) -> None:
    opportunity = _read(data)
    body = partner_referral_body(opportunity.model_copy(update={"crm_id": "crm-1"}))
    echoed = _read({**_wire(body), "id": "new-referral"})
    for name in CREATE_ROUND_TRIP:
        assert getattr(echoed, name) == getattr(opportunity, name), name
        assert mapped_values(echoed)[name] == mapped_values(opportunity)[name], name


@FAST
@given(
    referrals(min_solutions=1),
    st.none()
    | exact_deal_values
    | st.decimals(min_value=-(10**12), max_value=10**12, allow_nan=False, allow_infinity=False, places=6),
)
def test_the_engine_knows_what_a_created_referral_holds_without_the_create_body(
    data: dict[str, Any], deal_value: Decimal | None
) -> None:
    """The engine bases a new CRM -> Partner Center pair on what was sent, read as Partner Center reads it; it
    may not see the adapter's wire body, so the domain says what that body holds. Both must agree exactly."""
    opportunity = _read(data).model_copy(update={"crm_id": "crm-1", "deal_value": deal_value})
    assert referral_to_opportunity(referral_created_from(opportunity)) == _read(
        _wire(partner_referral_body(opportunity))
    )


@FAST
@given(referrals(), referrals(), st.sets(st.sampled_from(sorted(PATCHABLE_FIELDS))))
def test_patched_fields_read_back_as_sent_and_nothing_else_moves(
    original: dict[str, Any], edited_from: dict[str, Any], fields: set[str]
) -> None:
    before = _read(original)
    edited = _read(edited_from)
    ordered = [name for name in MAPPED_FIELDS if name in fields]
    operations = patch_operations(edited, ordered, Referral.model_validate(original))
    assert {op["op"] for op in operations} <= {"add", "replace"}
    patched = apply_patch(copy.deepcopy(original), _wire(operations)) if operations else original
    after = _read(patched)
    for name in MAPPED_FIELDS:
        sent = name in fields and not (name == "help_code" and edited.help_code is None)
        expected = getattr(edited if sent else before, name)
        assert getattr(after, name) == expected, name


crm_edits = st.one_of(
    st.tuples(st.just("name"), names),
    st.tuples(st.just("notes"), texts | long_texts),
    st.tuples(st.just("currency"), st.sampled_from(("usd", "EUR ", "Jpy"))),
    st.tuples(
        st.just("customer_contacts"),
        st.lists(
            st.builds(Contact, first_name=optional_texts, last_name=optional_texts, email=st.none() | emails),
            max_size=2,
        ).map(tuple),
    ),
    st.tuples(st.just("deal_value"), exact_deal_values),
    st.tuples(st.just("close_date"), st.dates()),
    st.tuples(st.just("solution_ids"), st.lists(solution_ids, min_size=1, max_size=3).map(tuple)),
)


@FAST
@given(referrals(), crm_edits)
@example(
    original={"id": "r", "status": "Active", "substatus": "Accepted", "details": {"notes": "Call Ada"}},
    edit=("notes", "Call Ada back\n"),
)
@example(
    original={"id": "r", "status": "Active", "substatus": "Accepted", "customerProfile": {"team": [{"lastName": "L"}]}},
    edit=("customer_contacts", (Contact(last_name="L", email="Ada@Contoso.com"),)),
)
def test_a_crm_edit_sent_to_partner_center_is_not_echoed_back(original: dict[str, Any], edit: tuple[str, Any]) -> None:
    """The next merge after a patch compares what Partner Center now returns with the CRM: a value the seller
    typed with stray spaces or in another case must not come back as a change from Partner Center."""
    field, value = edit
    pc = _read(original)
    crm = pc.model_copy(update={field: value, "name": mark(value if field == "name" else pc.name or "", True)})
    first = plan_merge(pc, crm, _stored(mapped_values(pc)), DEFAULT_FIELD_OWNERS, pc.status, pc.substatus)
    assert first.to_crm == []
    patched = original
    if first.to_pc:
        patched = apply_patch(original, _wire(patch_operations(crm, first.to_pc, Referral.model_validate(original))))
    pc_after = _read(patched)
    second = plan_merge(pc_after, crm, _stored(first.agreed), DEFAULT_FIELD_OWNERS, pc_after.status, pc_after.substatus)
    assert (second.to_crm, second.to_pc) == ([], []), second.summary()


# -- fingerprints ----------------------------------------------------------------------------------------------


@st.composite
def shuffled(draw: st.DrawFn, value: Any) -> Any:
    """The same JSON with every object's keys in another order."""
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {key: draw(shuffled(value[key])) for key in keys}
    if isinstance(value, list):
        return [draw(shuffled(item)) for item in value]
    return value


many_digit_decimals = st.builds(
    lambda units, places: Decimal(units).scaleb(-places),
    st.integers(-(10**19 - 1), 10**19 - 1),
    st.integers(0, 8),
)


@FAST
@given(referrals(), st.data())
def test_fingerprint_ignores_key_order_and_storage_round_trips(data: dict[str, Any], draws: st.DataObject) -> None:
    opportunity = _read(data)
    assert fingerprint(_read(draws.draw(shuffled(data)))) == fingerprint(opportunity)
    values = mapped_values(opportunity)
    stored = _stored(draws.draw(shuffled(values)))
    if utf16_units(json.dumps(values, ensure_ascii=False)) <= AGREED_MAX_UNITS:  # else long texts are digests
        assert stored == values
    plan = plan_merge(opportunity, opportunity, stored, DEFAULT_FIELD_OWNERS, opportunity.status, None)
    assert (plan.to_crm, plan.to_pc, plan.notes) == ([], [], [])


@FAST
@given(referrals(), many_digit_decimals, st.integers(0, 6), st.sampled_from(MARKS), st.booleans())
@example(data={"id": "r"}, value=Decimal(0), zeros=2, mark_char=CHECK, negative_zero=True)
def test_equal_values_give_equal_fingerprints(
    data: dict[str, Any], value: Decimal, zeros: int, mark_char: str, negative_zero: bool
) -> None:
    """A CRM returns 100 as 100.00, keeps the outcome mark on the name and has its own bookkeeping; none of
    that is a change."""
    pc = _read(data).model_copy(update={"deal_value": value})
    same = value.quantize(Decimal(1).scaleb(int(value.as_tuple().exponent) - zeros))
    if negative_zero and not value:
        same = same.copy_negate()
    assert same == value
    crm = pc.model_copy(
        update={
            "deal_value": same,
            "name": f"{pc.name or ''} {mark_char}",
            "crm_id": "crm-1",
            "etag": 'W/"7"',
            "audit": "2026-01-01 00:00:00Z \u2714 Synchronised",
            "modified_at": datetime(2026, 1, 1, tzinfo=UTC),
            "sync_enabled": not pc.sync_enabled,
        }
    )
    assert fingerprint(crm) == fingerprint(pc)


def _semantically_equal(name: str, left: Any, right: Any) -> bool:
    if name == "name":  # the outcome mark and surrounding spaces are not part of the name
        return strip_marks(left or "").strip() == strip_marks(right or "").strip()
    return bool(left == right)


@FAST
@given(referrals(), st.sampled_from(MAPPED_FIELDS), st.data())
def test_different_values_give_different_fingerprints(data: dict[str, Any], field: str, draws: st.DataObject) -> None:
    opportunity = _read(data)
    other = draws.draw(
        {
            "name": names,
            "deal_value": st.none() | many_digit_decimals,
            "currency": st.none() | st.sampled_from(("USD", "EUR")),
            "close_date": st.none() | st.dates(),
            "notes": st.none() | texts.map(str.strip).filter(bool),
            "customer_name": st.none() | texts.map(str.strip).filter(bool),
            "customer_address": st.builds(CustomerAddress, city=st.none() | st.just("Oslo"), country=st.just("NO")),
            "customer_contacts": st.lists(st.builds(Contact, email=st.sampled_from(("a@x.com", "b@x.com")))).map(tuple),
            "help_code": st.none() | st.sampled_from(HELP_CODES[1:]),
            "solution_ids": st.lists(solution_ids, max_size=3).map(tuple),
            "status": st.sampled_from(tuple(SUBSTATUS_OF)),
            "substatus": st.sampled_from(tuple(sub for subs in SUBSTATUS_OF.values() for sub in subs)),
            "status_reason": st.none() | texts.map(str.strip).filter(bool),
            "referral_id": st.sampled_from(("ref-1", "ref-2")),
            "referral_link": st.none() | st.just("https://example.test/r"),
            **{name: st.none() | texts.map(str.strip).filter(bool) for name in SERVICES_COSELL_MEMBERS},
            "purchase_intent": st.none() | st.sampled_from(("Yes", "No", "HaveNotDecided")),
        }[field]
    )
    changed = opportunity.model_copy(update={field: other})
    same = _semantically_equal(field, getattr(opportunity, field), other)
    assert (fingerprint(changed) == fingerprint(opportunity)) == same


# -- merge plan ------------------------------------------------------------------------------------------------

plain_texts = st.one_of(st.sampled_from(("Deal", "Ünïcödé \U0001f680", "a")), st.text(min_size=1, max_size=12)).map(
    lambda text: text.strip() or "x"
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": plain_texts,
    "deal_value": st.none() | exact_deal_values,
    "currency": st.none() | st.sampled_from(("USD", "EUR", "JPY")),
    "close_date": st.none() | st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31)),
    "notes": st.none() | plain_texts | long_texts,
    "customer_name": st.none() | plain_texts,
    "customer_address": st.builds(
        CustomerAddress, city=st.none() | st.sampled_from(("Oslo", "Köln")), country=st.sampled_from(("US", "DE"))
    ),
    "customer_contacts": st.lists(
        st.builds(
            Contact, last_name=st.none() | plain_texts, email=st.none() | st.sampled_from(("a@x.com", "b@y.org"))
        ),
        max_size=2,
    ).map(tuple),
    "help_code": st.none() | st.sampled_from(HELP_CODES[1:]),
    "solution_ids": st.lists(st.sampled_from(("SOL-1", "SOL-2", "SOL-3")), max_size=3, unique=True).map(tuple),
    "referral_id": st.sampled_from(("ref-1", "ref-2")),
    "referral_link": st.sampled_from(("https://pc.test/ref-1", "https://pc.test/ref-2")),
    "status_reason": st.none() | st.sampled_from(("Customer not interested", "Lost to a competitor")),
    **{name: st.none() | plain_texts for name in SERVICES_COSELL_MEMBERS},
    "purchase_intent": st.none() | st.sampled_from(("Yes", "No", "HaveNotDecided")),
}
owner_tables = st.one_of(
    st.just(DEFAULT_FIELD_OWNERS),
    st.fixed_dictionaries({name: st.sampled_from(("pc", "crm")) for name in MAPPED_FIELDS}),
)


def _edits(pair_choices: tuple[tuple[str, str], ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda changes, pair: {**changes, **({"status": pair[0], "substatus": pair[1]} if pair else {})},
        st.fixed_dictionaries({}, optional=FIELD_VALUES),
        st.none() | st.sampled_from(pair_choices),
    )


@st.composite
def as_the_crm_shows(draw: st.DrawFn, opportunity: Opportunity) -> Opportunity:
    """The CRM keeps its outcome mark on the name and may write 100 as 100.0000."""
    view: dict[str, Any] = {"name": mark(opportunity.name or "", draw(st.booleans()))}
    if opportunity.deal_value is not None and draw(st.booleans()):
        exponent = min(int(opportunity.deal_value.as_tuple().exponent), -4)
        view["deal_value"] = opportunity.deal_value.quantize(Decimal(1).scaleb(exponent))
    return opportunity.model_copy(update=view)


@st.composite
def states(draw: st.DrawFn) -> Opportunity:
    status, substatus = draw(st.sampled_from(VALID_PAIRS))
    return Opportunity(
        **{name: draw(strategy) for name, strategy in FIELD_VALUES.items()}, status=status, substatus=substatus
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Opportunity, Opportunity, Opportunity, Mapping[str, Side]]:
    """(base, pc, crm, owners): both sides start from what they agreed last time and change at random.
    Partner Center only moves along its own status table and a closed referral stays as it is; the CRM can
    be moved to any status it can show."""
    base = draw(states())
    reachable = tuple(
        pair
        for pair in VALID_PAIRS
        if transition_allowed(base.status, *pair) and not (is_closed(base.status) and pair[1] != base.substatus)
    )
    pc = base.model_copy(update=draw(_edits(reachable)))
    crm = draw(as_the_crm_shows(base.model_copy(update=draw(_edits(VALID_PAIRS)))))
    return base, pc, crm, draw(owner_tables)


def _plan(pc: Opportunity, crm: Opportunity, base: Mapping[str, object], owners: Mapping[str, Side]) -> Plan:
    return plan_merge(pc, crm, _stored(base), owners, pc.status, pc.substatus)


def _explained(plan: Plan, name: str) -> bool:
    """Whether the plan's notes say why ``name``, changed in the CRM, is not sent to Partner Center."""
    reasons = [note for note in plan.notes if "changed on both sides" not in note]
    return any(
        note.startswith(f"{name} cannot be changed in Partner Center")
        or (note.startswith("referral is closed") and name in note.split(": ", 1)[1].split(", "))
        or (name == "help_code" and "cannot be withdrawn" in note)
        or (name in STATUS_FIELDS and note.endswith("status not sent"))
        for note in reasons
    )


def _held_reason(plan: Plan, name: str) -> bool:
    """The CRM's decline reason waits while the plan sends Partner Center no closing status: Partner Center keeps a
    reason for a closed referral only."""
    closing = plan.agreed.get("status") == "Closed" and any(f in plan.to_pc for f in STATUS_FIELDS)
    return name == "status_reason" and not closing


def _loss_read_back(
    agreed: Mapping[str, object], pc: Mapping[str, object], crm: Mapping[str, object], name: str
) -> bool:
    """A deal both sides agreed is lost may show the CRM's decline state (Canceled; Closed Lost with a reason): the
    seller's guide sends a decline after acceptance as a loss, so that is how the loss reads back, not a change."""
    return (
        name == "substatus"
        and (crm["status"], crm["substatus"]) == ("Closed", "Declined")
        and agreed["substatus"] == "Lost"
        and pc["substatus"] == "Lost"
    )


def _changes(before: Mapping[str, object], after: Opportunity) -> set[str]:
    values = mapped_values(after)
    return {name for name in MAPPED_FIELDS if values[name] != before[name]}


@FAST
@given(states(), st.data(), owner_tables)
def test_no_change_on_either_side_plans_nothing(base: Opportunity, draws: st.DataObject, owners: dict) -> None:
    crm = draws.draw(as_the_crm_shows(base))
    plan = _plan(base, crm, mapped_values(base), owners)
    assert (plan.to_crm, plan.to_pc, plan.notes) == ([], [], [])
    assert plan.agreed == mapped_values(base)


@FAST
@given(scenarios())
def test_a_change_on_one_side_goes_to_the_other_side_and_never_back(scenario: tuple) -> None:
    base, pc, crm, owners = scenario
    agreed = mapped_values(base)
    plan = _plan(pc, crm, agreed, owners)
    pc_changed, crm_changed = _changes(agreed, pc), _changes(agreed, crm)
    pc_values, crm_values = mapped_values(pc), mapped_values(crm)
    for name in MAPPED_FIELDS:
        if pc_values[name] == crm_values[name]:
            assert name not in plan.changed, name
        elif name in pc_changed - crm_changed:
            assert name in plan.to_crm and name not in plan.to_pc, name
        elif name in crm_changed - pc_changed and name in PC_ONLY_FIELDS and pc_values[name] is not None:
            assert name in plan.to_crm and name not in plan.to_pc, name  # only Partner Center sets its id and link
        elif name in crm_changed - pc_changed and _held_reason(plan, name):
            assert name not in plan.changed, name  # the reason goes with the close, not before it
        elif name in crm_changed - pc_changed and _loss_read_back(agreed, pc_values, crm_values, name):
            assert name not in plan.changed, name
        elif name in crm_changed - pc_changed:
            assert name not in plan.to_crm, name
            assert (name in plan.to_pc) != _explained(plan, name), name


@FAST
@given(scenarios())
def test_both_sided_changes_follow_the_owner_table(scenario: tuple) -> None:
    base, pc, crm, owners = scenario
    agreed = mapped_values(base)
    plan = _plan(pc, crm, agreed, owners)
    pc_values, crm_values = mapped_values(pc), mapped_values(crm)
    conflicts = {name for name in _changes(agreed, pc) & _changes(agreed, crm) if pc_values[name] != crm_values[name]}
    for name in conflicts:
        if winner(name, owners) == "pc" and not (name in STATUS_FIELDS and name in plan.to_pc):
            assert name in plan.to_crm, name
        elif winner(name, owners) == "crm" and _held_reason(plan, name):
            assert name not in plan.changed, name
        elif winner(name, owners) == "crm":
            assert name not in plan.to_crm, name
            assert (name in plan.to_pc) != _explained(plan, name), name
        assert f"{name} changed on both sides" in plan.summary(), name
    if conflicts & set(STATUS_FIELDS) and any(name in plan.to_pc for name in STATUS_FIELDS):
        assert transition_allowed(pc.status, crm.status, crm.substatus)


@FAST
@given(scenarios())
def test_status_reaches_partner_center_only_along_allowed_transitions(scenario: tuple) -> None:
    base, pc, crm, owners = scenario
    plan = _plan(pc, crm, mapped_values(base), owners)
    if is_closed(pc.status):
        assert plan.to_pc == []
    sent = [name for name in STATUS_FIELDS if name in plan.to_pc]
    if sent:
        before = {"status": pc.status, "substatus": pc.substatus}
        check_transition(before, {**before, **{name: getattr(crm, name) for name in sent}})
        assert {**before, **{name: getattr(crm, name) for name in sent}} == {
            "status": crm.status,
            "substatus": crm.substatus,
        }
    if owners == DEFAULT_FIELD_OWNERS and any(name in plan.to_crm for name in STATUS_FIELDS):
        # The CRM never gets half a status: it would show a stage Partner Center does not have.
        written = {name: getattr(pc if name in plan.to_crm else crm, name) for name in STATUS_FIELDS}
        assert (written["status"], written["substatus"]) in VALID_PAIRS


@FAST
@given(scenarios())
def test_carrying_out_the_plan_converges(scenario: tuple) -> None:
    """Once both sides hold what the plan wrote, the next merge has nothing to send: no echo loops."""
    base, pc, crm, owners = scenario
    plan = _plan(pc, crm, mapped_values(base), owners)
    # Partner Center is sent the plan's status (a decline after acceptance goes as Lost), the CRM's value otherwise.
    sent = {name: plan.agreed[name] if name in STATUS_FIELDS else getattr(crm, name) for name in plan.to_pc}
    new_pc = pc.model_copy(update=sent)
    new_crm = crm.model_copy(update={name: getattr(pc, name) for name in plan.to_crm})
    again = _plan(new_pc, new_crm, plan.agreed, owners)
    assert (again.to_crm, again.to_pc) == ([], []), again.summary()
    # ``agreed`` is what Partner Center holds afterwards, whatever was kept back and explained.
    assert {name: plan.agreed[name] for name in MAPPED_FIELDS} == mapped_values(new_pc)


@FAST
@given(states(), st.sampled_from(("close_date", "currency")), st.data(), owner_tables)
def test_a_value_the_crm_filled_in_stays_in_the_crm_until_either_side_changes_it(
    base: Opportunity, field: str, draws: st.DataObject, owners: dict
) -> None:
    """Salesforce requires a close date and a CRM may default the currency: neither is the partner's data."""
    values = {"close_date": st.dates(), "currency": st.sampled_from(("USD", "EUR", "JPY"))}[field]
    default = draws.draw(values)
    pc = base.model_copy(update={field: None})
    crm = pc.model_copy(update={field: default, "name": mark(pc.name or "", True)})
    agreed = agreed_on_create(pc, crm)
    for _ in range(2):
        plan = _plan(pc, crm, agreed, owners)
        assert (plan.to_crm, plan.to_pc, plan.notes) == ([], [], [])
        agreed = plan.agreed
    from_pc = draws.draw(values.filter(lambda v: v != default))
    assert _plan(pc.model_copy(update={field: from_pc}), crm, agreed, owners).to_crm == [field]
    from_crm = draws.draw(values.filter(lambda v: v != default))
    assert _plan(pc, crm.model_copy(update={field: from_crm}), agreed, owners).to_pc == (
        [] if is_closed(pc.status) else [field]
    )


# -- audit text and marks --------------------------------------------------------------------------------------

stamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))


@FAST
@given(stamps, st.booleans(), texts | long_texts)
def test_an_audit_line_is_one_line_with_one_outcome_mark(at: datetime, success: bool, message: str) -> None:
    line = audit_line(at, success, message)
    assert line.splitlines() == [line]
    assert line.startswith(at.strftime("%Y-%m-%d %H:%M:%SZ") + " " + (CHECK if success else CROSS))


@FAST
@given(
    st.lists(st.tuples(stamps, st.booleans(), texts), min_size=1, max_size=30),
    st.none() | texts | long_texts,
    st.integers(0, 400),
)
def test_prepend_keeps_the_newest_first_within_the_limit(
    entries: list[tuple[datetime, bool, str]], existing: str | None, max_chars: int
) -> None:
    text = existing
    lines: list[str] = (existing or "").splitlines()
    for at, success, message in entries:
        line = audit_line(at, success, message)
        text = prepend(text, line, max_chars)
        assert len(text) <= max_chars
        if len(line) > max_chars:
            assert text == line[:max_chars]
            lines = text.splitlines()
            continue
        lines = [line, *lines]
        kept = text.split("\n")
        assert kept == lines[: len(kept)], "whole lines, newest first, oldest dropped"
        if len(kept) < len(lines):
            assert len(text) + 1 + len(lines[len(kept)]) > max_chars, "a line that fits is never dropped"
        lines = text.splitlines()


@FAST
@given(names, st.lists(st.booleans(), min_size=1, max_size=5))
def test_marks_never_stack(name: str, outcomes: list[bool]) -> None:
    marked = name
    for success in outcomes:
        marked = mark(marked, success)
    last = CHECK if outcomes[-1] else CROSS
    assert marked.endswith(last)
    assert strip_marks(marked) == strip_marks(name)
    assert not marked[:-1].rstrip().endswith(MARKS), "exactly one mark at the end"
    assert marked == mark(name, outcomes[-1])


# -- echoes ----------------------------------------------------------------------------------------------------------
_moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(_moments, _moments)
def test_a_webhook_names_the_version_we_wrote_exactly_when_the_moments_are_the_same(first, second):
    """ResourceChangeUtcDate (seven fractional digits, +00:00) against the updatedDateTime we recorded (six, Z):
    the same microsecond is an echo, any other moment is not (a real change must never be skipped)."""
    webhook = first.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    recorded = second.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    link = Link(referral_id="r", last_status="ok", pc_updated_at=recorded)
    assert is_echo(Job(KIND_REFERRAL, "r", version=webhook), link) == (first == second)
