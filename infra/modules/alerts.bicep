// Alerts and the operations workbook, over what the app sends to Application Insights (shared/telemetry).
// Every query names the events, metrics and dimensions of shared/telemetry/names.py by their exact strings;
// tests/test_infra.py checks that each one is a name the code emits.

@description('Application Insights component the app sends telemetry to (the alerts and the workbook read it).')
param appInsightsName string

@description('Azure region of the alert rules and the workbook.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('E-mail address that receives the alerts; empty deploys the action group without a receiver.')
param alertEmail string

@description('Minutes without any Partner Center webhook, while the reconciliation finds changed referrals, before the silence is reported.')
@minValue(60)
@maxValue(2880)
param webhookSilenceMinutes int

@description('Refused sign-ins (HTTP 401) of one service within 15 minutes that raise the credential alert.')
@minValue(1)
@maxValue(100)
param authFailureThreshold int

var actionGroupName = 'ag-${appInsightsName}'
var poisonAlertName = '${appInsightsName}-poison-queue'
var credentialAlertName = '${appInsightsName}-credentials-refused'
var quotaAlertName = '${appInsightsName}-quota-paused'
var webhookSilenceAlertName = '${appInsightsName}-webhook-silence'
var workbookDisplayName = 'Co-sell connector operations'
var emailReceivers = empty(alertEmail) ? [] : [
  {
    name: 'operator'
    emailAddress: alertEmail
    useCommonAlertSchema: true
  }
]

// The queries (Application Insights tables: customEvents, customMetrics). {0} is filled in by format().
var poisonQuery = 'union (customMetrics | where name == "cosell.queue.depth" | where tostring(customDimensions.queue) == "sync-jobs-poison" | where value > 0), (customEvents | where name == "SyncJobPoisoned")'
var credentialQuery = 'customEvents | where name == "CredentialRefused" | summarize refusals = count() by service = tostring(customDimensions.service) | where refusals >= {0}'
var quotaQuery = 'customEvents | where name == "QuotaPaused" | project timestamp, service = tostring(customDimensions.service), pausedSeconds = toint(customDimensions.pausedSeconds)'
var webhookSilenceQuery = 'let silence = {0}m; let webhooks = toscalar(customEvents | where timestamp > ago(silence) | where name == "WebhookReceived" | count); customEvents | where timestamp > ago(silence) | where name == "ReconcileFoundChanges" | summarize changes = sum(toint(customDimensions.enqueued)) | where changes > 0 and webhooks == 0'
var syncsPerHourQuery = 'customEvents | where name == "SyncJobCompleted" | summarize syncs = count() by bin(timestamp, 1h), series = strcat(tostring(customDimensions.direction), " ", tostring(customDimensions.outcome)) | render timechart'
var failuresByReasonQuery = 'customEvents | where name == "SyncJobCompleted" | where tostring(customDimensions.outcome) in ("failed", "poisoned") | summarize failures = count() by reason = tostring(customDimensions.failureReason) | order by failures desc'
var webhookLatencyQuery = 'customEvents | where name == "SyncJobCompleted" | where isnotempty(tostring(customDimensions.webhookToCrmMs)) | summarize p50 = percentile(todouble(customDimensions.webhookToCrmMs), 50), p95 = percentile(todouble(customDimensions.webhookToCrmMs), 95) by bin(timestamp, 1h) | render timechart'
var queueDepthQuery = 'customMetrics | where name == "cosell.queue.depth" | summarize depth = max(value) by bin(timestamp, 5m), queue = tostring(customDimensions.queue) | render timechart'

var workbookContent = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'intro'
      content: {
        json: '**Co-sell connector**: sync jobs, failures, webhook latency and queue depth, from the events the app sends (README: Telemetry and alerts).'
      }
    }
    {
      type: 3
      name: 'syncs-per-hour'
      content: {
        version: 'KqlItem/1.0'
        title: 'Syncs per hour by direction and outcome'
        query: syncsPerHourQuery
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        timeContext: {
          durationMs: 86400000
        }
      }
    }
    {
      type: 3
      name: 'failures-by-reason'
      content: {
        version: 'KqlItem/1.0'
        title: 'Failures by reason'
        query: failuresByReasonQuery
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        timeContext: {
          durationMs: 86400000
        }
      }
    }
    {
      type: 3
      name: 'webhook-latency'
      content: {
        version: 'KqlItem/1.0'
        title: 'Webhook to CRM latency (ms), p50 and p95'
        query: webhookLatencyQuery
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        timeContext: {
          durationMs: 86400000
        }
      }
    }
    {
      type: 3
      name: 'queue-depth'
      content: {
        version: 'KqlItem/1.0'
        title: 'Queue depth (sync-jobs, sync-jobs-poison)'
        query: queueDepthQuery
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        timeContext: {
          durationMs: 86400000
        }
      }
    }
  ]
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'cosell'
    enabled: true
    emailReceivers: emailReceivers
  }
}

// A job failed its last attempt and sits in sync-jobs-poison (python -m shared poison list / replay-poison).
resource poisonAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: poisonAlertName
  location: location
  tags: tags
  properties: {
    displayName: 'Co-sell connector: jobs in the poison queue'
    description: 'The sync-jobs-poison queue is not empty: a job failed 5 times. See python -m shared poison list, then replay-poison.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: poisonQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Partner Center or the CRM keeps refusing the app's credentials (an expired secret or refresh token).
resource credentialAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: credentialAlertName
  location: location
  tags: tags
  properties: {
    displayName: 'Co-sell connector: credentials refused'
    description: 'Partner Center or the CRM answered 401 repeatedly: renew the secret or sign in again (python -m shared login).'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: format(credentialQuery, authFailureThreshold)
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// The CRM's daily API quota is used up: all CRM work is paused until it recovers.
resource quotaAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: quotaAlertName
  location: location
  tags: tags
  properties: {
    displayName: 'Co-sell connector: CRM quota pause'
    description: 'The CRM API quota is used up (Salesforce REQUEST_LIMIT_EXCEEDED); CRM work is paused for QUOTA_PAUSE_SECONDS and resumes by itself.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: quotaQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Webhooks stopped arriving while Partner Center's referrals keep changing: the registration is gone or
// deliveries fail (python -m shared register-webhook --show).
resource webhookSilenceAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: webhookSilenceAlertName
  location: location
  tags: tags
  properties: {
    displayName: 'Co-sell connector: no webhooks while referrals change'
    description: 'No Partner Center webhook arrived in the configured time while the reconciliation found changed referrals.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT1H'
    windowSize: 'P2D'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: format(webhookSilenceQuery, webhookSilenceMinutes)
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsightsName, workbookDisplayName)
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: workbookDisplayName
    category: 'workbook'
    sourceId: appInsights.id
    serializedData: string(workbookContent)
    version: '1.0'
  }
}
