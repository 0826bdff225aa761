"""An org not yet upgraded by ``setup-crm --apply`` keeps syncing, on both CRMs, end to end.

This version maps columns an org set up by an earlier one lacks: Microsoft's side of the engagement, Partner
Center's current fields and the decline reason. Dataverse refuses a ``$select`` naming a column the table lacks and
Salesforce a SOQL field the object lacks, so before this every read failed and every job retried into the poison
queue. Now those fields are ``optional`` in the shipped mappings: the adapter learns the org's columns with one
metadata request per process, leaves the missing ones out of reads and writes, and /api/status and
``mapping check`` name them; once ``setup-crm --apply`` has added them, a new process uses them. A missing column
the connector cannot work without is reported by name with the command that adds it, and nothing is poisoned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.dataverse import DataverseEmulator
from emulators.dataverse.schema import INTEGRATION_APP_ID
from emulators.package_mapping import CURRENT_AND_MICROSOFT_FIELDS, column
from emulators.salesforce import SalesforceEmulator
from emulators.salesforce.schema import USER_ID, USERS
from shared import wiring
from shared.__main__ import main
from shared.crm.dynamics.mapping import load_mapping
from shared.crm.mapping import MappingError
from tests.console_http import serve
from tests.crm_view import DV_TOKEN, stored_row
from tests.e2e_stack import CRMS
from tests.test_crm_to_pc import _flag_and_sync, _ours, _settle
from tests.test_current_fields import SERVICES

OPTIONAL = (*CURRENT_AND_MICROSOFT_FIELDS, "status_reason")
SETUP = "setup-crm --apply"
IDENTITY = {
    "dynamics": ["--application-id", INTEGRATION_APP_ID],
    "salesforce": ["--run-as-user", USERS[USER_ID][1]],
}
ACCEPTED = {
    "status": "Active",
    "substatus": "Accepted",
    "team": [{"firstName": "Morgan", "lastName": "Lee", "email": "morgan.lee@microsoft.example"}],
    "trackingInfo": {"microsoftMsxId": "7-3FJ9K2QX1"},
}


@pytest.fixture
def dv() -> Iterator[DataverseEmulator]:
    """An organisation of its own: the test takes columns off it."""
    emulator = DataverseEmulator(required_token=DV_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def sf() -> Iterator[SalesforceEmulator]:
    emulator = SalesforceEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _columns(crm: str, names: tuple[str, ...] = OPTIONAL) -> list[str]:
    return [column(crm, name) for name in names]


def _take_off(stack, names: tuple[str, ...] = OPTIONAL) -> list[str]:
    """The org as an earlier version's setup-crm left it: without the columns of ``names``."""
    removed = _columns(stack.crm_name, names)
    emulator: Any = stack.view.emulator
    if stack.crm_name == "dynamics":
        table = emulator.tables["opportunities"]
        for name in removed:
            del table.columns[name]
            table.choices.pop(name, None)
    else:
        for name in removed:
            assert emulator.objects["Opportunity"].remove(name) is not None, name
    return removed


def _missing(stack, names: list[str]) -> list[str]:
    emulator: Any = stack.view.emulator
    if stack.crm_name == "dynamics":
        return [name for name in names if name not in emulator.tables["opportunities"].columns]
    return [name for name in names if emulator.objects["Opportunity"].field(name) is None]


def _describes(stack) -> int:
    """Requests for the opportunity's column list: Dataverse's attribute metadata, Salesforce's describe."""
    wanted = (
        "EntityDefinitions(LogicalName='opportunity')/Attributes?"
        if stack.crm_name == "dynamics"
        else "/sobjects/Opportunity/describe"
    )
    return sum(1 for method, path in stack.view.emulator.request_log if method == "GET" and wanted in path)


def _microsoft_acts(stack, referral_id: str) -> None:
    before = len(stack.pc.deliveries())
    response = requests.post(f"{stack.pc.url}/_emulator/referrals/{referral_id}/microsoft", json=ACCEPTED, timeout=10)
    assert response.status_code == 200, response.text
    stack.pc.wait_for_deliveries(before + 1, timeout=10)


def _no_poison(stack) -> None:
    assert stack.host.queue.poison_depth() == 0
    assert stack.status()["poison"]["depth"] == 0


