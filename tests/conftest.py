"""Shared fixtures: Azurite on free ports for the whole session, fresh table/queue names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devtools.localhost.azurite import Azurite, start_azurite


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
