"""Storage clients from settings: a connection string locally (Azurite), managed identity in Azure."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    from ..settings import Settings


def _credential(settings: Settings) -> object:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.storage_client_id:
        return ManagedIdentityCredential(client_id=settings.storage_client_id)
    return DefaultAzureCredential()


def table_service(settings: Settings) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    if settings.azure_webjobs_storage:
        return TableServiceClient.from_connection_string(settings.azure_webjobs_storage.get_secret_value())
    endpoint = settings.storage_table_service_uri or f"https://{settings.storage_account_name}.table.core.windows.net"
    return TableServiceClient(endpoint=endpoint, credential=_credential(settings))  # type: ignore[arg-type]


def queue_service(settings: Settings) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient

    if settings.azure_webjobs_storage:
        return QueueServiceClient.from_connection_string(settings.azure_webjobs_storage.get_secret_value())
    endpoint = settings.storage_queue_service_uri or f"https://{settings.storage_account_name}.queue.core.windows.net"
    return QueueServiceClient(account_url=endpoint, credential=_credential(settings))  # type: ignore[arg-type]
