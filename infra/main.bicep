// Co-sell connector: Partner Center co-sell referrals <-> CRM opportunities, on Azure Functions.
//
// One resource group holds everything: a Flex Consumption (Linux, Python 3.11) function app running
// as a user-assigned managed identity, a storage account without shared keys (host, deployment
// package, queues, tables), a Key Vault in RBAC mode for the secrets, and Log Analytics with
// Application Insights. The app's code comes from the release zip (packageUri) through One Deploy.
//
// infra/azuredeploy.json is this template compiled to ARM JSON (the Deploy to Azure button needs
// JSON); tests/test_infra.py keeps the two in step.
targetScope = 'resourceGroup'

metadata description = 'Co-sell connector: Partner Center referrals and CRM opportunities kept in step by an Azure Functions app.'

// ---------------------------------------------------------------------------------------------
// Naming and platform
// ---------------------------------------------------------------------------------------------

@description('Short name for this deployment, used in every resource name (3-9 lowercase letters or digits).')
@minLength(3)
@maxLength(9)
param appName string = 'cosell'

@description('Azure region for all resources; it must offer the Flex Consumption plan. Defaults to the resource group region.')
param location string = resourceGroup().location

@description('Tags applied to every resource.')
param tags object = {}

@description('Replication of the storage account (queues, tables, deployment package).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_LRS'

@description('Upper bound of instances the Flex Consumption plan scales out to (40 is the smallest allowed value).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Always-ready instances kept running for each latency-critical function group: the HTTP functions (the Partner Center webhook) and the sync_worker queue function. 0 lets both scale to zero; each instance is billed around the clock, see docs/deploy.md.')
@minValue(0)
@maxValue(20)
param alwaysReadyInstances int = 0

@description('Days to keep logs in Log Analytics.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('E-mail address that receives the alerts (jobs in the poison queue, refused credentials, the CRM quota pause, webhooks gone quiet). Empty: the alerts fire without notifying anyone.')
param alertEmail string = ''

@description('Minutes without any Partner Center webhook, while the reconciliation finds changed referrals, before an alert fires (at least 60, at most 2880).')
@minValue(60)
@maxValue(2880)
param webhookSilenceMinutes int = 240

@description('Refused sign-ins (HTTP 401) of Partner Center or the CRM within 15 minutes that raise the credential alert.')
@minValue(1)
@maxValue(100)
param authFailureThreshold int = 3

@description('Optional object id of the operator (user or group) who signs in to Partner Center and runs the cosell CLI: granted Key Vault Secrets Officer on the vault (the sign-in stores the refresh token) and Storage Table and Queue Data Contributor on the storage account (status, history, poison, replay-poison, reconcile with az login credentials). Empty for none.')
param operatorPrincipalId string = ''

@description('Kind of principal operatorPrincipalId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Set true once `python -m shared login` has stored the Partner Center refresh token in the vault, and deploy again: the app identity then may write that one secret, to keep the rotating token. The template never creates or overwrites the token.')
param partnerCenterTokenStored bool = false

// ---------------------------------------------------------------------------------------------
// Code package
// ---------------------------------------------------------------------------------------------

@description('Deploy the release zip into the function app. Set false when another tool deploys the code (azd up does).')
param deployPackage bool = true

@description('GitHub repository (owner/name) whose release provides cosell-connector.zip.')
param githubRepository string = 'cosell-connector/cosell-connector'

@description('Release tag to deploy, or latest.')
param releaseTag string = 'latest'

@description('Full URL of the app package zip; overrides githubRepository and releaseTag when set.')
param packageUri string = ''

// ---------------------------------------------------------------------------------------------
// Connector behaviour (app settings)
// ---------------------------------------------------------------------------------------------

@description('CRM the connector keeps in step with Partner Center: dynamics (Dynamics 365 / Dataverse) or salesforce.')
@allowed([
  'dynamics'
  'salesforce'
])
param crmProvider string = 'dynamics'

@description('Mark the CRM opportunity name with a check mark when synced and a cross when the last sync failed.')
param checkmarkEnabled bool = true

@description('Partner Center to CRM: sync only co-sell opportunities (true) or also bring leads (false).')
param syncCosellOnly bool = true

@description('NCRONTAB schedule (six fields, UTC) of the CRM poll for flagged opportunities.')
param crmPollSchedule string = '*/30 * * * * *'

@description('NCRONTAB schedule (six fields, UTC) of the Partner Center reconciliation.')
param reconcileSchedule string = '0 0 * * * *'

// ---------------------------------------------------------------------------------------------
// Partner Center
// ---------------------------------------------------------------------------------------------

@description('Entra tenant id of the Partner Center account. Defaults to the tenant of this subscription.')
param partnerCenterTenantId string = subscription().tenantId

@description('Application (client) id of the Entra app registration used for the delegated Partner Center sign-in. Can be set after deployment.')
param partnerCenterClientId string = ''

@secure()
@description('Client secret of that app registration (stored in Key Vault). Leave empty for a public client.')
param partnerCenterClientSecret string = ''

// ---------------------------------------------------------------------------------------------
// Dynamics 365 (Dataverse)
// ---------------------------------------------------------------------------------------------

@description('Dataverse environment URL, for example https://contoso.crm.dynamics.com (needed when crmProvider is dynamics).')
param dataverseUrl string = ''

@description('Optional application (client) id of an Entra app that is a Dataverse application user. Empty: the function app managed identity is the application user.')
param dataverseClientId string = ''

@secure()
@description('Client secret of dataverseClientId (stored in Key Vault). Empty when the managed identity is used.')
param dataverseClientSecret string = ''

// ---------------------------------------------------------------------------------------------
// Salesforce
// ---------------------------------------------------------------------------------------------

@description('The My Domain URL of your Salesforce org, https://<mydomain>.my.salesforce.com (Setup > My Domain); login.salesforce.com and test.salesforce.com are refused. Required when crmProvider is salesforce; empty for dynamics.')
param salesforceLoginUrl string = ''

@description('Consumer key of the Salesforce connected app (needed when crmProvider is salesforce).')
param salesforceClientId string = ''

@secure()
@description('Consumer secret of the Salesforce connected app (stored in Key Vault).')
param salesforceClientSecret string = ''

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var baseName = toLower(appName)
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, baseName))
var functionAppName = 'func-${baseName}-${resourceToken}'
var planName = 'plan-${baseName}-${resourceToken}'
var identityName = 'id-${baseName}-${resourceToken}'
var storageAccountName = 'st${baseName}${resourceToken}'
var keyVaultName = 'kv-${baseName}-${take(resourceToken, 11)}'
var workspaceName = 'log-${baseName}-${resourceToken}'
var appInsightsName = 'appi-${baseName}-${resourceToken}'
var deploymentContainerName = 'app-package'
var queueNames = [
  'sync-jobs'
  'sync-jobs-poison'
]
var tableNames = {
  links: 'SyncLinks'
  state: 'SyncState'
  audit: 'SyncAudit'
}
var secretNames = {
  partnerCenterRefreshToken: 'partner-center-refresh-token'
  partnerCenterClientSecret: 'partner-center-client-secret'
  dataverseClientSecret: 'dataverse-client-secret'
  salesforceClientSecret: 'salesforce-client-secret'
}
var latestPackageUri = 'https://github.com/${githubRepository}/releases/latest/download/cosell-connector.zip'
var taggedPackageUri = 'https://github.com/${githubRepository}/releases/download/${releaseTag}/cosell-connector.zip'
var releasePackageUri = releaseTag == 'latest' ? latestPackageUri : taggedPackageUri
var effectivePackageUri = empty(packageUri) ? releasePackageUri : packageUri

