"""Storage clients: a connection string locally (Azurite), managed identity in Azure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient


@dataclass(frozen=True)
class StorageConfig:
    """Either a connection string, or the account (or its service URIs) reached with an Azure identity."""

    connection_string: SecretStr | None = None
    account_name: str | None = None
    table_service_uri: str | None = None
    queue_service_uri: str | None = None
    client_id: str | None = None  # a user-assigned managed identity; unset: DefaultAzureCredential


def _credential(config: StorageConfig) -> object:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if config.client_id:
        return ManagedIdentityCredential(client_id=config.client_id)
    return DefaultAzureCredential()


def table_service(config: StorageConfig) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    if config.connection_string:
        return TableServiceClient.from_connection_string(config.connection_string.get_secret_value())
    endpoint = config.table_service_uri or f"https://{config.account_name}.table.core.windows.net"
    return TableServiceClient(endpoint=endpoint, credential=_credential(config))  # type: ignore[arg-type]


def queue_service(config: StorageConfig) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient

    if config.connection_string:
        return QueueServiceClient.from_connection_string(config.connection_string.get_secret_value())
    endpoint = config.queue_service_uri or f"https://{config.account_name}.queue.core.windows.net"
    return QueueServiceClient(account_url=endpoint, credential=_credential(config))  # type: ignore[arg-type]
