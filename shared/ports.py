"""The interfaces the services depend on, and the records they exchange with them. Adapters implement them;
tests can run any mix."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .domain.leads import Lead
from .domain.opportunity import Opportunity
from .domain.referral import Referral
from .domain.routing import Owner

# What a job names (its kind) and which way a change travels (audit entries and outcomes say it).
KIND_REFERRAL = "pc-referral"
KIND_CRM = "crm-opportunity"
KIND_CRM_LEAD = "crm-lead"
LINK_KIND_LEAD = "lead"
# The row of a referral this connector made for Microsoft: never synchronised itself (its events tell the
# partner's pair of Microsoft's side); it records the version made, so the event of its creation is an echo.
LINK_MICROSOFT_COPY = "microsoft-copy"
PC_TO_CRM = "pc->crm"
CRM_TO_PC = "crm->pc"
CRM_JOB_KINDS = frozenset({KIND_CRM, KIND_CRM_LEAD})  # jobs that name a CRM record: an opportunity or a lead


def job_direction(kind: str) -> str:
    """Which way a job of this kind carries a change: a CRM record's job (an opportunity's or a lead's) takes the
    CRM's change to Partner Center, a referral's job takes Partner Center's to the CRM. Telemetry, the status
    counters and the audit all label a job by this."""
    return CRM_TO_PC if kind in CRM_JOB_KINDS else PC_TO_CRM


def job_crm_kind(kind: str) -> str | None:
    """The kind of CRM record a CRM job names, as :attr:`Link.crm_kind` spells it: ``LINK_KIND_LEAD`` for a lead's
    job, None for an opportunity's (and for a referral's job, which names no CRM record)."""
    return LINK_KIND_LEAD if kind == KIND_CRM_LEAD else None


Finder = Callable[[], Referral | None]


class PartnerCenter(Protocol):
    """Co-sell referrals in the domain's terms; queries, request bodies and eTags stay in the adapter."""

    def get(self, referral_id: str) -> Referral: ...

    def changed_since(self, moment: datetime | None) -> Iterator[Referral]:
        """Referrals updated at or after ``moment`` (to the whole second; every referral when None), oldest
        first and page by page, so that a reader stopped part way keeps what it has read."""
        ...

    def open_referrals(self, since: datetime | None = None) -> Iterator[Referral]:
        """The partner's New and Active referrals, updated at or after ``since`` when the service can filter so."""
        ...

    def by_external_reference(self, crm_id: str) -> Iterator[Referral]:
        """Referrals carrying ``crm_id`` as their external reference (Microsoft's copies included)."""
        ...

    def by_engagement(self, engagement_id: str) -> Iterator[Referral]: ...

    def create(self, opportunity: Opportunity, find: Finder) -> Referral:
        """The partner's Shared referral for ``opportunity``, keyed by its CRM id. When the answer is lost,
        ``find`` looks for what the attempt made before any second create."""
        ...

    def create_for_microsoft(self, opportunity: Opportunity, engagement_id: str, find: Finder) -> Referral:
        """Microsoft's referral on the engagement of the partner's referral for ``opportunity``; ``find`` as in
        :meth:`create`."""
        ...

    def update(self, referral: Referral, opportunity: Opportunity, fields: list[str]) -> Referral:
        """Write ``fields`` of ``opportunity`` to ``referral`` conditioned on its eTag; PreconditionFailed when
        it changed since it was read."""
        ...


@dataclass(frozen=True)
class Change:
    """A record changed at ``changed_at``; ``version`` changes with every write (an etag), so two writes in one
    timestamp tick differ."""

    record_id: str
    version: str
    changed_at: datetime | None
    # The referral id the CRM record names (its referral-id column), read with the change at no cost: a hint that
    # lets the job read the pair's link at once. A seller may have edited it, so the job checks the link.
    referral_hint: str | None = None


class LeadRecords(Protocol):
    """CRM leads made from Partner Center leads, keyed by the referral id (``SYNC_COSELL_ONLY=false``)."""

    def get_lead(self, crm_id: str) -> Lead | None:
        """The lead with its state and, once a seller converted it, the opportunity that made."""
        ...

    def create_lead(self, lead: Lead, owner: Owner | None = None) -> Lead:
        """Create keyed by ``lead.referral_id``, so that a retry never makes a second lead; ``owner`` owns it when
        this call creates it (None: the CRM's default), a lead that already existed keeps its owner."""
        ...

    def stored_lead(self, lead: Lead) -> Lead:
        """``lead`` as this CRM stores and reads it back (what a comparison must use)."""
        ...

    def update_lead(self, current: Lead, desired: Lead, fields: list[str], state: str | None) -> Lead:
        """Write ``fields`` (Lead attributes) of ``desired`` and, unless None, the ``state`` (as the lead reads it),
        conditioned on ``current`` not having changed since it was read (PreconditionFailed)."""
        ...

    def lead_changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        """Leads carrying a referral id changed at or after ``since``, oldest first (as :meth:`Crm.changes_since`)."""
        ...


