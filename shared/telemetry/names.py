"""Every name the connector's telemetry emits: span names, custom event names, metric names and the custom
dimensions they carry.

These are a contract: the alert rules and the workbook in ``infra/modules/alerts.bicep`` query them by
these exact strings (tests/test_infra.py checks that every name a query uses is defined here), and
README's "Telemetry and alerts" section lists them. Rename one only together with the queries.
"""

from __future__ import annotations

# -- spans (App Insights: requests / dependencies) -------------------------------------------------------
SPAN_JOB = "sync.job"
SPAN_POLL = "sync.poll_crm"
SPAN_RECONCILE = "sync.reconcile"
SPAN_WEBHOOK = "webhook.receive"

# -- custom events (App Insights: customEvents) ------------------------------------------------------------
EVENT_JOB_COMPLETED = "SyncJobCompleted"  # every job run, with its outcome
EVENT_JOB_POISONED = "SyncJobPoisoned"  # the last attempt failed: the host moves the job to sync-jobs-poison
EVENT_CREDENTIAL_REFUSED = "CredentialRefused"  # Partner Center or the CRM answered 401
EVENT_QUOTA_PAUSED = "QuotaPaused"  # the CRM's API quota is used up: all CRM work pauses
EVENT_WEBHOOK_RECEIVED = "WebhookReceived"  # a Partner Center delivery that passed every check and was queued
EVENT_RECONCILE_CHANGES = "ReconcileFoundChanges"  # the reconciliation enqueued referrals no webhook announced
EVENTS = (
    EVENT_JOB_COMPLETED,
    EVENT_JOB_POISONED,
    EVENT_CREDENTIAL_REFUSED,
    EVENT_QUOTA_PAUSED,
    EVENT_WEBHOOK_RECEIVED,
    EVENT_RECONCILE_CHANGES,
)

# -- metrics (App Insights: customMetrics) -----------------------------------------------------------------
METRIC_QUEUE_DEPTH = (
    "cosell.queue.depth"  # gauge (instrument names are lower case), dimension DIM_QUEUE: sync-jobs and sync-jobs-poison
)
METRICS = (METRIC_QUEUE_DEPTH,)

# -- custom dimensions (span attributes and customDimensions keys) ----------------------------------------
DIM_REFERRAL_ID = "referralId"
DIM_CRM_ID = "crmId"
DIM_DIRECTION = "direction"  # pc->crm | crm->pc
DIM_ACTION = "action"  # what the job did: created, updated, unchanged, skipped, failed, echo, deferred, ...
DIM_ATTEMPT = "attempt"  # the queue message's dequeue count (1 for the first try)
DIM_JOB_KIND = "jobKind"
DIM_JOB_REASON = "jobReason"  # why the job was enqueued: the webhook event name, poll, reconcile, ...
DIM_CORRELATION_ID = "correlationId"  # also sent to Partner Center as MS-CorrelationId
DIM_OUTCOME = "outcome"  # succeeded | deferred | failed | poisoned
DIM_FAILURE_REASON = "failureReason"  # the error's kind, service and status; never its secrets
DIM_SERVICE = "service"
DIM_STATUS = "status"
DIM_WEBHOOK_TO_CRM_MS = "webhookToCrmMs"  # a webhook job that wrote the CRM: milliseconds since the delivery
DIM_EVENT_NAME = "eventName"
DIM_SEEN = "seen"
DIM_ENQUEUED = "enqueued"
DIM_PAUSED_SECONDS = "pausedSeconds"
DIM_QUEUE = "queue"
DIMENSIONS = (
    DIM_REFERRAL_ID,
    DIM_CRM_ID,
    DIM_DIRECTION,
    DIM_ACTION,
    DIM_ATTEMPT,
    DIM_JOB_KIND,
    DIM_JOB_REASON,
    DIM_CORRELATION_ID,
    DIM_OUTCOME,
    DIM_FAILURE_REASON,
    DIM_SERVICE,
    DIM_STATUS,
    DIM_WEBHOOK_TO_CRM_MS,
    DIM_EVENT_NAME,
    DIM_SEEN,
    DIM_ENQUEUED,
    DIM_PAUSED_SECONDS,
    DIM_QUEUE,
)

OUTCOME_SUCCEEDED, OUTCOME_DEFERRED, OUTCOME_FAILED, OUTCOME_POISONED = "succeeded", "deferred", "failed", "poisoned"

# Partner Center's header for tying the requests of one operation together.
CORRELATION_HEADER = "MS-CorrelationId"
