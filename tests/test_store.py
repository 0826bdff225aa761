"""Table and queue adapters against Azurite: links with etag conditions, leases, audit, job encoding."""

from __future__ import annotations

import base64
import json

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient

from shared.domain.errors import PreconditionFailed
from shared.ports import AuditEntry, Job, Link
from shared.settings import load_settings
from shared.store.connections import queue_service, table_service
from shared.store.queue import StorageJobQueue, decode_job
from shared.store.tables import TableSyncStore, safe_key
from shared.wiring import storage_config


@pytest.fixture
def settings(azurite, storage_names):
    return load_settings(
        AzureWebJobsStorage=azurite.connection_string,
        DATAVERSE_URL="http://127.0.0.1:1",
        PARTNER_CENTER_ACCESS_TOKEN="t",
        **storage_names,
    )


@pytest.fixture
def store(settings):
    return TableSyncStore(
        table_service(storage_config(settings)), settings.links_table, settings.state_table, settings.audit_table
    )


def test_link_insert_then_conditional_replace(store):
    link = store.save_link(Link(referral_id="ref-1", crm_id="crm-1", pc_fingerprint="a", last_status="ok"))
    assert link.etag
    stale = store.get_link("ref-1")
    fresh = store.get_link("ref-1")
    fresh.pc_fingerprint = "b"
    store.save_link(fresh)
    stale.pc_fingerprint = "c"
    with pytest.raises(PreconditionFailed):
        store.save_link(stale)
    assert store.get_link("ref-1").pc_fingerprint == "b"
    assert store.find_link_by_crm_id("crm-1").referral_id == "ref-1"


def test_second_insert_of_same_link_is_a_conflict(store):
    store.save_link(Link(referral_id="ref-2"))
    with pytest.raises(PreconditionFailed):
        store.save_link(Link(referral_id="ref-2"))


def test_lease_is_exclusive_until_released(store):
    assert store.acquire_lease("pc-referral:x", "worker-a", 60)
    assert not store.acquire_lease("pc-referral:x", "worker-b", 60)
    store.release_lease("pc-referral:x", "worker-b")  # not the owner: no effect
    assert not store.acquire_lease("pc-referral:x", "worker-b", 60)
    store.release_lease("pc-referral:x", "worker-a")
    assert store.acquire_lease("pc-referral:x", "worker-b", 60)


def test_expired_lease_can_be_taken_over(store):
    assert store.acquire_lease("k", "a", -1)
    assert store.acquire_lease("k", "b", 60)


def test_audit_is_append_only_newest_first(store):
    for i in range(3):
        store.append_audit(AuditEntry(record_key="ref/3?", action=f"a{i}", direction="pc->crm", message=f"m{i}"))
    trail = store.audit_trail("ref/3?")
    assert [e.action for e in trail] == ["a2", "a1", "a0"]


def test_state_merge(store):
    store.set_state("watermark", {"Value": "1"})
    store.set_state("watermark", {"Other": 2})
    assert store.get_state("watermark") == {"Value": "1", "Other": 2}
    assert store.get_state("missing") is None


def test_safe_key_escapes_forbidden_characters():
    assert "/" not in safe_key("a/b\\c#d?e") and "?" not in safe_key("a?")


def test_jobs_are_base64_json_as_the_functions_host_expects(settings):
    queue = StorageJobQueue(queue_service(storage_config(settings)), name=f"jobs{settings.links_table[-8:]}")
    queue.enqueue(Job("pc-referral", "ref-9", reason="referral-updated"))
    raw_client = QueueServiceClient.from_connection_string(settings.azure_webjobs_storage.get_secret_value())
    raw = raw_client.get_queue_client(queue.client.queue_name).peek_messages()[0].content
    decoded = json.loads(base64.b64decode(raw))
    assert decoded["kind"] == "pc-referral" and decoded["recordId"] == "ref-9"
    assert decoded["enqueuedAt"]
    assert decode_job(json.dumps(decoded)).record_id == "ref-9"


def test_bad_job_messages_are_refused():
    with pytest.raises(ValueError):
        decode_job("not json")
    with pytest.raises(ValueError):
        decode_job(json.dumps({"kind": "pc-referral"}))


def test_table_service_uses_connection_string(settings):
    assert isinstance(table_service(storage_config(settings)), TableServiceClient)