// ---------------------------------------------------------------------------------------------
// App settings of the connector. Secrets are Key Vault references resolved with the
// user-assigned identity; optional settings left empty are omitted so the app's defaults apply.
// ---------------------------------------------------------------------------------------------

var keyVaultReferenceFormat = '@Microsoft.KeyVault(VaultName={0};SecretName={1})'
var behaviourSettings = [
  {
    name: 'CRM_PROVIDER'
    value: crmProvider
  }
  {
    name: 'CHECKMARK_ENABLED'
    value: checkmarkEnabled ? 'true' : 'false'
  }
  {
    name: 'SYNC_COSELL_ONLY'
    value: syncCosellOnly ? 'true' : 'false'
  }
  {
    name: 'CRM_POLL_SCHEDULE'
    value: crmPollSchedule
  }
  {
    name: 'RECONCILE_SCHEDULE'
    value: reconcileSchedule
  }
  {
    name: 'SYNC_LINKS_TABLE'
    value: tableNames.links
  }
  {
    name: 'SYNC_STATE_TABLE'
    value: tableNames.state
  }
  {
    name: 'SYNC_AUDIT_TABLE'
    value: tableNames.audit
  }
  {
    name: 'PARTNER_CENTER_TENANT_ID'
    value: partnerCenterTenantId
  }
  {
    name: 'PARTNER_CENTER_REFRESH_TOKEN'
    value: format(keyVaultReferenceFormat, keyVaultName, secretNames.partnerCenterRefreshToken)
  }
]
var partnerCenterClientIdSettings = empty(partnerCenterClientId) ? [] : [
  {
    name: 'PARTNER_CENTER_CLIENT_ID'
    value: partnerCenterClientId
  }
]
var partnerCenterClientSecretSettings = empty(partnerCenterClientSecret) ? [] : [
  {
    name: 'PARTNER_CENTER_CLIENT_SECRET'
    value: format(keyVaultReferenceFormat, keyVaultName, secretNames.partnerCenterClientSecret)
  }
]
var dataverseUrlSettings = empty(dataverseUrl) ? [] : [
  {
    name: 'DATAVERSE_URL'
    value: dataverseUrl
  }
]
var dataverseClientIdSettings = empty(dataverseClientId) ? [] : [
  {
    name: 'DATAVERSE_CLIENT_ID'
    value: dataverseClientId
  }
]
var dataverseClientSecretSettings = empty(dataverseClientSecret) ? [] : [
  {
    name: 'DATAVERSE_CLIENT_SECRET'
    value: format(keyVaultReferenceFormat, keyVaultName, secretNames.dataverseClientSecret)
  }
]
var salesforceLoginSettings = crmProvider != 'salesforce' ? [] : [
  {
    name: 'SALESFORCE_LOGIN_URL'
    value: salesforceLoginUrl
  }
]
var salesforceClientIdSettings = (crmProvider != 'salesforce' || empty(salesforceClientId)) ? [] : [
  {
    name: 'SALESFORCE_CLIENT_ID'
    value: salesforceClientId
  }
]
var salesforceClientSecretSettings = (crmProvider != 'salesforce' || empty(salesforceClientSecret)) ? [] : [
  {
    name: 'SALESFORCE_CLIENT_SECRET'
    value: format(keyVaultReferenceFormat, keyVaultName, secretNames.salesforceClientSecret)
  }
]
var connectorSettings = concat(behaviourSettings, partnerCenterClientIdSettings, partnerCenterClientSecretSettings, dataverseUrlSettings, dataverseClientIdSettings, dataverseClientSecretSettings, salesforceLoginSettings, salesforceClientIdSettings, salesforceClientSecretSettings)

