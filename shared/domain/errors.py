"""Error types shared by every layer. Messages are written for a person reading the audit trail,
and never carry secrets (tokens, keys, signatures)."""

from __future__ import annotations


class SyncError(Exception):
    """Base of all connector errors."""


class ValidationFailed(SyncError):
    """The record cannot be synchronised as it is; retrying will not help until it changes."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class ExternalServiceError(SyncError):
    """A call to Partner Center or the CRM failed."""

    def __init__(self, service: str, message: str, status: int | None = None, code: str | None = None) -> None:
        self.service, self.status, self.code = service, status, code
        prefix = f"{service} {status}" if status else service
        super().__init__(f"{prefix}: {message}" + (f" ({code})" if code else ""))


class NotFound(ExternalServiceError):
    pass


class PreconditionFailed(ExternalServiceError):
    """A conditional write lost against a concurrent change (HTTP 412): re-read and re-decide."""


class Conflict(ExternalServiceError):
    pass


class PermanentError(ExternalServiceError):
    """A 4xx the same request will always get (bad request, forbidden): do not retry."""


class SetupIncomplete(PermanentError):
    """The CRM lacks something the connector cannot work without (a column ``setup-crm --apply`` adds). Every job
    would fail the same way until it is fixed, so jobs wait for the fix instead of retrying into the poison queue."""


class ChangeTrackingUnavailable(PermanentError):
    """The CRM table does not track changes (or the request for them was refused): read by modification time."""


class DeltaLinkRefused(PermanentError):
    """The CRM refused a delta link (its token expired or is not valid): start again with a full read."""


class AuthenticationError(ExternalServiceError):
    """Credentials missing, expired or refused."""


class TransientError(ExternalServiceError):
    """Worth retrying later: 5xx, network errors, throttling beyond the wait we allow inline."""

    def __init__(
        self,
        service: str,
        message: str,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(service, message, status, code)
        self.retry_after = retry_after


class QuotaExceeded(TransientError):
    """The external system's API allocation is used up: pause all work until it recovers, do not retry now."""


class Throttled(TransientError):
    """HTTP 429 (or 503 with Retry-After) whose wait exceeded what we may sleep inline."""


class OutcomeUnknown(TransientError):
    """A request that is not idempotent (a create) may have taken effect, but its answer was lost
    (connection dropped, read timeout, gateway 5xx). Sending it again blind could create a second record:
    the caller must look for what the first attempt made (:func:`shared.httpclient.create_once`)."""


class LeaseLost(TransientError):
    """This worker no longer holds the lease on the pair it is writing: it must stop before its next write."""


class PairBusy(TransientError):
    """Another worker holds the lease on the pair this job was about to write; the queue retries the job later."""


class PairChanged(PairBusy):
    """Another worker changed a link this job decided from, before this job took the pair's lease: nothing was
    written, and the job decides again when the queue retries it."""


class WebhookRejected(SyncError):
    """A webhook delivery we refuse; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class StorageRejected(PermanentError):
    """Table Storage refused (or would refuse) one of our writes for what the row holds: a property or the
    whole entity over the size limits, a key too long. The same write always fails, so it is a permanent
    failure of that record, never a retry. The message names the row and the properties, never the data."""

    def __init__(self, what: str, problems: list[str], status: int = 400, code: str | None = None) -> None:
        self.what, self.problems = what, problems
        super().__init__("Table Storage", f"{what} was refused: {'; '.join(problems)}", status, code)
