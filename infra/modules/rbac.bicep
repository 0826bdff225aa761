// Role assignments, least privilege, each scoped to the one resource it is needed on.

@description('Principal (object) id of the function app user-assigned identity.')
param principalId string

@description('Storage account the host and the app use.')
param storageAccountName string

@description('Key Vault holding the secrets and the Partner Center token cache.')
param keyVaultName string

@description('Application Insights component the app sends telemetry to.')
param appInsightsName string

@description('Name of the Key Vault secret holding the Partner Center refresh token (stored by the sign-in, rotated by the app).')
param refreshTokenSecretName string

@description('True once the sign-in has stored the refresh token secret; only an existing secret can carry a role assignment.')
param refreshTokenSecretExists bool

@description('Optional object id of an operator (user or group) who runs the sign-in and the cosell CLI against the storage account; empty for none.')
param operatorPrincipalId string

@description('Kind of principal operatorPrincipalId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string

// Built-in role definition ids (identical in every Azure cloud).
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// Declared as existing, never deployed: `python -m shared login` creates the secret. A secret resource in
// this template would need a value, and every redeployment would write that value over the signed-in token.
resource refreshTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: refreshTokenSecretName
}

// Host storage: leases, keys, timer schedules and the deployment package container.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageBlobDataOwnerRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage and deployment package'
  }
}

// The sync-jobs work queue and its poison queue (trigger, enqueue, replay).
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageQueueDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Work queue and poison queue'
  }
}

// SyncLinks, SyncState and SyncAudit.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageTableDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Sync links, state and audit tables'
  }
}

// Key Vault references: read the secrets of this vault, change none.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Key Vault references (read only)'
  }
}

// The Partner Center token cache: the app writes each rotated refresh token back, to this one secret only.
// Until the sign-in has created the secret there is nothing to scope the assignment to; deploy again with
// partnerCenterTokenStored=true after `python -m shared login` (docs/deploy.md, step 2).
resource refreshTokenWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (refreshTokenSecretExists) {
  name: guid(refreshTokenSecret.id, principalId, keyVaultSecretsOfficerRoleId)
  scope: refreshTokenSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Partner Center token cache (this secret only)'
  }
}

// Telemetry with Entra ID authentication (local auth is off on the component).
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Application Insights ingestion with Entra ID'
  }
}

// Optional: the operator who signs in to Partner Center stores the refresh token in this vault.
resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, keyVaultSecretsOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Operator: Partner Center sign-in and secret rotation'
  }
}

// Optional: the operator runs the cosell CLI from a workstation with `az login` credentials (DefaultAzureCredential
// with AzureWebJobsStorage__accountName): status, history and poison read the tables and queues, replay-poison and
// reconcile write jobs. Data roles only; no account keys.
resource operatorTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(storageAccount.id, operatorPrincipalId, storageTableDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Operator: cosell CLI (sync links, state and audit tables)'
  }
}

resource operatorQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(storageAccount.id, operatorPrincipalId, storageQueueDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Operator: cosell CLI (work queue and poison queue)'
  }
}
