"""Table Storage limits: rows we write fit by construction, and a row Table Storage refuses is a failure of
that record (audit line, cross mark, reason in the CRM's Audit column), never a poisoned job.

End to end for Dynamics 365 and Salesforce (Partner Center emulator, CRM emulator, Azurite, the real app),
plus the encoder of agreed values and the store's checks against Azurite.

Azurite refuses a string property over 32,768 UTF-16 units (PropertyValueTooLarge) and a key over 1 KiB,
but accepts any entity size; the store checks every row against our own, stricter contract first.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import wiring
from shared.crm.dynamics.mapping import default_mapping
from shared.domain.bounded import (
    AGREED_MAX_UNITS,
    DIGEST_KEY,
    ELLIPSIS,
    ERROR_MAX_UNITS,
    cap_utf16,
    digest_marker,
    encode_agreed,
    is_digest,
    same_value,
    utf16_units,
)
from shared.domain.checkmark import CHECK, CROSS
from shared.domain.errors import PermanentError, StorageRejected
from shared.domain.mapping import mapped_values
from shared.domain.merge import CRM_DEFAULTS, plan_merge
from shared.domain.opportunity import MAPPED_FIELDS, Opportunity
from shared.ports import AuditEntry, Link
from shared.store import tables
from shared.store.tables import LINK_PARTITION, TableSyncStore, limit_problems, safe_key
from tests.e2e_stack import CRMS, Stack

DEFAULT_FIELD_OWNERS = default_mapping().owners()  # who wins a conflict, as the shipped mapping declares it

# ~7,500 Japanese characters: written as \uXXXX escapes they were 45,000 characters, over the property limit.
JAPANESE = ("顧客はデータ基盤の移行を検討しており、来期の予算で承認される見込みです。" * 300)[:7500]
# 7,500 characters outside the Basic Multilingual Plane: 15,000 UTF-16 units, 90,000 characters when escaped.
EMOJI = "🚀📈🤝" * 2500
# Within Salesforce's 32,000-character Description, but more than a link row's share for the agreed values.
LONG_JAPANESE = ("見積書の改訂版を来週送付します。導入範囲は三拠点に拡大。" * 1200)[:30000]


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _settle(stack: Stack) -> None:
    """Deliver the webhooks of our own writes and poll the CRM, as production would."""
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.poll()
    stack.host.drain()
    assert stack.host.queue.depth() == 0


def _stored_link_row(referral_id: str) -> dict[str, Any]:
    store = wiring.container().store
    return dict(store.links.get_entity(LINK_PARTITION, safe_key(referral_id)))


# -- end to end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("notes", [JAPANESE, EMOJI], ids=["japanese", "emoji"])
def test_long_non_ascii_notes_sync_and_keep_syncing_both_ways(stack, notes):
    referral = stack.pc.seed_referral(kind="cosell", details={"notes": notes})
    stack.deliver_and_drain(1)
    row = stack.opportunities()[0]
    assert row["notes"] == notes
    assert row["name"].endswith(CHECK)
    link = wiring.container().store.get_link(referral["id"])
    assert link is not None and link.last_status == "ok" and link.crm_id == row["id"]
    assert json.loads(link.last_values)["notes"] == notes  # the text itself, unescaped
    assert limit_problems(_stored_link_row(referral["id"])) == []
    assert stack.audit_actions(referral["id"]) == ["created"]

    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 99000}})
    stack.deliver_and_drain(2)
    row = stack.opportunity(row["id"])
    assert row["deal_value"] == 99000 and row["notes"] == notes
    assert row["audit"].splitlines()[0].endswith("Updated from Partner Center: deal_value")

    stack.seller().edit(row["id"], notes=notes + " 追記")
    _settle(stack)
    assert stack.pc.referral(referral["id"])["details"]["notes"] == notes + " 追記"
    assert wiring.container().store.get_link(referral["id"]).last_status == "ok"
    assert stack.host.queue.poison_depth() == 0


def test_notes_too_long_for_the_link_row_are_kept_as_a_digest_and_still_sync(stack):
    referral = stack.pc.seed_referral(kind="cosell", details={"notes": LONG_JAPANESE})
    stack.deliver_and_drain(1)
    crm_id = stack.opportunities()[0]["id"]
    assert stack.opportunity(crm_id)["notes"] == LONG_JAPANESE
    stored = json.loads(wiring.container().store.get_link(referral["id"]).last_values)
    assert is_digest(stored["notes"]) and same_value(LONG_JAPANESE, stored["notes"])
    assert limit_problems(_stored_link_row(referral["id"])) == []

    # An unrelated change on either side leaves the notes alone, and the echoes write nothing.
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 99000}})
    stack.deliver_and_drain(2)
    row = stack.opportunity(crm_id)
    assert row["deal_value"] == 99000 and row["notes"] == LONG_JAPANESE
    assert row["audit"].splitlines()[0].endswith("Updated from Partner Center: deal_value")
    stack.seller().edit(crm_id, deal_value=123000.0)
    _settle(stack)
    details = stack.pc.referral(referral["id"])["details"]
    assert details["dealValue"] == 123000.0 and details["notes"] == LONG_JAPANESE
    _settle(stack)
    stack.pc.reset_counters()
    stack.view.reset_counters()
    _settle(stack)
    assert stack.pc.writes == 0 and stack.crm_writes() == 0

    # A change of the notes themselves is seen through the digest, from either side.
    changed_in_pc = "改" + LONG_JAPANESE[1:]
    stack.pc.portal_update(referral["id"], {"details": {"notes": changed_in_pc}})
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    assert stack.opportunity(crm_id)["notes"] == changed_in_pc
    changed_in_crm = changed_in_pc[:-1] + "了"
    stack.seller().edit(crm_id, notes=changed_in_crm)
    _settle(stack)
    assert stack.pc.referral(referral["id"])["details"]["notes"] == changed_in_crm
    assert stack.opportunity(crm_id)["name"].endswith(CHECK)
    assert stack.host.queue.poison_depth() == 0


@pytest.mark.parametrize("when", ["creation", "update"])
def test_a_row_storage_refuses_fails_the_record_with_audit_and_cross(stack, monkeypatch, when):
    # The agreed values fit their own budget, but the link row is held to a smaller limit than usual: the
    # refusal any row over Table Storage's limits gets, whatever made it too large.
    monkeypatch.setattr(tables, "MAX_ENTITY_BYTES", 16 * 1024)
    notes = JAPANESE + JAPANESE[:2500]
    if when == "creation":
        referral = stack.pc.seed_referral(kind="cosell", details={"notes": notes})
        stack.deliver_and_drain(1)  # the job finishes: no exception, nothing left to poison
        deliveries = 1
    else:
        referral = stack.pc.seed_referral(kind="cosell", details={"notes": "短いメモ"})
        stack.deliver_and_drain(1)
        stack.pc.portal_update(referral["id"], {"details": {"notes": notes}})
        stack.deliver_and_drain(2)
        deliveries = 2

    row = stack.opportunities()[0]
    assert row["notes"] == notes  # both sides hold it; only our bookkeeping was refused
    assert row["name"] == f"{referral['name']} {CROSS}"
    reason = row["audit"].splitlines()[0]
    assert "Table Storage" in reason and "link row" in reason and "LastValues" in reason
    trail = wiring.container().store.audit_trail(referral["id"])
    assert trail[0].action == "failed" and "link row" in trail[0].message and notes[:20] not in trail[0].message
    link = wiring.container().store.get_link(referral["id"])
    assert link.last_status == "failed" and link.crm_id == row["id"]
    # The failure did not write the refused values again: the row keeps what was agreed before.
    assert link.last_values is None if when == "creation" else json.loads(link.last_values)["notes"] == "短いメモ"
    assert stack.host.queue.poison_depth() == 0

    stack.view.reset_counters()
    stack.pc.redeliver(referral["id"])  # the same data again: no retry loop
    stack.deliver_and_drain(deliveries + 1)
    assert stack.crm_writes() == 0

    monkeypatch.setattr(tables, "MAX_ENTITY_BYTES", 64 * 1024)
    stack.seller().edit(row["id"], deal_value=123000.0)
    _settle(stack)
    details = stack.pc.referral(referral["id"])["details"]
    assert details["dealValue"] == 123000.0 and details["notes"] == notes
    assert stack.opportunity(row["id"])["name"] == f"{referral['name']} {CHECK}"
    assert wiring.container().store.get_link(referral["id"]).last_status == "ok"


def test_a_refused_link_after_creating_the_referral_fails_the_opportunity_once(stack, monkeypatch):
    monkeypatch.setattr(tables, "MAX_ENTITY_BYTES", 16 * 1024)
    notes = JAPANESE + JAPANESE[:2500]
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.seller().edit(crm_id, notes=notes)
    stack.poll()
    stack.host.drain()
    [referral] = stack.pc.referrals()
    assert referral["details"]["notes"] == notes
    row = stack.opportunity(crm_id)
    assert row["referral_id"] == referral["id"] and row["name"].endswith(CROSS)
    assert "link row" in row["audit"].splitlines()[0]
    trail = wiring.container().store.audit_trail(referral["id"])
    [failed] = [e for e in trail if e.action == "failed"]
    assert "link row" in failed.message and {e.action for e in trail} <= {"failed", "unchanged"}
    link = wiring.container().store.get_link(referral["id"])
    assert link.last_status == "failed" and link.crm_id == crm_id and link.last_values is None

    _settle(stack)  # the webhook of the new referral and the poll of our cross mark
    stack.pc.reset_counters()
    stack.view.reset_counters()
    _settle(stack)
    assert stack.pc.writes == 0 and stack.crm_writes() == 0
    assert stack.host.queue.poison_depth() == 0

    monkeypatch.setattr(tables, "MAX_ENTITY_BYTES", 64 * 1024)
    stack.seller().edit(crm_id, deal_value=123000.0)
    _settle(stack)
    assert stack.pc.referral(referral["id"])["details"]["dealValue"] == 123000.0
    assert stack.opportunity(crm_id)["name"].endswith(CHECK)


# -- the encoder of agreed values ------------------------------------------------------------------------

_TEXT = st.tuples(st.text(max_size=12), st.integers(0, 4000)).map(lambda t: t[0] * t[1])
_SCALAR = st.none() | st.booleans() | st.integers() | _TEXT
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=12,
)
_AGREED = st.fixed_dictionaries(
    {name: _JSON for name in MAPPED_FIELDS},
    optional={CRM_DEFAULTS: st.dictionaries(st.sampled_from(MAPPED_FIELDS), _JSON, max_size=4)},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=_AGREED, other=_JSON)
def test_encoded_agreed_values_always_fit_and_compare_only_with_their_own_value(values, other):
    text = encode_agreed(values)
    assert utf16_units(text) <= AGREED_MAX_UNITS
    decoded = json.loads(text)
    assert set(decoded) == set(values)
    for name, value in values.items():
        assert same_value(value, decoded[name])
        if other != value:
            assert not same_value(other, decoded[name])


def test_small_values_are_stored_whole_and_unescaped():
    values = {"name": "Contoso 案件 🚀", "notes": "sha256:" + "0" * 64, "deal_value": "12.5"}
    assert json.loads(encode_agreed(values)) == values
    assert "案件 🚀" in encode_agreed(values)
    assert not is_digest(values["notes"])  # text that looks like a digest is data


def test_only_the_largest_texts_become_digests():
    values = {"name": "Contoso", "notes": "日" * 30000, "customer_name": "顧客" * 20}
    decoded = json.loads(encode_agreed(values))
    assert decoded["name"] == "Contoso" and decoded["customer_name"] == "顧客" * 20
    assert decoded["notes"] == digest_marker("日" * 30000)
    assert same_value("日" * 30000, decoded["notes"])
    assert not same_value("日" * 29999, decoded["notes"])
    assert not same_value(None, decoded["notes"])
    assert not same_value({DIGEST_KEY: decoded["notes"][DIGEST_KEY][:-1] + "0"}, decoded["notes"])


def test_many_small_texts_become_one_digest_of_their_list():
    contacts = [{"email": f"person{i}@contoso.example", "first_name": "名前"} for i in range(2000)]
    values = {"customer_contacts": contacts, CRM_DEFAULTS: {"close_date": "2027-03-31"}}
    decoded = json.loads(encode_agreed(values, max_units=3000))
    assert is_digest(decoded["customer_contacts"]) and same_value(contacts, decoded["customer_contacts"])
    assert not same_value(contacts[:-1], decoded["customer_contacts"])
    assert decoded[CRM_DEFAULTS] == {"close_date": "2027-03-31"}  # looked up by field name: never a digest


def test_digests_already_in_the_values_are_kept():
    marker = digest_marker("日" * 30000)
    values = {"notes": "x" * 30000, CRM_DEFAULTS: {"notes": marker}}
    decoded = json.loads(encode_agreed(values))
    assert decoded[CRM_DEFAULTS]["notes"] == marker and same_value("日" * 30000, decoded[CRM_DEFAULTS]["notes"])


def _opportunity(**fields: Any) -> Opportunity:
    base = {"name": "Contoso", "deal_value": 100, "currency": "USD", "referral_id": "r-1", "status": "Active"}
    return Opportunity(**{**base, **fields})


def test_merge_compares_with_a_digest_as_with_the_value_itself():
    agreed = mapped_values(_opportunity(notes=LONG_JAPANESE))
    base = json.loads(encode_agreed(agreed))
    assert is_digest(base["notes"])
    owners = DEFAULT_FIELD_OWNERS

    def plan(pc: Opportunity, crm: Opportunity):
        return plan_merge(pc, crm, base, owners, "Active", None)

    same = _opportunity(notes=LONG_JAPANESE)
    assert plan(same, _opportunity(notes=LONG_JAPANESE, deal_value=200)).to_pc == ["deal_value"]
    assert plan(_opportunity(notes="新しい"), same).to_crm == ["notes"]
    assert plan(same, _opportunity(notes="新しい")).to_pc == ["notes"]
    unchanged = plan(same, _opportunity(notes=LONG_JAPANESE))
    assert unchanged.changed == [] and unchanged.notes == []


# -- capped texts ------------------------------------------------------------------------------------------


@given(text=_TEXT, limit=st.integers(1, 5000))
def test_capped_text_fits_in_utf16_units_and_never_splits_a_character(text, limit):
    capped = cap_utf16(text, limit)
    assert utf16_units(capped) <= limit
    if capped != text:
        assert capped.endswith(ELLIPSIS) and text.startswith(capped[:-1])
    capped.encode("utf-8")  # a lone surrogate would not encode


def test_python_slicing_was_not_enough():
    emoji = "😀" * 30000
    assert utf16_units(emoji[:30000]) == 60000
    assert utf16_units(cap_utf16(emoji, 30000)) <= 30000


# -- the store against Azurite ------------------------------------------------------------------------------


@pytest.fixture
def store(azurite, storage_names) -> TableSyncStore:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    return TableSyncStore(
        service, storage_names["SYNC_LINKS_TABLE"], storage_names["SYNC_STATE_TABLE"], storage_names["SYNC_AUDIT_TABLE"]
    )


def _raw(table: Any, partition: str, row: str) -> dict[str, Any]:
    return dict(table.get_entity(partition, row))


def test_link_with_long_texts_is_saved_within_the_limits(store):
    referral_id = str(uuid.uuid4())
    # The values as rows written before this change held them: every character escaped.
    legacy = json.dumps({"notes": "日" * 5400, "name": "Contoso"}, sort_keys=True)
    link = Link(
        referral_id=referral_id,
        crm_id=str(uuid.uuid4()),
        pc_fingerprint="a" * 64,
        crm_fingerprint="b" * 64,
        last_status="failed",
        last_error="Not synchronised: " + "😀" * 20000,
        last_values=legacy,
    )
    store.save_link(link)
    row = _raw(store.links, LINK_PARTITION, safe_key(referral_id))
    assert limit_problems(row) == []
    assert utf16_units(row["LastError"]) <= ERROR_MAX_UNITS and row["LastError"].endswith(ELLIPSIS)
    assert same_value("日" * 5400, json.loads(store.get_link(referral_id).last_values)["notes"])


def test_audit_texts_are_capped_in_utf16_units_and_extra_stays_json(store):
    store.append_audit(
        AuditEntry(
            record_key="r-1",
            action="failed",
            direction="pc->crm",
            message="😀" * 30000,
            extra={"detail": "😀" * 30000, "quote": '"' * 20000},
        )
    )
    [entry] = store.audit_trail("r-1")
    assert utf16_units(entry.message) <= tables.AUDIT_MESSAGE_MAX_UNITS
    assert entry.message.startswith("😀" * 100)
    assert isinstance(entry.extra, dict) and "truncated" in entry.extra
    [raw] = list(store.audit.query_entities("PartitionKey eq 'r-1'"))
    assert limit_problems(dict(raw)) == []


def test_a_row_over_the_entity_limit_is_refused_before_it_is_sent(store):
    # Azurite would take this row (it does not check entity sizes); Azure and our contract do not.
    with pytest.raises(StorageRejected) as refused:
        store.set_state("big", {"Reason": "理由" * 10000, "Detail": "詳細" * 10000})
    assert refused.value.code == "EntityTooLarge" and isinstance(refused.value, PermanentError)
    assert "state row big" in str(refused.value) and "理由" not in str(refused.value)
    assert store.get_state("big") is None


def test_a_refusal_from_table_storage_becomes_storage_rejected(store, monkeypatch):
    # With our own check out of the way, Azurite itself refuses the property (HTTP 400).
    monkeypatch.setattr(tables, "MAX_TEXT_UNITS", 10**6)
    monkeypatch.setattr(tables, "MAX_ENTITY_BYTES", 10**7)
    with pytest.raises(StorageRejected) as refused:
        store.set_state("too-long", {"Reason": "理由" * 17000})
    assert refused.value.status == 400 and refused.value.code == "PropertyValueTooLarge"
    assert "Reason" in str(refused.value) and "理由" not in str(refused.value)