class Crm(Protocol):
    """A CRM seen as a store of neutral opportunities keyed by the CRM id and the referral id."""

    provider: str
    # A closed opportunity takes no writes until reopened (Dataverse); writing one reopens and closes it again.
    closed_is_read_only: bool

    def get_opportunity(self, crm_id: str) -> Opportunity | None: ...

    def find_by_referral_id(self, referral_id: str) -> Opportunity | None: ...

    def stored_form(self, opportunity: Opportunity) -> Opportunity:
        """The opportunity as this CRM stores and reads it back (what a diff must compare)."""
        ...

    def create_opportunity(self, opportunity: Opportunity, owner: Owner | None = None) -> Opportunity:
        """Create keyed by ``opportunity.referral_id`` so that a retry never makes a second record. ``owner`` owns
        the record when this call creates it (None: the CRM's default, the integration user); a record that
        already existed keeps its owner."""
        ...

    def update_opportunity(self, current: Opportunity, desired: Opportunity, fields: list[str]) -> Opportunity:
        """Write ``fields`` of ``desired`` conditioned on ``current.etag``; raise PreconditionFailed on 412."""
        ...

    def set_sync_outcome(self, current: Opportunity, name: str | None, audit: str) -> Opportunity:
        """Write only the name mark and the audit text."""
        ...

    def lead_records(self) -> LeadRecords:
        """The CRM's leads, for Partner Center leads (``SYNC_COSELL_ONLY=false``)."""
        ...

    def held_back_for(self) -> float:
        """Seconds the CRM has told this process to send nothing more (its last 429's ``Retry-After``); 0.0 if none."""
        ...

    def changes_since(self, since: datetime | None, page_size: int = 500) -> Iterator[Change]:
        """Opportunities flagged "Sync with Partner Center" changed at or after ``since``, oldest first: only
        their id, version and change time, read without any per-row request."""
        ...


@dataclass
class Link:
    """Referral id <-> CRM record id, with what we last synchronised on each side."""

    referral_id: str
    crm_id: str | None = None
    crm_provider: str | None = None
    pc_fingerprint: str | None = None
    crm_fingerprint: str | None = None
    pc_etag: str | None = None
    crm_etag: str | None = None
    pc_updated_at: str | None = None  # the referral's updatedDateTime as we last wrote or read it
    last_status: str | None = None  # "ok" | "failed" | "skipped" | "pending" | "detached" | "referral-missing"
    last_error: str | None = None
    last_synced_at: datetime | None = None
    last_values: str | None = None  # JSON of the mapped values both sides agreed on at the last sync
    crm_kind: str | None = None  # LINK_KIND_LEAD while the CRM record is a lead; None: an opportunity
    # The referral for Microsoft this connector made on the pair's engagement, and its updatedDateTime then: a
    # row of its own (status LINK_MICROSOFT_COPY) is written with the link, so its creation event is an echo.
    microsoft_copy_id: str | None = None
    microsoft_copy_updated_at: str | None = None
    etag: str | None = None  # Table Storage etag of this row
    # What the CRM-id index row holds for this link (crm id, crm etag, status), so that saving a link rewrites
    # the index only when one of them changes.
    indexed: tuple[str | None, str | None, str | None] | None = field(default=None, compare=False, repr=False)
    copy_recorded: str | None = field(default=None, compare=False, repr=False)  # microsoft_copy_id as stored


@dataclass
class AuditEntry:
    record_key: str
    action: str  # e.g. "created", "updated", "unchanged", "skipped", "failed"
    direction: str  # PC_TO_CRM | CRM_TO_PC
    message: str
    crm_id: str | None = None
    referral_id: str | None = None
    fields: list[str] = field(default_factory=list)
    at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# A remembered version of a change is this many bytes of a hash of it, written as hex.
VERSION_DIGEST_BYTES = 5


@dataclass(frozen=True)
class FeedWatermark:
    """Where a change feed stands: the newest change it enqueued, the versions it enqueued inside the overlap
    window it reads again (digest -> when that version changed), and what its last run did."""

    watermark: datetime | None = None
    versions: Mapping[str, datetime] = field(default_factory=dict)
    last_run_at: datetime | None = None
    last_seen: int = 0
    last_enqueued: int = 0
    last_interruption: str = ""  # why the last run stopped early; "" when it read everything