class _Calls:
    """Counts the Table Storage requests a client makes (the requests still go to Azurite)."""

    def __init__(self, monkeypatch, client, *names: str) -> None:
        self.made: list[str] = []
        for name in names:
            original = getattr(client, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.made.append(_name)
                return _original(*args, **kwargs)

            monkeypatch.setattr(client, name, counted)


def test_releasing_a_lease_is_one_conditional_delete(store, monkeypatch):
    assert store.acquire_lease("crm:one", "worker-a", 60)
    assert store.renew_lease("crm:one", "worker-a", 60)
    calls = _Calls(monkeypatch, store.links, "get_entity", "delete_entity", "update_entity")
    store.release_lease("crm:one", "worker-a")
    assert calls.made == ["delete_entity"]
    assert store.acquire_lease("crm:one", "worker-b", 60)  # it is free again


def test_a_lease_taken_over_is_not_released_by_its_old_owner(store):
    assert store.acquire_lease("crm:two", "worker-a", -1)  # already expired
    assert store.acquire_lease("crm:two", "worker-b", 60)
    store.release_lease("crm:two", "worker-a")
    assert not store.acquire_lease("crm:two", "worker-c", 60)  # worker-b still holds it


def test_saving_a_link_rewrites_the_crm_index_only_when_it_changes(store, monkeypatch):
    link = store.save_link(Link(referral_id="ref-9", crm_id="crm-9", crm_etag='W/"1"', last_status="ok"))
    written: list[list[str]] = []  # per request: the rows it writes
    original = store.links.submit_transaction

    def counted(operations, **kwargs):
        written.append([str(entity["RowKey"]) for _, entity, *_ in operations])
        return original(operations, **kwargs)

    monkeypatch.setattr(store.links, "submit_transaction", counted)
    link.last_values = '{"name": "x"}'
    link = store.save_link(link)
    again = store.get_link("ref-9")
    assert again is not None
    again.pc_fingerprint = "changed"
    store.save_link(again)
    assert written == [["ref-9"], ["ref-9"]]  # neither save changed the crm id, its version or the status
    again.crm_etag = 'W/"2"'
    store.save_link(again)
    assert written[-1] == ["ref-9", "~crm~crm-9"]  # the link and its index row, in one request
    state = store.crm_link_state("crm-9")
    assert state is not None and (state.referral_id, state.crm_etag, state.last_status) == ("ref-9", 'W/"2"', "ok")
    found = store.find_link_by_crm_id("crm-9")
    assert found is not None and found.pc_fingerprint == "changed"


def test_a_link_refused_for_a_stale_etag_leaves_its_crm_index_as_it_was(store):
    store.save_link(Link(referral_id="ref-10", crm_id="crm-10", crm_etag='W/"1"', last_status="ok"))
    stale = store.get_link("ref-10")
    fresh = store.get_link("ref-10")
    fresh.crm_etag = 'W/"2"'
    store.save_link(fresh)
    stale.crm_etag, stale.last_status = 'W/"3"', "pending"
    with pytest.raises(PreconditionFailed):
        store.save_link(stale)
    # Written together or not at all: an echo check never meets an index that names a version the link does not.
    state = store.crm_link_state("crm-10")
    assert state is not None and (state.crm_etag, state.last_status) == ('W/"2"', "ok")


def test_crm_index_rows_of_an_earlier_version_move_beside_the_links_on_first_start(settings):
    service = table_service(storage_config(settings))
    links = service.get_table_client(settings.links_table)
    try:
        links.create_table()
    except Exception:
        pass
    links.create_entity({"PartitionKey": "crm", "RowKey": "crm-old", "ReferralId": "ref-old", "CrmEtag": 'W/"7"'})
    links.create_entity({"PartitionKey": "referral", "RowKey": "ref-old", "ReferralId": "ref-old", "CrmId": "crm-old"})
    upgraded = TableSyncStore(service, settings.links_table, settings.state_table, settings.audit_table)
    upgraded.ensure()
    state = upgraded.crm_link_state("crm-old")
    assert state is not None and (state.referral_id, state.crm_etag) == ("ref-old", 'W/"7"')
    assert list(links.query_entities("PartitionKey eq 'crm'")) == []
    assert [link.referral_id for link in upgraded.iter_links()] == ["ref-old"]  # index rows are not links
