"""Customer contacts are never dropped (issue 11): Dynamics 365 keeps one contact on an opportunity (the
primary one), so a seller who changes it replaces Partner Center's first contact and keeps the others."""

from __future__ import annotations

import requests

from emulators.partner_center.samples import cosell_referral
from tests.crm_view import DV_TOKEN

TEAM = [
    {"firstName": "Avery", "lastName": "Howard", "email": "avery.howard@contoso.example", "title": "CIO"},
    {"firstName": "Sam", "lastName": "Patel", "email": "sam.patel@contoso.example", "title": "Architect"},
]


def test_a_new_primary_contact_in_dynamics_keeps_the_rest_of_the_customer_team(stack):
    body = cosell_referral()
    body["customerProfile"]["team"] = TEAM
    referral = stack.pc.seed_referral(body)
    stack.deliver_and_drain(1)
    [row] = stack.opportunities()
    api = f"{stack.view.emulator.url}/api/data/v9.2"
    headers = {"Authorization": f"Bearer {DV_TOKEN}", "Prefer": "return=representation"}
    contact = requests.post(
        f"{api}/contacts",
        json={"firstname": "Lee", "lastname": "Chen", "emailaddress1": "lee.chen@contoso.example"},
        headers=headers,
        timeout=10,
    ).json()
    response = requests.patch(
        f"{api}/opportunities({row['id']})",
        json={"parentcontactid@odata.bind": f"/contacts({contact['contactid']})"},
        headers=headers,
        timeout=10,
    )
    assert response.status_code in (200, 204), response.text
    stack.poll()
    stack.host.drain()
    team = stack.pc.referral(referral["id"])["customerProfile"]["team"]
    assert [member["email"] for member in team] == ["lee.chen@contoso.example", "sam.patel@contoso.example"]
