"""Table Storage operations per job (issue 10): an echo costs one read, a job with nothing to do writes no
audit row, and the pause state is read at most every few seconds, not once per job. Counted on the real
clients talking to Azurite."""

from __future__ import annotations

import pytest

from shared import wiring
from shared.ports import KIND_REFERRAL, Job
from tests.test_crm_to_pc import _ours, _settle

OPERATIONS = (
    "get_entity",
    "create_entity",
    "update_entity",
    "upsert_entity",
    "delete_entity",
    "query_entities",
    "list_entities",
    "submit_transaction",  # one request, however many rows it writes
)


class TableOps:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[str] = []
        store = wiring.container().store
        self.state_table: str = store.state.table_name
        for client in (store.links, store.state, store.audit):
            for name in OPERATIONS:
                original = getattr(client, name)

                def counted(*args, _name=name, _original=original, _table=client.table_name, **kwargs):
                    self.made.append(f"{_table}.{_name}")
                    return _original(*args, **kwargs)

                monkeypatch.setattr(client, name, counted)


def test_an_echo_costs_one_table_read(stack, monkeypatch):
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.poll()
    stack.host.drain()
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()
    stack.poll()  # sees our write-back: one job, for the version we wrote
    assert stack.host.queue.depth() == 1
    ops = TableOps(monkeypatch)
    stack.host.drain()
    assert len(ops.made) <= 1, ops.made
    assert _ours(stack, crm_id)


def test_a_job_with_nothing_to_do_writes_no_audit_row_and_health_is_read_once(stack, monkeypatch):
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    _settle(stack)
    for _ in range(3):  # repeated events without a version: each job reads both sides and finds them equal
        stack.host.queue.enqueue(Job(KIND_REFERRAL, referral["id"], reason="test"))
    ops = TableOps(monkeypatch)
    stack.host.drain()
    audit_writes = [op for op in ops.made if op.endswith("create_entity") and "audit" in op.lower()]
    assert audit_writes == []
    # Per job: the link before the lease (to name it) and under it (fresh), the lease taken and released;
    # the health row at most once for the three jobs, within its cache time.
    assert len(ops.made) <= 3 * 4 + 1, ops.made
    state_reads = [op for op in ops.made if "get_entity" in op and "state" in op.lower()]
    assert len(state_reads) <= 1, ops.made


def test_a_crm_to_partner_center_create_costs_one_write_for_its_intent(stack, monkeypatch):
    # Issue 10's budget for the create intent (see referral_creation.py): one state write, no extra read (the
    # intent shares the create-failure row the job reads anyway). Before it, the create cost 11 operations:
    # the health and create-failure rows, the link twice, the lease taken and released, the link and its CRM
    # index row written twice (pending, then synchronised), and the audit row.
    stack.pc.dispatch_mode = "off"
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.poll()
    ops = TableOps(monkeypatch)
    run = stack.host.drain(max_rounds=1)
    assert run.failed == 0, run.errors
    assert _ours(stack, crm_id)
    assert len(ops.made) <= 12, ops.made
    state_merges = [op for op in ops.made if ".upsert_entity" in op and op.startswith(ops.state_table)]
    assert len(state_merges) == 1, ops.made


def test_an_update_job_costs_seven_table_operations_on_either_side(stack, monkeypatch):
    # The link and its CRM index row are written in one transaction, and a CRM job reads the link the index
    # named before its lease instead of the index again: 7 operations (2 link reads, the lease taken and
    # released, the pending and final link writes, the audit row). Before: 9 for a Partner Center update and
    # 10 for a CRM update (the index written on its own after each link write, and read twice).
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    _settle(stack)
    ops = TableOps(monkeypatch)
    stack.pc.portal_update(referral["id"], {"details": {**referral["details"], "dealValue": 4321.0}})
    stack.pc.dispatcher.wait_idle(timeout=10)
    assert stack.host.queue.depth() == 1
    stack.host.drain(max_rounds=1)
    assert len(ops.made) <= 7, ops.made
    _settle(stack)
    crm_id = wiring.container().store.get_link(referral["id"]).crm_id
    stack.seller().edit(crm_id, deal_value=999.0)
    stack.poll()
    assert stack.host.queue.depth() == 1
    ops.made.clear()
    stack.host.drain(max_rounds=1)
    assert len(ops.made) <= 7, ops.made
    assert stack.pc.referral(referral["id"])["details"]["dealValue"] == 999.0
