"""Steps 9-11 of ``make demo``: the life of the deal Microsoft shared in step 2, on the chosen CRM.

Step 2 shows the co-sell referral arriving in the CRM on hold (New/Pending in Partner Center). Then:

9. the seller accepts it in the CRM, as the README's seller's guide says (Dynamics 365: Status Reason In
   Progress; Salesforce: the Qualification stage) -> the poll -> Partner Center shows Active/Accepted;
10. Microsoft's seller accepts Microsoft's side of the engagement (the Partner Center emulator's control API,
    as Microsoft would in its own tools) -> ``related-referral-*`` webhook -> the opportunity shows Microsoft's
    status, seller, MSX id and notes;
11. the seller closes the deal as won in the CRM -> the poll -> Partner Center shows Closed/Won.

Each step prints what a viewer would see on both sides, and fails when its outcome is not observed in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .crm import CrmRecord, CrmSeller, latest_audit, microsoft_summary
from .observe import Observer, StepFailed
from .steps_crm import App, Tally, _audited, _fire_poll, _tally, _written_back, queue_empty

if TYPE_CHECKING:
    from .run import Demo, Step

MICROSOFT_SELLER = {"firstName": "Morgan", "lastName": "Lee", "email": "morgan.lee@microsoft.example"}
MICROSOFT_ACCEPTS = {
    "status": "Active",
    "substatus": "Accepted",
    "team": [MICROSOFT_SELLER],
    "trackingInfo": {"microsoftMsxId": "7-3FJ9K2QX1"},
    "inviteContext": {"notes": "Customer is in our FY27 plan; I will bring the Azure architect."},
}


def status_of(referral: dict[str, Any]) -> str:
    return f"{referral.get('status')}/{referral.get('substatus')}"


def _in_status(observer: Observer, referral_id: str, wanted: str) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        found = observer.referral(referral_id)
        return found if status_of(found) == wanted else None

    return probe


def _settled(demo: Demo, observer: Observer, app: App, referral_id: str, step: Step, started: float) -> None:
    """Partner Center's webhooks for the referral are delivered and every job has finished, so the next action
    does not race the app's own write-back."""

    def delivered() -> list[dict[str, Any]] | None:
        found = observer.deliveries_for(referral_id)
        return found if all(d["status"] != "pending" for d in found) else None

    demo.wait_for("Partner Center's webhooks for the referral", delivered, started)
    _, took = demo.wait_for("the app's jobs to finish (queue empty)", queue_empty(app), started)
    demo.observed(step, "webhooks for our write processed (queue empty)", took)


def _one_patch(observer: Observer, seller: CrmSeller, before: Tally) -> Tally:
    after = _tally(observer, seller)
    patches, writes = after.pc_since(before, "patch"), after.pc_since(before)
    if patches != 1 or writes != 1:
        raise StepFailed(f"expected exactly one PATCH to Partner Center, saw {patches} PATCH among {writes} writes")
    return after


def _seller_moves_deal(
    demo: Demo,
    observer: Observer,
    seller: CrmSeller,
    app: App,
    ids: tuple[str, str],
    action: tuple[str, Callable[[str], str]],
    wanted: tuple[str, str],
) -> None:
    """The seller changes the deal's state in the CRM; the poll carries it to Partner Center as one PATCH."""
    referral_id, crm_id = ids
    what, act = action
    pc_status, crm_state = wanted
    store = observer.crm.store
    step = demo.step(f"the seller {what} in {store} -> Partner Center shows {pc_status}")
    updates = len([e for e in observer.audit_trail(referral_id) if (e.direction, e.action) == ("crm->pc", "updated")])
    before = _tally(observer, seller)
    started = time.monotonic()
    did = act(crm_id)
    demo.observed(step, f"seller set {did}", time.monotonic() - started)
    _fire_poll(demo, app, started, step)
    referral, took = demo.wait_for(
        f"the referral to show {pc_status}", _in_status(observer, referral_id, pc_status), started
    )
    demo.observed(step, f"Partner Center shows {pc_status}", took)
    audited, took = demo.wait_for(
        "the job's entry in SyncAudit", _audited(observer, referral_id, "updated", updates), started
    )
    demo.observed(step, "job recorded in SyncAudit (updated)", took)
    _settled(demo, observer, app, referral_id, step, started)
    _one_patch(observer, seller, before)
    row = observer.opportunity(crm_id)
    if row is None or row["state"] != crm_state:
        raise StepFailed(
            f"the opportunity should still show {crm_state}, it shows {row['state'] if row else 'nothing'}"
        )
    step.notes.append(f'{store}: "{row["name"]}" {row["state"]}')
    step.notes.append(f'{store} Audit: "{latest_audit(row)}"')
    step.notes.append(f"Partner Center: referral {referral_id} {status_of(referral)} (1 PATCH)")
    step.notes.append(f'SyncAudit: {audited.direction} {audited.action} "{audited.message}"')
    step.ok = True


