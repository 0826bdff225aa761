// Key Vault (RBAC authorization, soft delete, purge protection) holding the CRM and Partner Center
// secrets. The app reads them through Key Vault references and writes the Partner Center token
// cache (the rotating refresh token) back here. Secrets left empty at deployment are not created;
// store them later with `az keyvault secret set` (see docs/deploy.md).

@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Names of the secrets, keyed by purpose (partnerCenterClientSecret, dataverseClientSecret, salesforceClientSecret).')
param secretNames object

@secure()
@description('Partner Center app registration client secret; empty for a public client.')
param partnerCenterClientSecret string

@secure()
@description('Dataverse app registration client secret; empty when the managed identity is the Dataverse application user.')
param dataverseClientSecret string

@secure()
@description('Salesforce connected app client secret; empty when Salesforce is not used.')
param salesforceClientSecret string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource partnerCenterClientSecretResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(partnerCenterClientSecret)) {
  parent: vault
  name: secretNames.partnerCenterClientSecret
  properties: {
    value: partnerCenterClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource dataverseClientSecretResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(dataverseClientSecret)) {
  parent: vault
  name: secretNames.dataverseClientSecret
  properties: {
    value: dataverseClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource salesforceClientSecretResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(salesforceClientSecret)) {
  parent: vault
  name: secretNames.salesforceClientSecret
  properties: {
    value: salesforceClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
