"""Salesforce end to end, where Salesforce differs from Dynamics 365: sessions that the org ends mid-run
(the connector signs in again, once), the org's daily API allocation running out mid-run (all CRM
work pauses with a clear status and audit entry, nothing is lost, and it completes once the quota is
back), and orgs with a single currency (no CurrencyIsoCode, no CurrencyType). The stack signs in with the
client credentials flow, as in production."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

from emulators.salesforce import SalesforceEmulator
from shared import wiring
from shared.__main__ import main
from shared.domain.checkmark import CHECK
from shared.domain.mapping import mapped_values, referral_to_opportunity
from shared.domain.referral import Referral
from tests.e2e_stack import Stack


def _emulator(stack: Stack) -> SalesforceEmulator:
    emulator = getattr(stack.view, "emulator", None)
    assert isinstance(emulator, SalesforceEmulator)
    return emulator


def _seed(stack: Stack, count: int) -> list[dict]:
    """Referrals for different customers (one account and one contact each)."""
    referrals = []
    for i in range(count):
        customer = f"Contoso Subsidiary {i}"
        profile = {
            "name": customer,
            "team": [{"firstName": "Avery", "lastName": f"Howard {i}", "email": f"avery{i}@contoso.example"}],
        }
        referrals.append(
            stack.pc.seed_referral(kind="cosell", name=f"{customer} - lab analytics", customerProfile=profile)
        )
    stack.pc.wait_for_deliveries(count, timeout=10)
    return referrals


def _assert_synced_exactly_once(stack: Stack, referrals: list[dict]) -> None:
    """One opportunity per referral, every mapped field as Partner Center has it, no account or contact twice."""
    by_referral: dict[str, int] = {}
    for row in stack.opportunities():
        if row["referral_id"]:
            by_referral[row["referral_id"]] = by_referral.get(row["referral_id"], 0) + 1
    for referral in referrals:
        assert by_referral.get(referral["id"]) == 1, (referral["id"], by_referral)
    reader = stack.crm()
    for referral in referrals:
        stored = reader.find_by_referral_id(referral["id"])
        assert stored is not None
        expected = reader.stored_form(referral_to_opportunity(Referral.model_validate(referral)))
        assert mapped_values(stored) == mapped_values(expected)
    names = [a["name"] for a in stack.view.accounts()]
    assert len(names) == len(set(names)), names
    emails = stack.view.contact_emails()
    assert len(emails) == len(set(emails)), emails


def test_session_expiring_mid_run_costs_exactly_one_reauthentication(make_stack):
    stack = make_stack(crm="salesforce")
    sf = _emulator(stack)
    referrals = _seed(stack, 4)
    crm_id = stack.seller().create_flagged(help_code=None)
    stack.view.reset_counters()

    first = stack.host.drain(max_rounds=1)
    assert (first.processed, first.failed) == (1, 0), first.errors
    assert sf.counters()["tokenRequests"]["client_credentials"] == 1

    sf.expire_sessions()  # the org ends every session (timeout policy, an admin) in the middle of the run
    rest = stack.host.drain(parallel=2)  # two workers hold the dead token at the same time
    assert (rest.processed, rest.failed) == (3, 0), rest.errors
    stack.poll()  # the CRM -> Partner Center direction on the new session (and the echoes of our creates)
    crm_run = stack.host.drain()
    assert crm_run.failed == 0, crm_run.errors

    counters = sf.counters()
    assert counters["tokenRequests"] == {"client_credentials": 2, "jwt_bearer": 0, "refused": 0}
    assert wiring.container().crm.auth.token_requests == 2
    assert 1 <= counters["sessionRefusals"] <= 2  # each request in flight with the old token, refused once
    _assert_synced_exactly_once(stack, referrals)
    for referral in referrals:
        actions = stack.audit_actions(referral["id"])
        assert actions[-1] == "created" and actions.count("created") == 1  # then only no-op echoes
        assert set(actions) <= {"created", "unchanged"}
    ours = [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id]
    assert len(ours) == 1
    assert stack.opportunity(crm_id)["referral_id"] == ours[0]["id"]
    assert stack.status()["queue"] == {"depth": 0, "poison": 0}


def _drain_until(stack: Stack, done, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        run = stack.host.drain()
        assert run.failed == 0, run.errors
        if done():
            return
        assert time.monotonic() < deadline, "the paused work did not complete after the quota came back"
        time.sleep(0.2)


def test_daily_quota_running_out_mid_run_pauses_and_completes_once_restored(make_stack, capsys):
    stack = make_stack(crm="salesforce", QUOTA_PAUSE_SECONDS="3")
    sf = _emulator(stack)
    referrals = _seed(stack, 4)
    crm_id = stack.seller().create_flagged(help_code=None)  # flagged before the quota ran out; not polled yet
    stack.view.reset_counters()

    first = stack.host.drain(max_rounds=1)
    assert (first.processed, first.failed) == (1, 0), first.errors
    _, maximum = sf.api_usage()
    # The day's allocation runs out half-way through the next record: its lookup (one composite call of queries)
    # is the last call allowed, and its create is refused.
    sf.set_quota(used=maximum - 1)

    run = stack.host.drain()
    assert (run.processed, run.failed) == (3, 0), run.errors  # deferred, not failed
    assert sf.counters()["quotaRefusals"] == 1  # one refusal stops everything: no call after it
    assert len(stack.opportunities()) == 2  # the first record and the seller's; the rest waits

    status = stack.status()
    assert status["paused"] is not None
    assert "daily API request allocation is used up" in status["paused"]["reason"]
    until = datetime.fromisoformat(status["paused"]["until"])
    assert datetime.now(UTC) < until <= datetime.now(UTC) + timedelta(seconds=3)  # QUOTA_PAUSE_SECONDS
    assert status["queue"] == {"depth": 3, "poison": 0}  # the deferred jobs, invisible until the pause ends
    assert main(["status"]) == 0
    assert json.loads(capsys.readouterr().out)["paused"]["reason"] == status["paused"]["reason"]

    paused = [r["id"] for r in referrals if "paused" in stack.audit_actions(r["id"])]
    assert len(paused) == 1  # the job that hit the limit records the pause once
    trail = wiring.container().store.audit_trail(paused[0])
    assert trail[0].action == "paused" and "quota used up" in trail[0].message and "paused until" in trail[0].message

    assert stack.status()["paused"] is not None  # (still within the pause)
    sf.reset_counters()
    stack.poll()  # skipped while paused: not a single Salesforce call
    assert stack.host.drain().processed == 0  # nothing is visible before the pause ends
    assert sf.counters()["requests"] == 0
    assert stack.host.queue.depth() == 3

    sf.restore_quota()  # the rolling 24 hours have passed
    _drain_until(stack, lambda: stack.status()["paused"] is None and stack.host.queue.depth() == 0)
    stack.poll()  # the poll resumes too and finds the seller's opportunity
    crm_run = stack.host.drain()
    assert crm_run.failed == 0, crm_run.errors

    _assert_synced_exactly_once(stack, referrals)
    assert sf.counters()["objects"]["Opportunity"]["creates"] == 3  # the three that waited, once each
    assert sf.counters()["quotaRefusals"] == 0
    for referral in referrals:
        assert stack.audit_actions(referral["id"]).count("created") == 1
    ours = [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id]
    assert len(ours) == 1 and stack.opportunity(crm_id)["referral_id"] == ours[0]["id"]
    final = stack.status()
    assert final["paused"] is None
    assert final["queue"] == {"depth": 0, "poison": 0}
    assert final["links"]["total"] == 5 and final["links"]["ok"] == 5


def _seller_opportunity_in_one_currency(sf: SalesforceEmulator) -> str:
    """What a seller enters in a single-currency org: an amount, and no currency (there is nothing to choose)."""
    account = sf.seed("Account", {"Name": "Fabrikam", "BillingCountry": "US", "BillingPostalCode": "98052"})[0]["Id"]
    contact = sf.seed("Contact", {"LastName": "Ng", "Email": "cy@fabrikam.example", "AccountId": account})[0]["Id"]
    crm_id = sf.seed(
        "Opportunity",
        {
            "Name": "Fabrikam - analytics",
            "StageName": "Qualification",
            "CloseDate": "2027-03-31",
            "Amount": 180000.0,
            "AccountId": account,
            "Sync_with_Partner_Center__c": True,
            "Products__c": "SOL-34104-EBB",
        },
    )[0]["Id"]
    sf.seed("OpportunityContactRole", {"OpportunityId": crm_id, "ContactId": contact, "IsPrimary": True})
    return str(crm_id)


def test_a_single_currency_org_syncs_both_ways_in_the_org_currency(make_stack):
    stack = make_stack(crm="salesforce")
    sf = _emulator(stack)
    sf.configure(multi_currency=False)  # before the connector's first call; the next stack's reset undoes it
    start = len(sf.request_log)

    # Partner Center -> Salesforce: the referral's deal value lands; the org's currency is the referral's.
    referral = stack.pc.seed_referral(kind="cosell")
    assert referral["details"]["currency"] == "USD"
    stack.deliver_and_drain(1)
    [row] = stack.opportunities()
    assert row["referral_id"] == referral["id"] and row["name"].endswith(CHECK)
    assert row["deal_value"] == referral["details"]["dealValue"]
    reader = stack.crm()
    stored = reader.find_by_referral_id(referral["id"])
    assert stored is not None and stored.currency == "USD"
    expected = reader.stored_form(referral_to_opportunity(Referral.model_validate(referral)))
    assert mapped_values(stored) == mapped_values(expected)
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 99000, "notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    assert stack.opportunity(row["id"])["deal_value"] == 99000
    assert stack.audit_actions(referral["id"])[:2] == ["updated", "created"]

    # Salesforce -> Partner Center: a seller's opportunity has no currency field, yet passes validation.
    crm_id = _seller_opportunity_in_one_currency(sf)
    stack.poll()
    run = stack.host.drain()
    assert run.failed == 0, run.errors
    [ours] = [r for r in stack.pc.referrals() if r.get("externalReferenceId") == crm_id]
    assert ours["details"]["currency"] == "USD" and ours["details"]["dealValue"] == 180000.0
    mine = stack.opportunity(crm_id)
    assert mine["referral_id"] == ours["id"] and mine["name"].endswith(CHECK), mine["audit"]
    sf.update_record("Opportunity", crm_id, {"Amount": 200000.0})
    stack.poll()
    assert stack.host.drain().failed == 0
    assert stack.pc.referral(ours["id"])["details"]["dealValue"] == 200000.0  # type: ignore[index]

    # The echoes of all that settle without another write: nothing flips back and forth.
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.poll()
    assert stack.host.drain().failed == 0
    stack.view.reset_counters()
    stack.pc.dispatcher.wait_idle(timeout=10)
    stack.poll()
    assert stack.host.drain().failed == 0
    assert stack.crm_writes() == 0
    for referral_id in (referral["id"], ours["id"]):
        assert set(stack.audit_actions(referral_id)) <= {"created", "updated", "unchanged"}
    named = [path for _, path in sf.request_log[start:] if re.search(r"\bCurrency(IsoCode|Type)\b", path)]
    assert named == []  # the connector never named what a single-currency org lacks
