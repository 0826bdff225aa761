"""What a job leaves behind: the link row of the pair, the audit trail, and the marks of a failure on the record
(cross in its name, the reason in its Audit column, a create-failure record until the opportunity changes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..domain.audit_text import audit_line, prepend
from ..domain.bounded import encode_agreed
from ..domain.checkmark import mark, strip_marks
from ..domain.deletions import LINK_DETACHED, LINK_REFERRAL_MISSING
from ..domain.errors import ExternalServiceError
from ..domain.mapping import fingerprint
from ..domain.opportunity import Opportunity
from ..domain.policies import is_closed
from ..domain.referral import Referral
from ..ports import CRM_TO_PC, PC_TO_CRM, AuditEntry, Clock, CreateFailure, Crm, Link, SyncStore
from .options import EngineOptions
from .pairing import REFERRAL_NOT_FOUND, Pair

log = logging.getLogger(__name__)

UNCHANGED = "unchanged"
REFUSED_BY_CRM = "Not synchronised: "
REFUSED_BY_PARTNER_CENTER = "Not sent to Partner Center: "
# Outcomes that wrote nothing and are logged, not audited (see ``note``).
LOGGED_ONLY = frozenset({UNCHANGED, LINK_DETACHED})


@dataclass(frozen=True)
class Outcome:
    action: str  # created | updated | unchanged | skipped | failed | detached | referral-missing
    record_key: str
    direction: str
    crm_id: str | None = None
    referral_id: str | None = None
    fields: tuple[str, ...] = ()
    message: str = ""
    crm_kind: str | None = None  # Link.crm_kind of the record crm_id names (None: an opportunity)


class Recorder:
    def __init__(self, crm: Crm, store: SyncStore, options: EngineOptions, clock: Clock) -> None:
        self.crm, self.store, self.options, self.clock = crm, store, options, clock

    # -- marks ---------------------------------------------------------------------------------------------
    def marked(self, name: str | None, success: bool) -> str | None:
        if name is None:
            return None
        return mark(name, success) if self.options.checkmark_enabled else strip_marks(name)

    def written_fingerprint(self, target: Opportunity) -> str:
        """The fingerprint of what we wrote, not of a read after the write: a seller's edit saved between
        our write and that read would otherwise count as already synchronised and be lost."""
        return fingerprint(self.crm.stored_form(target))

    # -- the link row --------------------------------------------------------------------------------------
    def save_link(
        self,
        link: Link | None,
        referral: Referral,
        pc_fingerprint: str,
        record: Opportunity,
        agreed: dict[str, object],
        crm_fingerprint: str | None = None,
        last: bool = False,
    ) -> None:
        """``last``: the job writes nothing more to the pair (the store may release its lease with this save)."""
        updated = link or _new_link(referral)
        updated.last_values = encode_agreed(agreed)
        self.record_link(updated, referral, pc_fingerprint, record, "ok", None, crm_fingerprint, last)

    def save_pending(
        self,
        link: Link | None,
        referral: Referral,
        pc_fingerprint: str,
        agreed: dict[str, object],
        record: Opportunity | None = None,
    ) -> Link:
        """Record the values both sides hold (or are about to hold) before a write that the job may not live to
        record; ``pending`` keeps the row from counting as synchronised until the job finishes."""
        updated = link or _new_link(referral)
        updated.last_values = encode_agreed(agreed)
        self.record_link(updated, referral, pc_fingerprint, record, "pending")
        return updated

    def record_link(
        self,
        link: Link,
        referral: Referral,
        pc_fingerprint: str,
        record: Opportunity | None,
        status: str,
        error: str | None = None,
        crm_fingerprint: str | None = None,
        last: bool = False,
    ) -> None:
        link.crm_provider = self.crm.provider
        if record is not None:
            link.crm_id = record.crm_id
            link.crm_fingerprint = crm_fingerprint or fingerprint(record)
            # The version after our write names what we wrote only if the record then read as that: an edit
            # saved around our write (Salesforce's condition has whole seconds) makes a version that is not an
            # echo, and the job for it must run (see echoes.py).
            exact = crm_fingerprint is None or fingerprint(record) == crm_fingerprint
            link.crm_etag = record.etag if exact else None
        link.pc_fingerprint = pc_fingerprint
        link.pc_etag = referral.e_tag
        link.pc_updated_at = referral.updated_date_time
        link.last_status = status
        link.last_error = error
        link.last_synced_at = self.clock.now()
        self.store.save_link(link, last)

    # -- failures ------------------------------------------------------------------------------------------
    def fail_pc_side(self, pair: Pair, record: Opportunity | None, reasons: list[str]) -> Outcome:
        """A referral the CRM cannot take as it is: audit, cross mark on ``record`` (its counterpart, if found),
        no retry until the referral changes."""
        referral = pair.referral
        assert referral.id is not None
        message = REFUSED_BY_CRM + " ".join(reasons)
        marked = self.mark_failure(record, message)
        updated = pair.link or _new_link(referral)
        self.record_link(updated, referral, pair.pc_fingerprint, marked, "failed", message)
        return self.audit(
            Outcome("failed", referral.id, PC_TO_CRM, marked.crm_id if marked else None, referral.id, message=message)
        )

    def fail_crm_side(self, record: Opportunity, link: Link | None, reasons: list[str]) -> Outcome:
        """An opportunity Partner Center cannot take as it is: reason in the Audit column, cross mark, and
        no retry until the opportunity changes."""
        assert record.crm_id is not None
        message = REFUSED_BY_PARTNER_CENTER + " ".join(reasons)
        marked = self.mark_failure(record, message)
        if link is None:
            self.store.save_create_failure(record.crm_id, CreateFailure(fingerprint(marked or record), message))
        else:
            link.crm_fingerprint = fingerprint(marked or record)
            link.last_status, link.last_error = "failed", message
            link.last_synced_at = self.clock.now()
            self.store.save_link(link)
        key = link.referral_id if link else record.crm_id
        return self.audit(
            Outcome("failed", key, CRM_TO_PC, record.crm_id, link.referral_id if link else None, message=message)
        )

    def mark_failure(self, record: Opportunity | None, message: str) -> Opportunity | None:
        """The cross mark and the reason on the record; a closed read-only record (Dataverse) is left as the
        seller closed it, not reopened, and the failure is in the audit trail and ``status``."""
        if record is None:
            return None
        if self.read_only(record):
            return record
        audit = prepend(record.audit, audit_line(self.clock.now(), False, message), self.options.audit_max_chars)
        name = self.marked(record.name, False) if self.options.checkmark_enabled else None
        try:
            return self.crm.set_sync_outcome(record, name, audit)
        except ExternalServiceError as exc:
            log.warning("could not write the failure to the CRM record %s: %s", record.crm_id, exc)
            return record

    def read_only(self, record: Opportunity) -> bool:
        """A closed record the CRM takes no write for until it is reopened (Dataverse)."""
        return self.crm.closed_is_read_only and is_closed(record.status)

    # -- the audit trail -----------------------------------------------------------------------------------
    def note(
        self, action: str, direction: str, message: str, crm_id: str | None = None, referral_id: str | None = None
    ) -> Outcome:
        """An outcome that wrote nothing; the trail is keyed by the referral when there is one. A job that found
        both sides in step, or a pair detached already, is logged, not audited: a row per echo or repeated event
        would cost a Table write and bury the trail's real entries. A referral that is not found is reported on
        its link, when it has one (:meth:`referral_missing`)."""
        if message == REFERRAL_NOT_FOUND and referral_id:
            return self.referral_missing(direction, referral_id, crm_id)
        key = referral_id or crm_id or "unknown"
        outcome = Outcome(action, key, direction, crm_id, referral_id, message=message)
        if action in LOGGED_ONLY:
            log.info("%s %s: %s %s", direction, key, action, message)
            return outcome
        return self.audit(outcome)

    # -- a side that is gone ----------------------------------------------------------------------------
    def detach(self, link: Link, referral: Referral, pc_fingerprint: str, message: str) -> Outcome:
        """The pair's opportunity was deleted in the CRM: the link keeps the deleted record's id and says why it
        is detached, and no job for the pair writes anything again."""
        assert referral.id is not None
        self.record_link(link, referral, pc_fingerprint, None, LINK_DETACHED, message)
        log.warning("referral %s: %s", referral.id, message)
        return self.audit(Outcome(LINK_DETACHED, referral.id, CRM_TO_PC, link.crm_id, referral.id, message=message))

    def referral_missing(self, direction: str, referral_id: str, crm_id: str | None = None) -> Outcome:
        """A linked referral Partner Center no longer finds (404). Partner Center has no delete, so this is
        reported, once, on the link and in the audit trail; the opportunity is not touched. The next job that
        reads the referral again synchronises the pair as before."""
        link = self.store.get_link(referral_id)
        if link is None or not link.crm_id:  # nothing was created for it: as any referral not found
            return self.audit(
                Outcome("skipped", referral_id, direction, crm_id, referral_id, message=REFERRAL_NOT_FOUND)
            )
        if link.last_status in (LINK_REFERRAL_MISSING, LINK_DETACHED):
            log.info("%s %s: %s (reported already)", direction, referral_id, REFERRAL_NOT_FOUND)
            return Outcome(
                LINK_REFERRAL_MISSING, referral_id, direction, link.crm_id, referral_id, message=REFERRAL_NOT_FOUND
            )
        message = (
            f"the referral no longer exists in Partner Center; opportunity {link.crm_id} is kept in the CRM "
            "and not synchronised while the referral is missing"
        )
        link.last_status, link.last_error, link.last_synced_at = LINK_REFERRAL_MISSING, message, self.clock.now()
        self.store.save_link(link)
        log.warning("referral %s: %s", referral_id, message)
        return self.audit(
            Outcome(LINK_REFERRAL_MISSING, referral_id, direction, link.crm_id, referral_id, message=message)
        )

    def audit(self, outcome: Outcome) -> Outcome:
        self.store.append_audit(
            AuditEntry(
                record_key=outcome.record_key,
                action=outcome.action,
                direction=outcome.direction,
                message=outcome.message,
                crm_id=outcome.crm_id,
                referral_id=outcome.referral_id,
                fields=list(outcome.fields),
                at=self.clock.now(),
            )
        )
        log.info("%s %s: %s %s", outcome.direction, outcome.record_key, outcome.action, outcome.message)
        return outcome


def _new_link(referral: Referral) -> Link:
    assert referral.id is not None
    return Link(referral_id=referral.id)
