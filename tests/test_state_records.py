"""The typed state records on Table Storage: each one round-trips, records that share a row keep each other's
columns, and rows written before the records were typed (existing deployments have them) read the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from shared.domain.bounded import ERROR_MAX_UNITS, utf16_units
from shared.ports import CreateFailure, CredentialFailure, FeedWatermark, Health, Link, Pause
from shared.store.tables import CRM_INDEX_PREFIX, LINK_PARTITION, TableSyncStore, lease_key

AT = datetime(2031, 3, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def service(azurite) -> TableServiceClient:
    return TableServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def store(service, storage_names) -> TableSyncStore:
    return TableSyncStore(
        service, storage_names["SYNC_LINKS_TABLE"], storage_names["SYNC_STATE_TABLE"], storage_names["SYNC_AUDIT_TABLE"]
    )


def test_nothing_saved_reads_as_nothing_and_reading_creates_no_table(service, store):
    assert store.get_watermark("crm-poll") is None
    assert store.get_health() == Health()
    assert store.get_create_failure("opp-1") is None
    assert store.get_link("ref-1") is None and store.find_link_by_crm_id("opp-1") is None
    ours = {store.links.table_name, store.state.table_name, store.audit.table_name}
    assert not ours & {table.name for table in service.list_tables()}


def test_a_feed_watermark_round_trips(store):
    mark = FeedWatermark(
        watermark=AT,
        versions={"0123456789": AT, "abcdefabcd": AT - timedelta(seconds=40)},
        last_run_at=AT + timedelta(minutes=1),
        last_seen=7,
        last_enqueued=5,
        last_interruption="Partner Center is throttling",
    )
    store.save_watermark("crm-poll", mark)
    assert store.get_watermark("crm-poll") == mark
    assert store.get_watermark("reconcile") is None


def test_the_pause_and_the_refused_credential_share_a_row_and_keep_each_other(store):
    failure = CredentialFailure("Dataverse", "token refused", AT)
    pause = Pause(AT + timedelta(minutes=15), "REQUEST_LIMIT_EXCEEDED", AT)
    store.save_credential_failure(failure)
    store.save_pause(pause)
    assert store.get_health() == Health(pause, failure)
    store.clear_credential_failure(AT + timedelta(minutes=2))
    assert store.get_health() == Health(pause, None)


def test_a_create_failure_is_kept_until_the_pair_is_recorded_and_its_reason_fits_the_row(store):
    store.save_create_failure("opp/1", CreateFailure("fingerprint-1", "Not sent: " + "理由" * 20_000))
    kept = store.get_create_failure("opp/1")
    assert kept is not None and kept.crm_fingerprint == "fingerprint-1"
    assert utf16_units(kept.reason) <= ERROR_MAX_UNITS and kept.reason.startswith("Not sent: ")
    store.save_link(Link("referral-1", crm_id="opp/1", last_status="ok"))  # replaces the record's index entry
    assert store.get_create_failure("opp/1") is None


def test_rows_written_before_the_records_were_typed_read_the_same(store, service, storage_names):
    # The columns and keys as earlier versions wrote them, straight into the state partition.
    store.set_state(
        "health",
        {
            "Until": AT,
            "Reason": "quota",
            "Since": AT,
            "AuthService": "Salesforce",
            "AuthMessage": "m",
            "AuthFailedAt": AT,
        },
    )
    store.set_state("crm-invalid:opp-1", {"CrmFingerprint": "fp", "Reason": "Not sent to Partner Center: x"})
    store.set_state("crm-invalid:opp-2", {"CrmFingerprint": "", "Reason": ""})  # cleared
    store.set_state(
        "crm-poll",
        {
            "Watermark": AT,
            "Versions": "0123456789:0,abcdefabcd:5",
            "LastRunAt": AT,
            "LastSeen": 3,
            "LastEnqueued": 2,
            "LastInterruption": "",
        },
    )
    assert store.get_health() == Health(Pause(AT, "quota", AT), CredentialFailure("Salesforce", "m", AT))
    # Create failures had rows of their own until 0.16: they move into the records' CRM index entries when a
    # process starts (here, a new store), and leave the state partition.
    upgraded = TableSyncStore(service, *(storage_names[f"SYNC_{name}_TABLE"] for name in ("LINKS", "STATE", "AUDIT")))
    upgraded.ensure()
    assert upgraded.get_create_failure("opp-1") == CreateFailure("fp", "Not sent to Partner Center: x")
    assert upgraded.get_create_failure("opp-2") is None
    assert store.get_state("crm-invalid:opp-1") is None
    assert store.get_watermark("crm-poll") == FeedWatermark(
        AT, {"0123456789": AT, "abcdefabcd": AT - timedelta(seconds=5)}, AT, 3, 2, ""
    )


def test_the_records_write_the_columns_earlier_versions_read(store):
    store.save_create_failure("opp-1", CreateFailure("fp", "why"))
    entry = store.links.get_entity(LINK_PARTITION, CRM_INDEX_PREFIX + "opp-1")  # in the record's CRM index entry
    assert {k: v for k, v in entry.items() if k not in ("PartitionKey", "RowKey")} == {
        "CrmFingerprint": "fp",
        "Reason": "why",
    }
    store.save_pause(Pause(AT, "quota", AT))
    store.save_credential_failure(CredentialFailure("Dataverse", "refused", AT))
    assert store.get_state("health") == {
        "Until": AT,
        "Reason": "quota",
        "Since": AT,
        "AuthService": "Dataverse",
        "AuthMessage": "refused",
        "AuthFailedAt": AT,
        "AuthCause": "",  # added with credential causes; earlier versions ignore it
    }
    assert store.acquire_lease("crm:opp-1", "worker-a", 60)
    row = store.links.get_entity(LINK_PARTITION, lease_key("crm:opp-1"))
    assert row["Owner"] == "worker-a" and row["Until"] > datetime.now(UTC)
