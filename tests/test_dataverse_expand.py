"""The Dataverse emulator's ``$expand`` on collection reads, and the deep insert that makes a new customer with its
opportunity, as strict as the service: a collection-valued navigation property takes nested ``$select``,
``$filter``, ``$orderby`` and ``$top``; a single-valued one only ``$select``; anything else is refused."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulators.dataverse import DataverseEmulator
from shared.crm.dynamics.mapping import default_mapping

API = "/api/data/v9.2"
HEADERS = {"Authorization": "Bearer expand-test", "Prefer": "return=representation"}
CONTACTS = "contact_customer_accounts"


@pytest.fixture
def emu(dataverse_emu: DataverseEmulator) -> DataverseEmulator:
    return dataverse_emu


def _get(emu: DataverseEmulator, entity_set: str, **params: str) -> requests.Response:
    return requests.get(f"{emu.url}{API}/{entity_set}", params=params, headers=HEADERS, timeout=5)


def _post(emu: DataverseEmulator, entity_set: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{emu.url}{API}/{entity_set}", json=body, headers=HEADERS, timeout=5)


def _customer(emu: DataverseEmulator) -> str:
    account = emu.seed("accounts", {"name": "Contoso (UK); Ltd", "address1_postalcode": "98052"})[0]["accountid"]
    bind = {"parentcustomerid_account@odata.bind": f"/accounts({account})"}
    for first, email in (("Ada", "ada@contoso.example"), ("Grace", "grace@contoso.example"), ("Alan", None)):
        assert _post(emu, "contacts", {"firstname": first, "lastname": "X", "emailaddress1": email, **bind}).ok
    assert _post(emu, "contacts", {"firstname": "Ada", "lastname": "Elsewhere", "emailaddress1": "ada@contoso.example"})
    return str(account)


def test_an_account_read_brings_its_contacts_filtered_ordered_and_selected(emu: DataverseEmulator) -> None:
    account = _customer(emu)
    nested = "$select=firstname,emailaddress1;$filter=emailaddress1 eq 'ada@contoso.example' or firstname eq 'Alan'"
    response = _get(
        emu,
        "accounts",
        **{
            "$select": "name",
            "$filter": "name eq 'Contoso (UK); Ltd'",  # brackets and ; in a literal do not split the options
            "$expand": f"{CONTACTS}({nested};$orderby=firstname desc)",
        },
    )
    assert response.status_code == 200, response.text
    [row] = response.json()["value"]
    assert row["accountid"] == account and row["name"] == "Contoso (UK); Ltd"
    # Only the account's own contacts (not the Ada of no account), only those the filter names, in order.
    assert [(c["firstname"], c["emailaddress1"]) for c in row[CONTACTS]] == [
        ("Alan", None),
        ("Ada", "ada@contoso.example"),
    ]
    assert set(row[CONTACTS][0]) == {"@odata.etag", "contactid", "firstname", "emailaddress1"}

    top = _get(emu, "accounts", **{"$select": "name", "$expand": f"{CONTACTS}($orderby=firstname;$top=1)"})
    assert [c["firstname"] for c in top.json()["value"][0][CONTACTS]] == ["Ada"]
    none = _get(emu, "accounts", **{"$expand": f"{CONTACTS}($filter=firstname eq 'Nobody')"})
    assert none.json()["value"][0][CONTACTS] == []


def test_a_contact_read_can_expand_its_account(emu: DataverseEmulator) -> None:
    account = _customer(emu)
    response = _get(
        emu,
        "contacts",
        **{
            "$select": "firstname",
            "$filter": "firstname eq 'Grace'",
            "$expand": "parentcustomerid_account($select=name)",
        },
    )
    [row] = response.json()["value"]
    assert row["parentcustomerid_account"]["accountid"] == account
    assert row["parentcustomerid_account"]["name"] == "Contoso (UK); Ltd"


@pytest.mark.parametrize(
    ("entity_set", "expand"),
    [
        ("accounts", f"{CONTACTS}($expand=parentcustomerid_account)"),  # a nested $expand
        ("accounts", f"{CONTACTS}($skip=1)"),  # an option the service does not take there
        ("accounts", f"{CONTACTS}($filter=nosuchcolumn eq 1)"),
        ("accounts", f"{CONTACTS}($select=nosuchcolumn)"),
        ("accounts", f"{CONTACTS}($top=0)"),
        ("accounts", f"{CONTACTS}($filter=firstname eq 'unclosed)"),
        ("accounts", "nosuchnavigation"),
        ("contacts", "parentcustomerid_account($filter=name eq 'x')"),  # single-valued: $select only
        ("contacts", "parentcustomerid_account($orderby=name)"),
        ("accounts", ",".join([CONTACTS] * 16)),  # more than the service's 15
    ],
)
def test_an_expand_the_service_refuses_is_refused(emu: DataverseEmulator, entity_set: str, expand: str) -> None:
    _customer(emu)
    response = _get(emu, entity_set, **{"$expand": expand})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_a_new_customer_is_created_inside_the_opportunity_create(emu: DataverseEmulator) -> None:
    """The shape the adapter sends: the new primary contact carries the new account (with the other new contact),
    and the opportunity binds that account by the id chosen for it; nested rows exist before the row they are
    nested in is made, so the bind resolves."""
    account_id, primary_id = "7d0d7a5e-0000-4000-8000-000000000001", "7d0d7a5e-0000-4000-8000-000000000002"
    key = default_mapping().column("referral_id")
    body = {
        "name": "Deep",
        key: "ref-deep",
        "customerid_account@odata.bind": f"/accounts({account_id})",
        "parentcontactid": {
            "contactid": primary_id,
            "lastname": "Primary",
            "parentcustomerid_account": {
                "accountid": account_id,
                "name": "Fabrikam",
                CONTACTS: [{"lastname": "Second", "emailaddress1": "second@fabrikam.example"}],
            },
        },
    }
    response = _post(emu, "opportunities", body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["_customerid_value"], created["_parentcontactid_value"]) == (account_id, primary_id)
    contacts = emu.table("contacts")
    assert sorted(c["lastname"] for c in contacts) == ["Primary", "Second"]
    assert all(c["_parentcustomerid_value"] == account_id for c in contacts)

    # Sent again (a lost answer): the key is taken, and none of the nested rows is made twice.
    again = _post(emu, "opportunities", {**body, "name": "Again"})
    assert again.status_code == 412
    assert len(emu.table("opportunities")) == 1 and len(emu.table("accounts")) == 1 and len(contacts) == 2
    assert len(emu.table("contacts")) == 2


def test_a_bind_to_an_account_that_no_nested_row_makes_is_refused(emu: DataverseEmulator) -> None:
    body = {
        "name": "Deep",
        "customerid_account@odata.bind": "/accounts(7d0d7a5e-0000-4000-8000-00000000dead)",
        "parentcontactid": {"lastname": "Primary"},
    }
    response = _post(emu, "opportunities", body)
    assert response.status_code == 400, response.text
    assert emu.table("opportunities") == [] and emu.table("contacts") == []
