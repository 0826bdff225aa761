"""The checks at the end of a chaos run, made once the faults are off and the system has settled.

Partner Center and the CRM are read through the emulators' control APIs (everything they hold, nothing
hidden by a fault) and each pair is compared through the app's own mapping: the referral as
``shared.domain.mapping`` maps it into the CRM's stored form, against the opportunity as the app's CRM
adapter reads it. Sync bookkeeping comes from the app's own Table Storage store and queues in Azurite.

* duplicates: a second partner referral for one opportunity (by ``externalReferenceId``), a second referral
  for Microsoft on one engagement, a second opportunity for one referral, a second account for one
  customer, a second contact for one e-mail address;
* lost updates: a pair whose mapped fields differ between the sides, or whose edited fields ended on a
  value no edit rule explains (see :mod:`devtools.chaos.scenario`);
* stuck: a valid record without its counterpart or whose link row is not ``ok``, a deliberately invalid
  record not refused as it should be, a job still in the queue;
* poisoned (transient): a job in the poison queue for anything but a deliberately invalid record.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.mapping import mapped_values, referral_to_opportunity
from shared.domain.referral import Referral
from shared.domain.referral_rules import is_microsoft_copy
from shared.store.queue import decode_job

from .actors import CrmSnapshot
from .scenario import CRM, PC, Plan, Record

COMPARED = (
    "name",
    "deal_value",
    "currency",
    "close_date",
    "notes",
    "customer_name",
    "help_code",
    "solution_ids",
    "status",
    "substatus",
    "referral_id",
    "referral_link",
)
DETAIL_LIMIT = 12


@dataclass
class Findings:
    duplicates: int = 0
    lost_updates: int = 0
    stuck: int = 0
    poisoned_transient: int = 0
    refused_as_expected: int = 0
    poisoned_invalid: int = 0
    details: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, text: str) -> None:
        self.details.setdefault(kind, []).append(text)

    def ok(self) -> bool:
        return not (self.duplicates or self.lost_updates or self.stuck or self.poisoned_transient)


def _final(opportunity_values: dict[str, Any], name: str) -> str | None:
    if name == "status":
        return f"{opportunity_values['status']}/{opportunity_values['substatus']}"
    value = opportunity_values[name]
    return None if value is None else str(value)


class Verifier:
    def __init__(
        self, plan: Plan, container: Any, referrals: list[dict[str, Any]], crm: CrmSnapshot, t0: float
    ) -> None:
        self.plan = plan
        self.t0 = t0
        # Audit times are wall-clock; edit times are monotonic: both are reported as seconds into the run.
        self.started = datetime.now(UTC) - timedelta(seconds=time.monotonic() - t0)
        self.c = container
        self.findings = Findings()
        parsed = [Referral.model_validate(raw) for raw in referrals]
        self.partner = [r for r in parsed if not is_microsoft_copy(r.target)]
        self.microsoft = [r for r in parsed if is_microsoft_copy(r.target)]
        self.crm = crm

    def run(self) -> Findings:
        self._duplicates()
        for record in self.plan.records:
            if record.valid:
                self._valid(record)
            else:
                self._invalid(record)
        self._queues()
        return self.findings

    # -- duplicates --------------------------------------------------------------------------------------
    def _count(self, what: str, counts: Counter[str]) -> None:
        for key, n in counts.items():
            if n > 1:
                self.findings.duplicates += n - 1
                self.findings.note("duplicates", f"{n} {what} {key}")

    def _duplicates(self) -> None:
        self._count(
            "partner referrals for opportunity",
            Counter(r.external_reference_id for r in self.partner if r.external_reference_id),
        )
        self._count("referrals for Microsoft on engagement", Counter(r.engagement_id or "" for r in self.microsoft))
        self._count(
            "opportunities for referral", Counter(o.referral_id for o in self.crm.opportunities if o.referral_id)
        )
        self._count("accounts named", Counter(self.crm.account_names))
        self._count("contacts with e-mail", Counter(e.lower() for e in self.crm.contact_emails))

    # -- one record --------------------------------------------------------------------------------------
    def _referral_for(self, record: Record) -> Referral | None:
        if record.origin == PC:
            return next((r for r in self.partner if r.id == record.referral_id), None)
        return next((r for r in self.partner if r.external_reference_id == record.crm_id), None)

    def _opportunity_id(self, record: Record) -> str | None:
        if record.origin == CRM:
            return record.crm_id
        return next((o.crm_id for o in self.crm.opportunities if o.referral_id == record.referral_id), None)

    def _stuck(self, record: Record, why: str) -> None:
        self.findings.stuck += 1
        self.findings.note("stuck", f"{record.label()}: {why}")

    def _valid(self, record: Record) -> None:
        referral = self._referral_for(record)
        crm_id = self._opportunity_id(record)
        if referral is None or crm_id is None:
            self._stuck(record, "no referral in Partner Center" if referral is None else "no opportunity in the CRM")
            return
        assert referral.id is not None
        if record.origin == PC:
            extra = [r.id for r in self.partner if r.external_reference_id == crm_id and r.id != referral.id]
            if extra:
                self.findings.duplicates += len(extra)
                self.findings.note("duplicates", f"{record.label()}: referrals {extra} created for its opportunity")
        link = self.c.store.get_link(referral.id)
        if link is None:
            self._stuck(record, "no link row")
        elif link.last_status != "ok":
            self._stuck(record, f"link row {link.last_status}: {(link.last_error or '')[:200]}")
        self._compare(record, referral, crm_id)

    def _compare(self, record: Record, referral: Referral, crm_id: str) -> None:
        crm = self.c.crm
        opportunity = crm.get_opportunity(crm_id)
        if opportunity is None:
            self._stuck(record, f"opportunity {crm_id} cannot be read")
            return
        template = self.c.settings.referral_link_template
        pc_values = mapped_values(crm.stored_form(referral_to_opportunity(referral, template)))
        crm_values = mapped_values(opportunity)
        differ = [name for name in COMPARED if pc_values[name] != crm_values[name]]
        problems = [f"{name}: Partner Center {pc_values[name]!r}, CRM {crm_values[name]!r}" for name in differ]
        for name, edits in record.edits.items():
            final = _final(crm_values, name)
            allowed = record.allowed(name)
            if edits and final not in allowed:
                history = ", ".join(
                    f"{e.side} {e.value!r}{' (created)' if e.initial else ''} at {e.started - self.t0:.2f}-"
                    f"{e.answered - self.t0:.2f}s"
                    for e in edits
                )
                problems.append(f"{name} ended {final!r}, not one of {sorted(map(str, allowed))} ({history})")
        if problems:
            self.findings.lost_updates += 1
            self.findings.note("lost updates", f"{record.label()}: " + "; ".join(problems) + self._trail(referral))

    def _trail(self, referral: Referral) -> str:
        """The app's audit trail of the pair, oldest first: what each job decided."""
        entries = list(reversed(self.c.store.audit_trail(referral.id or "", limit=200)))
        steps = [
            f"{(e.at - self.started).total_seconds():.2f}s {e.direction} {e.action} {e.message[:120]}"
            for e in entries
            if e.action != "unchanged" and e.at is not None
        ]
        quiet = len(entries) - len(steps)
        lines = [*steps, f"(and {quiet} jobs that found nothing to do)"] if quiet else steps
        return "\n      audit: " + "\n             ".join(lines) if lines else ""

    def _invalid(self, record: Record) -> None:
        if not record.created:
            self._stuck(record, "the run could not create it")
            return
        if record.origin == CRM:
            referral = self._referral_for(record)
            refused = self.c.store.get_create_failure(record.crm_id or "")
            if referral is not None:
                self._stuck(record, f"invalid, yet referral {referral.id} was created")
            elif refused is None:
                self._stuck(record, "invalid, yet not recorded as refused")
            else:
                self.findings.refused_as_expected += 1
            return
        crm_id = self._opportunity_id(record)
        link = self.c.store.get_link(record.referral_id or "")
        if crm_id is not None:
            self._stuck(record, f"invalid, yet opportunity {crm_id} was created")
        elif link is None or link.last_status != "failed":
            self._stuck(record, f"invalid, yet its link row is {link.last_status if link else 'missing'}")
        else:
            self.findings.refused_as_expected += 1

    # -- queues ------------------------------------------------------------------------------------------
    def _queues(self) -> None:
        queue = self.c.queue
        left = queue.depth()
        if left:
            self.findings.stuck += left
            jobs = ", ".join(f"{j.kind} {j.record_id}" for j in queue.peek_jobs())
            self.findings.note("stuck", f"{left} job(s) still in the queue: {jobs}")
        invalid_keys = {k for r in self.plan.invalid for k in (r.crm_id, r.referral_id) if k}
        while True:
            batch = list(queue.poison.receive_messages(max_messages=32, visibility_timeout=600))
            if not batch:
                break
            for message in batch:
                try:
                    job = decode_job(message.content)
                    key, text = job.record_id, f"{job.kind} {job.record_id} ({job.reason})"
                except ValueError:
                    key, text = "", json.dumps(message.content)[:200]
                if key in invalid_keys:
                    self.findings.poisoned_invalid += 1
                else:
                    self.findings.poisoned_transient += 1
                    self.findings.note("poisoned", text)


def verify(plan: Plan, container: Any, referrals: list[dict[str, Any]], crm: CrmSnapshot, t0: float) -> Findings:
    """``t0``: the run's start on the monotonic clock (edit times are reported relative to it)."""
    return Verifier(plan, container, referrals, crm, t0).run()