def _microsoft_accepts(demo: Demo, observer: Observer, seller: CrmSeller, app: App, ids: tuple[str, str]) -> None:
    referral_id, crm_id = ids
    store = observer.crm.store
    step = demo.step(f"Microsoft accepts its side in Partner Center -> {store} shows Microsoft's status and seller")
    before = _tally(observer, seller)
    deliveries = len(observer.deliveries_for(referral_id))
    started = time.monotonic()
    microsoft = observer.microsoft_acts(referral_id, MICROSOFT_ACCEPTS)
    demo.observed(step, f"Microsoft's referral {status_of(microsoft)}, seller assigned", time.monotonic() - started)

    def related() -> dict[str, Any] | None:
        found = observer.deliveries_for(referral_id)[deliveries:]
        done = [d for d in found if d["event"].startswith("related-referral-") and d["status"] != "pending"]
        return done[-1] if done else None

    delivery, took = demo.wait_for("the related-referral webhook", related, started)
    if delivery["status_code"] != 202:
        raise StepFailed(f"webhook answered {delivery['status_code']} ({delivery['status']}), expected 202")
    demo.observed(step, f"signed {delivery['event']} webhook answered 202", took)
    seller_name = f"{MICROSOFT_SELLER['firstName']} {MICROSOFT_SELLER['lastName']}"

    def shown(row: CrmRecord) -> bool:
        side = row["microsoft"]
        return side.get("microsoft_status") == "Active/Accepted" and side.get("microsoft_seller_name") == seller_name

    row, took = demo.wait_for(
        f"Microsoft's status and seller on the opportunity in {store}", _written_back(observer, crm_id, shown), started
    )
    demo.observed(step, f"{store} shows Microsoft's status and seller", took)
    _, took = demo.wait_for("the job to finish (queue empty)", queue_empty(app), started)
    demo.observed(step, "job processed (queue empty)", took)
    after = _tally(observer, seller)
    if after.pc_since(before):
        raise StepFailed(
            f"Microsoft's side is for the CRM only, yet the app wrote {after.pc_since(before)} times to Partner Center"
        )
    step.notes.append(f"{store}: {microsoft_summary(row)}")
    step.notes.append(f'{store} Audit: "{latest_audit(row)}"')
    step.notes.append(
        f"Partner Center: Microsoft's referral {microsoft['id']} {status_of(microsoft)}; ours still "
        f"{status_of(observer.referral(referral_id))}; 0 writes by the app"
    )
    step.ok = True


def run_deal_lifecycle(
    demo: Demo, observer: Observer, seller: CrmSeller, app: App, referral_id: str, crm_id: str
) -> None:
    """Accept -> Microsoft accepts -> won, on the deal Microsoft shared in step 2."""
    side = observer.crm
    ids = (referral_id, crm_id)
    accept = ("accepts the referral", seller.accept)
    _seller_moves_deal(demo, observer, seller, app, ids, accept, ("Active/Accepted", side.shows("Active", "Accepted")))
    _microsoft_accepts(demo, observer, seller, app, ids)
    win = ("closes the deal won", seller.win)
    _seller_moves_deal(demo, observer, seller, app, ids, win, ("Closed/Won", side.shows("Closed", "Won")))
