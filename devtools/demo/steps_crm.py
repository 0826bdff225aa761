"""Steps 5-8 of ``make demo``: the CRM (Dynamics 365 or Salesforce) -> Partner Center, through the real app.

The seller acts only through the CRM's own API (a :class:`~devtools.demo.crm.CrmSeller`: the Dataverse Web
API, or the Salesforce REST API with a session from the org's token endpoint). The CRM poll
runs on ``CRM_POLL_SCHEDULE`` (every 30 s by default); instead of waiting, the demo fires the
``poll_crm`` timer through the host's admin endpoint, as ``python -m devtools.localhost.runner fire poll_crm`` does.
Everything else is observed: the emulators' state and counters, Partner Center's webhook deliveries and
the app's own ``GET /api/status`` (last poll time, queue depth, poison count).

5. a seller flags an opportunity asking for Microsoft's help -> the partner's co-sell referral and
   Microsoft's referral on the same engagement; identifier, link, audit line and check mark written back;
6. the seller edits the deal value -> exactly one PATCH reaches Partner Center;
7. Partner Center's webhooks for our writes and one more poll -> no further write on either side;
8. an opportunity without a solution id -> cross mark and the reason in its Audit field, nothing sent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from shared.domain.checkmark import CHECK, CROSS

from .crm import CrmRecord, CrmSeller, latest_audit
from .observe import AuditLine, Observer, StepFailed

if TYPE_CHECKING:
    from .demo import Demo, Step

POLL_FUNCTION = "poll_crm"
SOLUTION_ID = "SOL-34104-EBB"
MICROSOFT_TARGET = "BusinessProfileLocation"
# Long enough for a write the app might still make after the last observation (a job runs in well
# under this on the local stack); any such write fails the step instead of going unnoticed.
LATE_WRITE_WINDOW = 0.5


class App:
    """The running function app, seen as an operator sees it: the admin and status endpoints."""

    def __init__(self, base: str) -> None:
        self.base = base

    def fire(self, function: str) -> None:
        """Run a timer function now (``POST /admin/functions/NAME``); the run itself is asynchronous."""
        response = requests.post(f"{self.base}/admin/functions/{function}", json={"input": ""}, timeout=10)
        if response.status_code != 202:
            raise StepFailed(f"firing {function} answered {response.status_code}: {response.text}")

    def status(self) -> dict[str, Any]:
        response = requests.get(f"{self.base}/api/status", timeout=10)
        if response.status_code != 200:
            raise StepFailed(f"GET /api/status answered {response.status_code}")
        return dict(response.json())


# -- probes ---------------------------------------------------------------------------------------------------
def _ours(observer: Observer, crm_id: str) -> Callable[[], dict[str, Any] | None]:
    """The partner's referral for the opportunity: Partner Center keys it by ``externalReferenceId``."""

    def probe() -> dict[str, Any] | None:
        found = [r for r in observer.referrals() if r.get("externalReferenceId") == crm_id]
        return found[0] if found else None

    return probe


def is_microsofts_referral(referral: dict[str, Any]) -> bool:
    return any(t.get("type") == MICROSOFT_TARGET for t in referral.get("target") or [])


def _microsofts(observer: Observer, engagement_id: str) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        found = [
            r for r in observer.referrals() if r.get("engagementId") == engagement_id and is_microsofts_referral(r)
        ]
        return found[0] if found else None

    return probe


def _written_back(
    observer: Observer, crm_id: str, accept: Callable[[CrmRecord], bool]
) -> Callable[[], CrmRecord | None]:
    def probe() -> CrmRecord | None:
        row = observer.opportunity(crm_id)
        return row if row is not None and accept(row) else None

    return probe


def _audited(observer: Observer, record_key: str, action: str, seen: int) -> Callable[[], AuditLine | None]:
    """The job's own crm->pc audit entry, the last thing a job writes: once it is there, the job has
    finished reading the opportunity back. A seller acting before that may race the app's write-back,
    which is not what these steps are about."""

    def probe() -> AuditLine | None:
        found = [e for e in observer.audit_trail(record_key) if e.direction == "crm->pc" and e.action == action]
        return found[-1] if len(found) > seen else None

    return probe