// ---------------------------------------------------------------------------------------------
// Always-ready instances (Flex Consumption), per function group: 'http' holds every HTTP function,
// the webhook among them; any other function scales on its own, named 'function:<function name>'
// (sync_worker is the queue function in shared/functions/worker.py). None at all by default.
// ---------------------------------------------------------------------------------------------

var alwaysReady = (alwaysReadyInstances == 0) ? [] : [
  {
    name: 'http'
    instanceCount: alwaysReadyInstances
  }
  {
    name: 'function:sync_worker'
    instanceCount: alwaysReadyInstances
  }
]

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: workspaceName
    appInsightsName: appInsightsName
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

// Alert rules and the operations workbook over the app's telemetry (shared/telemetry).
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    appInsightsName: monitoring.outputs.appInsightsName
    location: location
    tags: tags
    alertEmail: alertEmail
    webhookSilenceMinutes: webhookSilenceMinutes
    authFailureThreshold: authFailureThreshold
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    skuName: storageSku
    deploymentContainerName: deploymentContainerName
    queueNames: queueNames
    tableNames: [
      tableNames.links
      tableNames.state
      tableNames.audit
    ]
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: keyVaultName
    location: location
    tags: tags
    secretNames: secretNames
    partnerCenterClientSecret: partnerCenterClientSecret
    dataverseClientSecret: dataverseClientSecret
    salesforceClientSecret: salesforceClientSecret
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.properties.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    refreshTokenSecretName: secretNames.partnerCenterRefreshToken
    refreshTokenSecretExists: partnerCenterTokenStored
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

// The app starts only after its identity holds every role: the host reaches storage, Key Vault
// references resolve, and One Deploy can write the package into the deployment container.
module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: functionAppName
    planName: planName
    location: location
    tags: tags
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: deploymentContainerName
    appInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultUri: keyVault.outputs.uri
    appSettings: connectorSettings
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    alwaysReady: alwaysReady
    packageUri: effectivePackageUri
    deployPackage: deployPackage
  }
  dependsOn: [
    rbac
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

@description('Register this URL as the Partner Center webhook (python -m shared register-webhook).')
output webhookUrl string = 'https://${functionApp.outputs.defaultHostName}/api/webhooks/partner-center'

@description('Name of the function app.')
output functionAppName string = functionApp.outputs.name

@description('Name of the Key Vault holding the secrets.')
output keyVaultName string = keyVault.outputs.name

@description('URI of the Key Vault.')
output keyVaultUri string = keyVault.outputs.uri

@description('Name of the storage account (queues and tables).')
output storageAccountName string = storage.outputs.name
