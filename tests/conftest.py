"""Shared fixtures: Azurite on free ports for the whole session, fresh table/queue names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient

from devtools.localhost.azurite import Azurite, start_azurite
from emulators.dataverse import DataverseEmulator
from emulators.salesforce.emulator import SalesforceEmulator
from shared.store.queue import StorageJobQueue
from shared.store.tables import TableSyncStore


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    instance = start_azurite()
    yield instance
    instance.stop()


@pytest.fixture
def storage_names() -> dict[str, str]:
    """Unique table names so tests sharing one Azurite never see each other's rows."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "SYNC_LINKS_TABLE": f"links{suffix}",
        "SYNC_STATE_TABLE": f"state{suffix}",
        "SYNC_AUDIT_TABLE": f"audit{suffix}",
    }


from tests.e2e_stack import crm, dv, make_stack, pc, sf, stack  # noqa: E402,F401  (shared end-to-end fixtures)


@pytest.fixture
def feed_parts(azurite, storage_names) -> Iterator[tuple[TableSyncStore, StorageJobQueue]]:
    """A table store and a queue of their own on Azurite, for change-feed tests."""
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    store = TableSyncStore(
        tables, storage_names["SYNC_LINKS_TABLE"], storage_names["SYNC_STATE_TABLE"], storage_names["SYNC_AUDIT_TABLE"]
    )
    queues = QueueServiceClient.from_connection_string(azurite.connection_string)
    queue = StorageJobQueue(queues, name=f"feed-{uuid.uuid4().hex[:10]}")
    yield store, queue
    queue.client.delete_queue()
    queue.poison.delete_queue()


@pytest.fixture(scope="module")
def dataverse_server(request: pytest.FixtureRequest) -> Iterator[DataverseEmulator]:
    """One Dataverse emulator per test module, over real HTTP; a module's ``DATAVERSE_EMULATOR_OPTIONS`` (keyword
    arguments of DataverseEmulator) configure it."""
    emulator = DataverseEmulator(**getattr(request.module, "DATAVERSE_EMULATOR_OPTIONS", {}))
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def dataverse_emu(dataverse_server: DataverseEmulator) -> DataverseEmulator:
    """The module's Dataverse emulator, reset to its configured organisation before each test."""
    dataverse_server.reset()
    return dataverse_server


@pytest.fixture(scope="module")
def salesforce_server(request: pytest.FixtureRequest) -> Iterator[SalesforceEmulator]:
    """One Salesforce emulator per test module, over real HTTP; a module's ``SALESFORCE_EMULATOR_OPTIONS`` (keyword
    arguments of SalesforceEmulator) configure it."""
    emulator = SalesforceEmulator(**getattr(request.module, "SALESFORCE_EMULATOR_OPTIONS", {}))
    emulator.start()
    yield emulator
    emulator.stop()