def queue_empty(app: App) -> Callable[[], dict[str, Any] | None]:
    """The app's queue is empty. Azure Queue Storage counts a message being processed as well, so an
    empty queue means every job enqueued so far has finished."""

    def probe() -> dict[str, Any] | None:
        status = app.status()
        return status if status["queue"]["depth"] == 0 else None

    return probe


@dataclass(frozen=True)
class Tally:
    """Writes counted on both sides at one moment. Each step starts from the tally the previous one ended
    on, so a late write between two steps is still counted against one of them."""

    pc: dict[str, int]
    crm_total: int
    by_seller: int

    def pc_since(self, earlier: Tally, operation: str = "writes") -> int:
        return self.pc.get(operation, 0) - earlier.pc.get(operation, 0)

    def app_crm_since(self, earlier: Tally) -> int:
        """CRM writes made by the app (everything but the seller's own)."""
        return (self.crm_total - earlier.crm_total) - (self.by_seller - earlier.by_seller)


def _tally(observer: Observer, seller: CrmSeller) -> Tally:
    return Tally(observer.pc_counters(), len(observer.writes()), seller.writes)


def _one_write_back(observer: Observer, after: Tally, before: Tally) -> None:
    """A job writes its outcome back to the opportunity once; a second write would be an echo that step 7
    could not see any more, because it happened before step 7 started counting."""
    written = after.app_crm_since(before)
    if written != 1:
        raise StepFailed(
            f"expected one write-back to the opportunity, the app made {written} {observer.crm.store} writes"
        )


def _fire_poll(demo: Demo, app: App, step_started: float, step: Step) -> None:
    app.fire(POLL_FUNCTION)
    demo.observed(step, f"{POLL_FUNCTION} timer fired (admin API answered 202)", time.monotonic() - step_started)


# -- the steps ------------------------------------------------------------------------------------------------
def run_crm_scenario(demo: Demo, observer: Observer, seller: CrmSeller, base: str) -> None:
    app = App(base)
    start = _tally(observer, seller)
    crm_id, referral_id, microsoft_id, created = _flag_with_help(demo, observer, seller, app, start)
    edited = _edit_deal_value(demo, observer, seller, app, crm_id, referral_id, created)
    _echoes_settle(demo, observer, seller, app, (referral_id, microsoft_id), start, edited)
    _invalid_opportunity(demo, observer, seller, app)


