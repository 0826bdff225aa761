"""The Dataverse emulator's change tracking over real HTTP: ``Prefer: odata.track-changes``, delta links with
``$deltatoken``, deleted rows as ``$deletedEntity`` entries, paging, the options the service refuses, a table
without change tracking and an expired token."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from emulators.dataverse import DataverseEmulator
from shared.crm.dynamics.delta import delta_pages
from shared.crm.dynamics.webapi import DataverseRows
from shared.domain.errors import ChangeTrackingUnavailable, DeltaLinkRefused, PermanentError
from shared.httpclient import ApiClient
from tests.test_dataverse_next_link import API, TOKEN, Recorder

HEADERS = {"Authorization": "Bearer test-token", "Accept": "application/json", "OData-Version": "4.0"}
TRACK = "odata.track-changes"
SELECT = "opportunityid,modifiedon,new_syncwithpartnercenter"


DATAVERSE_EMULATOR_OPTIONS = dict(change_tracking_off=["accounts"])


@pytest.fixture
def emu(dataverse_emu: DataverseEmulator) -> DataverseEmulator:
    return dataverse_emu


def _get(emu: DataverseEmulator, path: str, prefer: str | None = TRACK) -> requests.Response:
    url = path if path.startswith("http") else f"{emu.url}/api/data/v9.2/{path}"
    headers = dict(HEADERS) | ({"Prefer": prefer} if prefer else {})
    return requests.get(url, headers=headers, timeout=5)


def _api(emu: DataverseEmulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{emu.url}/api/data/v9.2/{path}", headers=HEADERS, timeout=5, **kwargs)


def _seed(emu: DataverseEmulator, *names: str, flagged: bool = True) -> list[str]:
    rows = emu.seed("opportunities", [{"name": n, "new_syncwithpartnercenter": flagged} for n in names])
    return [row["opportunityid"] for row in rows]


def _initial(emu: DataverseEmulator) -> dict[str, Any]:
    response = _get(emu, f"opportunities?$select={SELECT}")
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == TRACK
    return response.json()


def test_first_read_returns_every_row_and_a_delta_link(emu: DataverseEmulator) -> None:
    ids = _seed(emu, "A", "B")
    body = _initial(emu)
    assert sorted(row["opportunityid"] for row in body["value"]) == sorted(ids)
    assert all(row["@odata.etag"].startswith('W/"') for row in body["value"])
    assert set(body["value"][0]) == {"@odata.etag", "opportunityid", "modifiedon", "new_syncwithpartnercenter"}
    link = body["@odata.deltaLink"]
    assert "@odata.nextLink" not in body
    assert parse_qs(urlsplit(link).query)["$deltatoken"]
    assert parse_qs(urlsplit(link).query)["$select"] == [SELECT]


def test_delta_link_returns_changes_and_deletions_since_its_token(emu: DataverseEmulator) -> None:
    kept, changed, deleted = _seed(emu, "kept", "changed", "deleted")
    link = _initial(emu)["@odata.deltaLink"]

    nothing = _get(emu, link, prefer=None)
    assert nothing.status_code == 200, nothing.text
    assert nothing.json()["value"] == []
    assert nothing.json()["@odata.context"].endswith("/$delta")

    assert _api(emu, "PATCH", f"opportunities({changed})", json={"name": "changed again"}).status_code == 204
    assert _api(emu, "DELETE", f"opportunities({deleted})").status_code == 204
    (new,) = _seed(emu, "new")
    (created_and_deleted,) = _seed(emu, "gone at once")
    assert _api(emu, "DELETE", f"opportunities({created_and_deleted})").status_code == 204

    response = _get(emu, link)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith("#opportunities(opportunityid,modifiedon,new_syncwithpartnercenter)/$delta")
    rows = {row.get("opportunityid") or row["id"]: row for row in body["value"]}
    assert set(rows) == {changed, deleted, new, created_and_deleted}
    assert kept not in rows
    assert rows[changed]["@odata.etag"] == emu.record("opportunities", changed)["@odata.etag"]  # type: ignore[index]
    for gone in (deleted, created_and_deleted):
        assert rows[gone]["reason"] == "deleted"
        assert rows[gone]["@odata.context"].endswith("/$metadata#opportunities/$deletedEntity")
    newer = body["@odata.deltaLink"]
    assert newer != link
    assert _get(emu, newer).json()["value"] == []


def test_track_changes_pages_with_next_links_and_ends_with_the_delta_link(emu: DataverseEmulator) -> None:
    ids = _seed(emu, *[f"row {n}" for n in range(5)])
    seen: list[str] = []
    response = _get(emu, f"opportunities?$select={SELECT}", prefer=f"{TRACK},odata.maxpagesize=2")
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        assert TRACK in response.headers["Preference-Applied"]
        assert "odata.maxpagesize=2" in response.headers["Preference-Applied"]
        body = response.json()
        pages += 1
        seen += [row["opportunityid"] for row in body["value"]]
        if "@odata.nextLink" not in body:
            break
        assert "@odata.deltaLink" not in body
        response = _get(emu, body["@odata.nextLink"], prefer=f"{TRACK},odata.maxpagesize=2")
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert "$deltatoken=" in body["@odata.deltaLink"]


@pytest.mark.parametrize("option", ["$filter=name eq 'A'", "$orderby=name", "$top=1", "$expand=parentaccountid"])
def test_query_options_the_service_refuses_with_track_changes(emu: DataverseEmulator, option: str) -> None:
    response = _get(emu, f"opportunities?$select=name&{option}")
    assert response.status_code == 400
    name = option.partition("=")[0]
    assert response.json()["error"]["message"] == (
        f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.'
    )


def test_a_table_without_change_tracking_refuses_the_preference(emu: DataverseEmulator) -> None:
    refused = _get(emu, "accounts?$select=name")
    assert refused.status_code == 400
    assert "Change tracking is not enabled" in refused.json()["error"]["message"]
    assert "Preference-Applied" not in refused.headers
    # The ordinary read of the same table still works.
    assert _get(emu, "accounts?$select=name", prefer=None).status_code == 200


def test_change_tracking_is_switched_per_table_through_the_control_api(emu: DataverseEmulator) -> None:
    off = requests.post(f"{emu.url}/_emulator/change-tracking", json={"table": "opportunities", "enabled": False})
    assert off.status_code == 204
    assert _get(emu, "opportunities?$select=name").status_code == 400
    requests.post(f"{emu.url}/_emulator/change-tracking", json={"table": "opportunities", "enabled": True})
    assert _get(emu, "opportunities?$select=name").status_code == 200
    emu.set_change_tracking("opportunities", enabled=False)
    emu.reset()  # back to the constructor's configuration
    assert _get(emu, "opportunities?$select=name").status_code == 200
    assert _get(emu, "accounts?$select=name").status_code == 400


def test_an_expired_token_is_refused(emu: DataverseEmulator) -> None:
    _seed(emu, "A")
    link = _initial(emu)["@odata.deltaLink"]
    assert _get(emu, link).status_code == 200
    response = requests.post(f"{emu.url}/_emulator/change-tracking", json={"expirySeconds": 1})
    assert response.status_code == 204
    time.sleep(1.2)
    refused = _get(emu, link)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("Version stamp associated with the client has expired")
    # A full read gives a fresh token that works.
    fresh = _initial(emu)["@odata.deltaLink"]
    assert _get(emu, fresh).status_code == 200


def test_a_token_from_another_organisation_is_refused(emu: DataverseEmulator) -> None:
    link = _initial(emu)["@odata.deltaLink"]
    emu.set_change_tracking("opportunities", expiry=timedelta(days=7))
    forged = link.split("$deltatoken=")[0] + "$deltatoken=99999999%2101%2F01%2F2030%2000%3A00%3A00"
    assert _get(emu, forged).status_code == 400
    assert _get(emu, link.split("$deltatoken=")[0] + "$deltatoken=garbage").status_code == 400


def test_ordinary_reads_are_unchanged_without_the_preference(emu: DataverseEmulator) -> None:
    _seed(emu, "A", "B")
    body = _get(emu, "opportunities?$select=name&$filter=name eq 'A'&$top=1", prefer=None).json()
    assert [row["name"] for row in body["value"]] == ["A"]
    assert "@odata.deltaLink" not in body


def test_the_table_definition_says_whether_it_tracks_changes(emu: DataverseEmulator) -> None:
    def tracked(logical: str) -> bool:
        response = _get(emu, f"EntityDefinitions(LogicalName='{logical}')?$select=ChangeTrackingEnabled", prefer=None)
        assert response.status_code == 200, response.text
        assert response.json()["@odata.context"].endswith("#EntityDefinitions(ChangeTrackingEnabled)/$entity")
        return response.json()["ChangeTrackingEnabled"]

    assert tracked("opportunity") is True
    assert tracked("account") is False  # off in this organisation
    emu.set_change_tracking("opportunities", enabled=False)
    assert tracked("opportunity") is False
    unknown = _get(emu, "EntityDefinitions(LogicalName='opportunity')?$select=NoSuchProperty", prefer=None)
    assert unknown.status_code == 400
    assert _get(emu, "EntityDefinitions(LogicalName='nosuchtable')", prefer=None).status_code == 404


# -- the app's side: shared.crm.dynamics.delta ---------------------------------------------------------------------
def _rows(url: str) -> DataverseRows:
    return DataverseRows(ApiClient("Dynamics 365", f"{url}{API}", lambda: TOKEN, sleep=lambda s: None))


def _read(web: DataverseRows, link: str | None, page_size: int = 5000) -> list[Any]:
    return list(delta_pages(web, "opportunities", "opportunityid", "new_syncwithpartnercenter", link, page_size))


def test_the_adapter_keeps_flagged_rows_and_reports_every_deletion(emu: DataverseEmulator) -> None:
    flagged = _seed(emu, "flagged 1", "flagged 2", "flagged 3")
    (unflagged,) = _seed(emu, "not flagged", flagged=False)
    web = _rows(emu.url)
    pages = _read(web, None, page_size=2)
    assert [page.last for page in pages] == [False, True]  # four rows, two a page
    assert sorted(c.record_id for page in pages for c in page.changed) == sorted(flagged)
    assert all(c.version.startswith('W/"') and c.changed_at for page in pages for c in page.changed)
    assert "$skiptoken=" in pages[0].next_link and "$deltatoken=" in pages[-1].next_link

    _api(emu, "DELETE", f"opportunities({flagged[0]})")
    _api(emu, "DELETE", f"opportunities({unflagged})")
    _api(emu, "PATCH", f"opportunities({flagged[1]})", json={"name": "edited"})
    (page,) = _read(web, pages[-1].next_link)
    assert [c.record_id for c in page.changed] == [flagged[1]]
    assert sorted(page.deleted) == sorted([flagged[0], unflagged])  # whether it was flagged is not known any more


def test_the_adapter_tells_a_table_without_change_tracking_from_a_refused_token(emu: DataverseEmulator) -> None:
    web = _rows(emu.url)
    link = _read(web, None)[-1].next_link
    emu.set_change_tracking("opportunities", expiry=timedelta(seconds=0))
    time.sleep(1.1)  # the token's time has whole seconds
    with pytest.raises(DeltaLinkRefused, match="expired"):
        _read(web, link)
    emu.set_change_tracking("opportunities", enabled=False)
    with pytest.raises(ChangeTrackingUnavailable, match="not enabled"):
        _read(web, None)


def test_a_service_that_ignores_the_preference_is_not_change_tracking() -> None:
    with Recorder(lambda path: {"value": [{"opportunityid": "x", "new_syncwithpartnercenter": True}]}) as dataverse:
        with pytest.raises(ChangeTrackingUnavailable, match="not applied"):
            _read(_rows(f"http://127.0.0.1:{dataverse.port}"), None)


def test_a_saved_link_elsewhere_is_refused_and_gets_no_token() -> None:
    with Recorder() as foreign, Recorder() as dataverse:
        link = f"http://127.0.0.1:{foreign.port}{API}/opportunities?$deltatoken=1%2101%2F01%2F2030%2000%3A00%3A00"
        with pytest.raises(PermanentError, match="not followed"):
            _read(_rows(f"http://127.0.0.1:{dataverse.port}"), link)
        assert foreign.requests == [] and dataverse.requests == []