@dataclass(frozen=True)
class DeltaPage:
    """One page of a CRM table's change tracking: the flagged records added or changed (with their versions), the
    records deleted (whether they were flagged is not known any more), and the link to read next: the next page's,
    or on the last page (``last``) the delta link the next poll starts from."""

    changed: list[Change]
    deleted: list[str]
    next_link: str
    last: bool


@dataclass(frozen=True)
class DeltaProgress:
    """Where a change-tracking feed stands: the link its next read starts from ("": a full read), and while the
    CRM refuses change tracking, until when the feed reads by modification time instead (and why)."""

    link: str = ""
    fallback_until: datetime | None = None
    fallback_reason: str = ""
    last_run_at: datetime | None = None
    last_seen: int = 0
    last_enqueued: int = 0
    last_interruption: str = ""


class ChangeTracking(Protocol):
    """A CRM whose opportunity table reports its changes since a token (Dataverse delta links)."""

    def delta_pages(self, link: str | None, page_size: int) -> Iterator[DeltaPage]:
        """The changes since ``link`` (None: every flagged record, and the first token), a page at a time. Raises
        :class:`~shared.domain.errors.ChangeTrackingUnavailable` when the table does not track changes, and
        :class:`~shared.domain.errors.DeltaLinkRefused` when the link's token is expired or not valid."""
        ...


@dataclass(frozen=True)
class Pause:
    """All CRM work waits until ``until`` (the CRM's API quota is used up)."""

    until: datetime
    reason: str
    since: datetime | None = None


@dataclass(frozen=True)
class CredentialFailure:
    """The last credential a service refused, kept until a job succeeds again."""

    service: str
    message: str
    at: datetime | None = None
    cause: str = ""  # a name of shared.domain.credential_causes.CAUSES, "" when the refusal named none


@dataclass(frozen=True)
class Health:
    pause: Pause | None = None  # the last pause, over or not
    credential_failure: CredentialFailure | None = None
    token_redeemed_at: datetime | None = None  # the Partner Center refresh token's last successful redemption


@dataclass(frozen=True)
class WebhookRegistration:
    """What `register-webhook` registered with Partner Center, and the last verified ``test-created`` event the
    webhook received (the proof that deliveries reach the app and pass the signature check)."""

    url: str = ""
    events: tuple[str, ...] = ()
    registered_at: datetime | None = None
    last_test_event_at: datetime | None = None
    last_test_event_uri: str = ""  # the event's ResourceUri, which ends in the validation's correlation id


@dataclass(frozen=True)
class CreateFailure:
    """An opportunity Partner Center could not take as it was: the fingerprint of that version and why, so it is
    not sent again until it changes."""

    crm_fingerprint: str
    reason: str


@dataclass(frozen=True)
class CreateIntent:
    """What a CRM -> Partner Center create is about to send, recorded before the create: the values both sides
    will hold once it lands (encoded as a link's agreed values), without what only Partner Center sets. A job
    that dies after the create and before the pair is recorded leaves this as the only account of what was
    sent; the opportunity and the referral as found later may both have been edited since."""

    agreed: str


@dataclass(frozen=True)
class CrmEntry:
    """What the CRM index holds for one record (one read): the state of its link when it is paired (enough to tell
    an echo), and otherwise what creating its referral left: the refusal of an earlier version, and the intent of a
    create that may have landed. ``etag``: the entry's version, which the next create intent is written on."""

    link: Link | None
    failure: CreateFailure | None = None
    intent: CreateIntent | None = None
    etag: str | None = None