def _flag_with_help(
    demo: Demo, observer: Observer, seller: CrmSeller, app: App, before: Tally
) -> tuple[str, str, str, Tally]:
    step = demo.step("a seller flags an opportunity asking for Microsoft's help -> co-sell referrals + write-back")
    started = time.monotonic()
    crm_id = seller.create_opportunity(
        name="Fabrikam - analytics platform on Azure",
        customer="Fabrikam",
        country="US",
        deal_value=180000.0,
        products=SOLUTION_ID,
        help_needed="ProofOfConceptOrDemo",
        contact=("Dana", "Birch", "dana.birch@fabrikam.example"),
    )
    demo.observed(step, "seller saved it: Sync = Yes, help requested", time.monotonic() - started)
    _fire_poll(demo, app, started, step)
    referral, took = demo.wait_for("the co-sell referral in Partner Center", _ours(observer, crm_id), started)
    demo.observed(step, "co-sell referral created in Partner Center", took)
    microsoft, took = demo.wait_for(
        "Microsoft's referral on the same engagement", _microsofts(observer, referral["engagementId"]), started
    )
    demo.observed(step, "Microsoft's referral on the same engagement", took)

    def complete(row: CrmRecord) -> bool:
        return (
            row["referral_id"] == referral["id"]
            and referral["id"] in (row["referral_link"] or "")
            and "Co-sell referral created in Partner Center" in latest_audit(row)
            and row["name"].endswith(CHECK)
        )

    row, took = demo.wait_for(
        "the Referral Identifier, link, audit line and check mark on the opportunity",
        _written_back(observer, crm_id, complete),
        started,
    )
    demo.observed(step, f"identifier, link, audit and {CHECK} written back", took)
    _, took = demo.wait_for("the job's entry in SyncAudit", _audited(observer, referral["id"], "created", 0), started)
    demo.observed(step, "job recorded in SyncAudit (created)", took)
    after = _tally(observer, seller)
    creates, writes = after.pc_since(before, "create"), after.pc_since(before)
    if creates != 2 or writes != 2:
        raise StepFailed(f"expected 2 referrals created in Partner Center and no other write, saw {writes} writes")
    _one_write_back(observer, after, before)
    solutions = ", ".join(str(t.get("id")) for t in referral.get("target") or [])
    step.notes.append(f"opportunity {crm_id}")
    step.notes.append(f"-> co-sell referral {referral['id']} ({referral.get('type')}, {solutions})")
    step.notes.append(f"-> Microsoft's referral {microsoft['id']}, same engagement {referral['engagementId'][:8]}…")
    step.notes.append(f"Referral Link {row['referral_link']}")
    step.notes.append(f'Audit "{latest_audit(row)}"')
    step.notes.append(f"Partner Center writes: 2 creates; {observer.crm.store} writes by the app: 1 (the write-back)")
    step.ok = True
    return crm_id, str(referral["id"]), str(microsoft["id"]), after


def _edit_deal_value(
    demo: Demo, observer: Observer, seller: CrmSeller, app: App, crm_id: str, referral_id: str, before: Tally
) -> Tally:
    step = demo.step("the seller edits the deal value -> exactly one PATCH reaches Partner Center")
    old_value = float(observer.referral(referral_id)["details"]["dealValue"])
    updates = len([e for e in observer.audit_trail(referral_id) if (e.direction, e.action) == ("crm->pc", "updated")])
    new_value = old_value + 60000.0
    started = time.monotonic()
    seller.set_deal_value(crm_id, new_value)
    demo.observed(step, f"seller saved the new {observer.crm.deal_value_label}", time.monotonic() - started)
    _fire_poll(demo, app, started, step)

    def followed() -> dict[str, Any] | None:
        found = observer.referral(referral_id)
        return found if float(found["details"]["dealValue"]) == new_value else None

    _, took = demo.wait_for(f"the referral's dealValue to become {new_value:,.0f}", followed, started)
    demo.observed(step, "referral updated in Partner Center", took)
    _, took = demo.wait_for(
        "the job's entry in SyncAudit", _audited(observer, referral_id, "updated", updates), started
    )
    demo.observed(step, "job recorded in SyncAudit (updated)", took)
    after = _tally(observer, seller)
    patches, writes = after.pc_since(before, "patch"), after.pc_since(before)
    if patches != 1 or writes != 1:
        raise StepFailed(f"expected exactly one PATCH to Partner Center, saw {patches} PATCH among {writes} writes")
    # CRM_AUDIT_LINE=changes (the default): the seller's own edit, sent on, is no news for the opportunity.
    written = after.app_crm_since(before)
    if written != 0:
        raise StepFailed(f"expected no write-back for the seller's own edit, the app made {written} writes")
    step.notes.append(f"dealValue {old_value:,.0f} -> {new_value:,.0f}")
    step.notes.append(
        f"Partner Center writes: 1 PATCH; {observer.crm.store} writes by the app: 0 (CRM_AUDIT_LINE=changes)"
    )
    step.ok = True
    return after


