"""``python -m shared dry-run`` shows what each side would receive and writes nothing: no Partner Center or CRM
write, no table row (link, state, lease, audit), no job. Both CRMs, end to end; a merge it previews is then
carried out by the worker exactly as shown."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from shared import wiring
from shared.__main__ import main
from shared.domain.checkmark import CROSS
from shared.ports import KIND_CRM, Job
from tests.e2e_stack import CRMS

ROOT = Path(__file__).resolve().parent.parent
TABLE_WRITES = (
    "create_table",
    "create_entity",
    "upsert_entity",
    "update_entity",
    "delete_entity",
    "submit_transaction",
)


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


@pytest.fixture
def table_writes(monkeypatch) -> Iterator[list[str]]:
    """Every table write the app attempts, even one that leaves the tables as they were (a lease taken and
    released, a table created that already existed)."""
    attempted: list[str] = []
    for name in TABLE_WRITES:
        original = getattr(TableClient, name)

        def spy(self: TableClient, *args: Any, _name: str = name, _original: Callable[..., Any] = original, **kw: Any):
            attempted.append(f"{_name} {self.table_name}")
            return _original(self, *args, **kw)

        monkeypatch.setattr(TableClient, name, spy)
    yield attempted


def _tables() -> dict[str, list[tuple[dict[str, Any], str]]]:
    store = wiring.container().store
    rows: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for table in (store.links, store.state, store.audit):
        try:
            rows[table.table_name] = sorted(
                ((dict(e), e.metadata["etag"]) for e in table.list_entities()), key=lambda row: row[1]
            )
        except ResourceNotFoundError:
            rows[table.table_name] = []  # not created yet: a dry run must not create it either
    return rows


class NothingWritten:
    """What the emulators, Azurite and the queue hold before the dry run, to compare with after it."""

    def __init__(self, stack, table_writes: list[str]) -> None:
        self.stack, self.table_writes = stack, table_writes
        self.pc_writes, self.crm_writes = stack.pc.writes, stack.crm_writes()
        self.tables, self.queued = _tables(), stack.host.queue.depth()
        self.referrals = stack.pc.referrals()
        table_writes.clear()

    def check(self) -> None:
        assert self.table_writes == []
        assert (self.stack.pc.writes, self.stack.crm_writes()) == (self.pc_writes, self.crm_writes)
        assert self.stack.pc.referrals() == self.referrals
        assert _tables() == self.tables
        assert self.stack.host.queue.depth() == self.queued


def _dry_run(capsys, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["dry-run", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _settle(stack) -> None:
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.poll()
    stack.host.drain()
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.host.drain()


def test_a_new_referral_shows_the_opportunity_that_would_be_created(stack, capsys, table_writes):
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    before = NothingWritten(stack, table_writes)
    shown = _dry_run(capsys, "--referral-id", referral["id"])
    before.check()
    assert (shown["action"], shown["direction"]) == ("create-opportunity", "pc->crm")
    opportunity = shown["opportunity"]
    assert opportunity["referral_id"] == referral["id"]
    assert opportunity["name"].startswith(referral["name"])
    assert opportunity["customer_name"] == referral["customerProfile"]["name"]
    assert stack.opportunities() == []


def test_a_flagged_opportunity_shows_the_referral_bodies_that_would_be_sent(stack, capsys, table_writes):
    crm_id = stack.seller().create_flagged()
    before = NothingWritten(stack, table_writes)
    shown = _dry_run(capsys, "--crm-id", crm_id)
    before.check()
    assert (shown["action"], shown["direction"], shown["crmId"]) == ("create-referral", "crm->pc", crm_id)
    body = shown["referralBody"]
    assert body["externalReferenceId"] == crm_id and body["type"] == "Shared"
    assert body["details"]["dealValue"] == 250000.0
    assert body["inviteContext"]["assistanceRequestCode"] == "ProofOfConceptOrDemo"
    assert shown["microsoftReferralBody"]["target"] == [{"type": "BusinessProfileLocation", "id": "msft"}]
    assert stack.pc.referrals() == []


def test_an_invalid_opportunity_shows_why_it_would_be_refused_and_marks_nothing(stack, capsys, table_writes):
    crm_id = stack.seller().create_flagged(country="USA", products=None)
    before = NothingWritten(stack, table_writes)
    shown = _dry_run(capsys, "--crm-id", crm_id)
    before.check()
    assert shown["action"] == "refused"
    assert "2-letter" in shown["message"] and "solution id" in shown["message"]
    assert CROSS not in (stack.opportunity(crm_id)["name"] or "")


def test_a_merge_shows_each_side_s_values_and_the_job_then_sends_exactly_those(stack, capsys, table_writes):
    crm_id = stack.seller().create_flagged(help_code=None)
    _settle(stack)
    [referral] = [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id]
    stack.seller().edit(crm_id, deal_value=321000.0)
    stack.pc.portal_update(referral["id"], {"details": {"notes": "Portal note"}}, raise_event=False)

    before = NothingWritten(stack, table_writes)
    shown = _dry_run(capsys, "--crm-id", crm_id)
    again = _dry_run(capsys, "--referral-id", referral["id"])
    before.check()
    assert (shown["action"], shown["referralId"], shown["crmId"]) == ("merge", referral["id"], crm_id)
    assert list(shown["toPartnerCenter"]) == ["deal_value"]
    assert float(shown["toPartnerCenter"]["deal_value"]) == 321000.0
    assert shown["toCrm"]["notes"] == "Portal note"
    assert set(shown["toCrm"]) == {"notes", "audit"}  # the name already carries its ✔: not sent again
    assert shown["message"] == "Updated from Partner Center: notes; to Partner Center: deal_value"
    assert (again["toCrm"]["notes"], again["toPartnerCenter"]) == ("Portal note", shown["toPartnerCenter"])

    stack.host.queue.enqueue(Job(KIND_CRM, crm_id, reason="test"))
    stack.host.drain()
    assert stack.pc.referral(referral["id"])["details"]["dealValue"] == 321000.0
    assert stack.opportunity(crm_id)["notes"] == "Portal note"
    updates = [e for e in wiring.container().store.audit_trail(referral["id"]) if e.action == "updated"]
    assert updates[0].message == shown["message"]  # the newest: the job's own


def test_a_synchronised_pair_shows_nothing_to_send(stack, capsys, table_writes):
    crm_id = stack.seller().create_flagged(help_code=None)
    _settle(stack)
    before = NothingWritten(stack, table_writes)
    shown = _dry_run(capsys, "--crm-id", crm_id)
    before.check()
    assert shown["action"] == "unchanged" and shown["message"] == "mapped fields already synchronised"


def test_an_unknown_record_is_reported_not_created(stack, capsys, table_writes):
    before = NothingWritten(stack, table_writes)
    shown = _dry_run(capsys, "--referral-id", "8b0c7d52-3f0e-4f1a-9a55-2b8f1f6a2c11")
    before.check()
    assert (shown["action"], shown["message"]) == ("skipped", "referral not found in Partner Center")


def test_dry_run_takes_exactly_one_record():
    for args in ([], ["--crm-id", "opp-1", "--referral-id", "8b0c7d52-3f0e-4f1a-9a55-2b8f1f6a2c11"]):
        with pytest.raises(SystemExit) as exited:
            main(["dry-run", *args])
        assert exited.value.code == 2
    result = subprocess.run(
        [sys.executable, "-m", "shared", "dry-run", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--crm-id" in result.stdout and "--referral-id" in result.stdout