class SyncStore(Protocol):
    def get_link(self, referral_id: str) -> Link | None: ...

    def find_link_by_crm_id(self, crm_id: str) -> Link | None: ...

    def crm_entry(self, crm_id: str) -> CrmEntry | None:
        """The record's CRM index entry; None when it has none (never paired, never refused)."""
        ...

    def crm_link_state(self, crm_id: str) -> Link | None:
        """From the CRM-id index alone (one read): the link's referral id, CRM id, CRM etag and status, enough
        to tell an echo; None when the opportunity has no link."""
        ...

    def save_link(self, link: Link, last: bool = False) -> Link:
        """Insert (no etag) or replace conditioned on ``link.etag``; PreconditionFailed on a race. Inside a job
        (:class:`PairLease`) the save also takes the pair's lease when the job has not taken it yet, and with
        ``last`` (the job writes nothing after it) releases it: one request either way."""
        ...

    def append_audit(self, entry: AuditEntry) -> None: ...

    def audit_trail(self, record_key: str, limit: int = 50) -> list[AuditEntry]: ...

    def acquire_lease(self, key: str, owner: str, seconds: int, seen: Sequence[Link] = ()) -> bool:
        """Take the lease unless another worker holds it. With ``seen`` (links the job read before), only if none
        of them changed since: PreconditionFailed when one did."""
        ...

    def renew_lease(self, key: str, owner: str, seconds: int) -> bool:
        """Extend a lease ``owner`` still holds; False (and nothing written) when it expired or changed hands."""
        ...

    def release_lease(self, key: str, owner: str) -> None: ...

    def get_watermark(self, feed: str) -> FeedWatermark | None: ...

    def save_watermark(self, feed: str, mark: FeedWatermark) -> None: ...

    def get_health(self) -> Health: ...

    def save_pause(self, pause: Pause) -> None:
        """Record the pause; the credential failure, if any, stays."""
        ...

    def save_credential_failure(self, failure: CredentialFailure) -> None:
        """Record the refused credential; the pause, if any, stays."""
        ...

    def clear_credential_failure(self, recovered_at: datetime) -> None: ...

    def get_create_failure(self, crm_id: str) -> CreateFailure | None: ...

    def save_create_failure(self, crm_id: str, failure: CreateFailure) -> None: ...

    def save_create_intent(self, crm_id: str, intent: CreateIntent, entry: CrmEntry | None) -> None:
        """Record (replacing any earlier one) what the create about to be sent carries; the failure, if any, stays.
        Written on condition that the record's entry is still ``entry`` as read (None: it had none), so that a link
        made for the record meanwhile stops the create: PairChanged. Inside a job it takes the job's lease too."""
        ...


@dataclass(frozen=True)
class Job:
    """A queue message: names a record, never carries its data (events are hints)."""

    kind: str  # KIND_REFERRAL | KIND_CRM | KIND_CRM_LEAD
    record_id: str
    reason: str = ""
    enqueued_at: str = ""
    # The version of the record the job was enqueued for, when the source knows it: the CRM row's version,
    # the webhook's ResourceChangeUtcDate, the referral's eTag. A job for the version we wrote is an echo.
    version: str = ""
    referral_hint: str = ""  # a CRM job's Change.referral_hint

    @property
    def direction(self) -> str:
        return job_direction(self.kind)

    def to_dict(self) -> dict[str, str]:
        data = {"kind": self.kind, "recordId": self.record_id, "reason": self.reason, "enqueuedAt": self.enqueued_at}
        data |= {"version": self.version} if self.version else {}
        return data | ({"referralHint": self.referral_hint} if self.referral_hint else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        kind, record_id = data.get("kind"), data.get("recordId")
        if not isinstance(kind, str) or not isinstance(record_id, str) or not record_id:
            raise ValueError("a job needs string 'kind' and 'recordId'")
        version, hint = data.get("version"), data.get("referralHint")
        return cls(
            kind,
            record_id,
            str(data.get("reason", "")),
            str(data.get("enqueuedAt", "")),
            version if isinstance(version, str) else "",
            hint if isinstance(hint, str) else "",
        )


class JobQueue(Protocol):
    def enqueue(self, job: Job, delay_seconds: int = 0) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class WriteFence(Protocol):
    """Runs a block with ``check`` called before each external or bookkeeping write; ``check`` raises to
    stop the write. Services install it, adapters honour it (:mod:`shared.write_fence` is the one in use)."""

    def __call__(self, check: Callable[[], None], lease: PairLease | None = None) -> AbstractContextManager[None]: ...


class JobWaits(Protocol):
    """Runs one job with a longer inline wait (``started_wait`` seconds) for its requests once one of them has been
    answered: deferred, the job would ask for those answers again (:mod:`shared.inline_wait` is the one in use)."""

    def __call__(self, started_wait: float) -> AbstractContextManager[None]: ...


class PairLease(Protocol):
    """A job's lease on its pair as the store sees it (:mod:`shared.sync.lease` keeps it). A job takes it with its
    first write, so a job that writes nothing costs no lease; the store folds the take into that write when it is a
    link save, and the release into the job's last link save. Links the job read before the take are proven
    unchanged by the take (etag conditions), so nothing has to be read again under the lease."""

    key: str
    owner: str
    seconds: int

    def untaken(self) -> bool: ...

    def saw(self, link: Link) -> None:
        """A link the job read before taking the lease: the take must find it unchanged."""
        ...

    def seen(self) -> Sequence[Link]: ...

    def took(self, started: float) -> None:
        """The store took the lease with a write sent at ``started`` (monotonic clock): start keeping it."""
        ...

    def ends_with_last_save(self) -> bool:
        """Whether the job writes nothing after a save marked last, so that the save may release the lease."""
        ...

    def row_lock(self) -> AbstractContextManager[None]:
        """Held while the lease row is written (a renewal, or a release riding on a link save)."""
        ...

    def released(self) -> None:
        """The lease row was deleted with the job's last link save."""
        ...