def _echoes_settle(
    demo: Demo,
    observer: Observer,
    seller: CrmSeller,
    app: App,
    referral_ids: tuple[str, ...],
    first: Tally,
    before: Tally,
) -> None:
    step = demo.step("echoes settle: Partner Center's webhooks for our writes + one more poll -> zero writes")
    started = time.monotonic()

    # Partner Center raised these for the app's own creates and PATCH; every one is submitted before the
    # write it reports returns, so all of them exist by now. Only their delivery may still be under way.
    def delivered() -> list[dict[str, Any]] | None:
        found = observer.deliveries_for(*referral_ids)
        return found if found and all(d["status"] != "pending" for d in found) else None

    deliveries, took = demo.wait_for("the webhooks for our writes", delivered, started)
    refused = [f"{d['event']} answered {d['status_code']}" for d in deliveries if d["status_code"] != 202]
    if refused:
        raise StepFailed("webhooks not accepted: " + ", ".join(refused))
    events = Counter(str(d["event"]) for d in deliveries)
    demo.observed(step, f"{len(deliveries)} webhooks answered 202", took)
    _, took = demo.wait_for("the webhooks' jobs to finish", queue_empty(app), started)
    demo.observed(step, "their jobs processed (queue empty)", took)
    last_poll = app.status().get("lastPollAt")
    _fire_poll(demo, app, started, step)

    def polled() -> dict[str, Any] | None:
        status = app.status()
        return status if status.get("lastPollAt") != last_poll and status["queue"]["depth"] == 0 else None

    _, took = demo.wait_for("one more poll and its jobs", polled, started)
    demo.observed(step, "poll ran, its jobs processed (queue empty)", took)
    time.sleep(LATE_WRITE_WINDOW)
    poison = app.status()["queue"]["poison"]
    after = _tally(observer, seller)
    store = observer.crm.store
    pc_writes, crm_writes = after.pc_since(before), after.app_crm_since(before)
    if pc_writes or crm_writes or poison:
        raise StepFailed(
            f"the echoes changed something: {pc_writes} Partner Center writes, {crm_writes} {store} writes, "
            f"{poison} jobs in the poison queue"
        )
    step.notes.append("webhooks for our writes: " + ", ".join(f"{n} {event}" for event, n in events.items()))
    step.notes.append(f"since the write-back in step 6: 0 Partner Center writes, 0 {store} writes, poison queue empty")
    calls = ", ".join(f"{after.pc_since(first, op)} {op}" for op in ("create", "patch"))
    step.notes.append(f"Partner Center writes for this deal in all: {after.pc_since(first)} ({calls})")
    step.ok = True


def _invalid_opportunity(demo: Demo, observer: Observer, seller: CrmSeller, app: App) -> None:
    step = demo.step(f"an invalid opportunity (no solution id) -> {CROSS} and the reason in its Audit, nothing sent")
    before = _tally(observer, seller)
    started = time.monotonic()
    crm_id = seller.create_opportunity(
        name="Tailspin - data estate review",
        customer="Tailspin Toys",
        country="US",
        deal_value=90000.0,
        products=None,
        help_needed="CustomerTechnicalArchitecture",
        contact=("Ravi", "Iyer", "ravi.iyer@tailspin.example"),
    )
    demo.observed(step, "seller saved it: Sync = Yes, no Products", time.monotonic() - started)
    _fire_poll(demo, app, started, step)

    def refused(row: CrmRecord) -> bool:
        return row["name"].endswith(CROSS) and "Not sent to Partner Center" in latest_audit(row)

    row, took = demo.wait_for(
        f"the {CROSS} and the reason on the opportunity", _written_back(observer, crm_id, refused), started
    )
    demo.observed(step, f"{CROSS} and the reason written to the opportunity", took)
    _, took = demo.wait_for("the job to finish", queue_empty(app), started)
    demo.observed(step, "job processed (queue empty)", took)
    sent = [r["id"] for r in observer.referrals() if r.get("externalReferenceId") == crm_id]
    pc_writes = _tally(observer, seller).pc_since(before)
    if sent or pc_writes:
        raise StepFailed(f"something reached Partner Center: referrals {sent}, {pc_writes} writes")
    step.notes.append(f'opportunity {crm_id} "{row["name"]}"')
    step.notes.append(f'Audit "{latest_audit(row)}"')
    step.notes.append("Partner Center writes: 0")
    step.ok = True