def test_an_org_without_the_new_columns_still_syncs_both_ways_and_status_names_them(make_stack, crm, caplog):
    stack = make_stack(crm)
    removed = _take_off(stack)

    # Partner Center -> CRM: a referral with the current fields becomes an opportunity without them.
    referral = stack.pc.seed_referral(kind="cosell", **SERVICES)
    stack.deliver_and_drain(1)
    _settle(stack)
    [row] = stack.opportunities()
    assert row["referral_id"] == referral["id"]
    assert row["name"].startswith(referral["name"])
    _no_poison(stack)

    # CRM -> Partner Center: a seller's flagged opportunity becomes a co-sell referral, and an edit travels.
    crm_id = _flag_and_sync(stack)
    _settle(stack)
    shared = _ours(stack, crm_id)
    stack.seller().edit(crm_id, name="Northwind - renamed by the seller")
    stack.poll()
    stack.host.drain()
    assert stack.pc.referral(shared["id"])["name"] == "Northwind - renamed by the seller"

    # Microsoft's side arrives: the columns are not there, so nothing is written to them and nothing fails.
    _microsoft_acts(stack, shared["id"])
    stack.host.drain()
    assert not set(removed) & set(stored_row(stack, crm_id))
    _no_poison(stack)

    status = stack.status()["crm"]
    assert sorted(status["columnsNotInOrg"]) == sorted(removed)
    assert status["requiredColumnsNotInOrg"] == []
    assert SETUP in status["problem"] and all(name in status["problem"] for name in removed)
    warnings = [r.getMessage() for r in caplog.records if "left out of the sync" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per process, not per job
    assert all(name in warnings[0] for name in removed)
    with serve(stack) as server:  # the operator page says the same
        page = requests.get(server.console_url(), timeout=10)
    assert page.status_code == 200, page.text
    assert all(name in page.text for name in removed) and SETUP in page.text


def test_mapping_check_names_the_missing_optional_columns(make_stack, crm, capsys):
    stack = make_stack(crm)
    removed = _take_off(stack, ("microsoft_status", "solution_area"))
    assert main(["mapping", "check"]) == 1
    out = capsys.readouterr().out
    for name in removed:
        [line] = [line for line in out.splitlines() if f"'{name}'" in line]
        assert "optional" in line and SETUP in line, line


def test_after_setup_crm_apply_a_new_process_uses_the_columns(make_stack, crm, capsys):
    stack = make_stack(crm)
    removed = _take_off(stack)
    crm_id = _flag_and_sync(stack)
    _settle(stack)
    shared = _ours(stack, crm_id)
    assert stack.status()["crm"]["columnsNotInOrg"]

    assert main(["setup-crm", *IDENTITY[crm]]) == 1  # check mode: the columns are missing
    capsys.readouterr()
    assert main(["setup-crm", "--apply", *IDENTITY[crm]]) == 0, capsys.readouterr().out
    assert _missing(stack, removed) == []
    wiring.reset()  # a new process: the app restarted after the upgrade

    assert stack.status()["crm"] == {
        "columnsNotInOrg": [],
        "requiredColumnsNotInOrg": [],
        "problem": None,
        "fix": None,
    }
    _microsoft_acts(stack, shared["id"])
    stack.host.drain()
    row = stored_row(stack, crm_id)
    assert row[column(crm, "microsoft_status")] == "Active/Accepted"
    assert row[column(crm, "microsoft_crm_id")] == "7-3FJ9K2QX1"
    _no_poison(stack)


def test_the_org_is_described_once_per_process_not_per_job(make_stack, crm):
    stack = make_stack(crm)
    _take_off(stack)
    stack.view.emulator.request_log.clear()
    for _ in range(3):
        stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(3)
    _settle(stack)
    assert len(stack.opportunities()) == 3
    stack.status()
    assert _describes(stack) == 1

    wiring.reset()  # a new process describes the org again, once
    stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(4)
    stack.status()
    assert _describes(stack) == 2


def test_a_missing_required_column_is_named_with_the_fix_and_jobs_wait_for_it(make_stack, crm, capsys):
    stack = make_stack(crm, QUOTA_PAUSE_SECONDS="1")
    [audit] = _take_off(stack, ("audit",))
    referral = stack.pc.seed_referral(kind="cosell")
    stack.pc.wait_for_deliveries(1, timeout=10)

    run = stack.host.drain()
    assert run.failed == 0, run.errors  # no attempt counts towards the poison queue
    assert stack.host.queue.depth() == 1  # the job waits in the queue, nothing is lost
    assert stack.opportunities() == []
    status = stack.status()["crm"]
    assert status["requiredColumnsNotInOrg"] == [audit]
    assert audit in status["problem"] and SETUP in status["problem"]

    # The fix needs no restart: a missing required column is not remembered, the waiting job checks again.
    assert main(["setup-crm", "--apply", *IDENTITY[crm]]) == 0, capsys.readouterr().out
    time.sleep(1.5)
    run = stack.host.drain()
    assert run.failed == 0, run.errors
    assert [row["referral_id"] for row in stack.opportunities()] == [referral["id"]]
    assert stack.host.queue.depth() == 0


@pytest.mark.parametrize("name", ["referral_id", "sync_enabled", "audit", "customer_name"])
def test_a_field_the_connector_needs_cannot_be_marked_optional(tmp_path: Path, name):
    override = tmp_path / "mapping.toml"
    override.write_text(f"[fields.{name}]\noptional = true\n", encoding="utf-8")
    with pytest.raises(MappingError, match=rf"fields\.{name}\.optional: {name} cannot be optional"):
        load_mapping(override)
