"""Routing inbound opportunities (INBOUND_OWNER): who owns an opportunity the connector makes from a Partner Center
referral, for Dynamics 365 and Salesforce.

The rules' grammar is checked on its own; everything else runs end to end (the Partner Center emulator, the real
function app, Azurite, and the CRM emulators over HTTP). Owners are read and changed over the CRM's own API, as a
seller's CRM does: Dataverse's ``_ownerid_value`` (with the table it points at), Salesforce's ``OwnerId``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import requests

from emulators.dataverse.schema import (
    AMERICAS_TEAM_ID,
    EMEA_SELLER_ID,
    INBOUND_TEAM_ID,
    INTEGRATION_USER_ID,
    US_SELLER_ID,
)
from emulators.salesforce import schema as sf_schema
from shared import wiring
from shared.domain.errors import PermanentError, PreconditionFailed, ValidationFailed
from shared.domain.mapping import referral_to_opportunity
from shared.domain.opportunity import CustomerAddress, Opportunity
from shared.domain.referral import Referral
from shared.domain.routing import Owner, parse_owner, parse_routing
from shared.settings import SettingsError
from tests.crm_view import DV_TOKEN, SELLER_USERNAME
from tests.e2e_stack import CRMS, Stack

ROUTED_SOLUTION = "SOL-55120-RTE"
ELSEWHERE = "DE"


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    """Every end-to-end test here runs against both CRMs."""
    return request.param


# -- the rules ------------------------------------------------------------------------------------------------------
def _mapped(country: str | None = None, solutions: tuple[str, ...] = ()) -> Opportunity:
    return Opportunity(customer_address=CustomerAddress(country=country), solution_ids=solutions)


def test_first_matching_rule_names_the_owner():
    routing = parse_routing("country:US=user:u-1; country:CA,mx=team:t-1;solution:SOL-1=user:u-2;*=team:t-2")
    owner = {
        "US": "user:u-1",
        "MX": "team:t-1",  # listed in lower case: countries compare case-insensitively
        "FR": "team:t-2",
    }
    for country, expected in owner.items():
        rule = routing.rule_for(_mapped(country))
        assert rule is not None and str(rule.owner) == expected
    # A US customer asking for SOL-1 stays with the country rule, which comes first.
    assert str(routing.rule_for(_mapped("US", ("SOL-1",))).owner) == "user:u-1"  # type: ignore[union-attr]
    assert str(routing.rule_for(_mapped("FR", ("SOL-9", "sol-1"))).owner) == "user:u-2"  # type: ignore[union-attr]
    assert str(routing.rule_for(_mapped()).owner) == "team:t-2"  # type: ignore[union-attr]


def test_no_rule_or_no_match_keeps_the_default_owner():
    assert parse_routing("").rules == ()
    assert parse_routing("  ").rule_for(_mapped("US")) is None
    assert parse_routing("country:US=user:u-1").rule_for(_mapped("CA")) is None


def test_a_lone_owner_routes_every_referral():
    routing = parse_routing("team:t-9")
    rule = routing.rule_for(_mapped("JP"))
    assert rule is not None and rule.owner == Owner("team", "t-9") and rule.text == "*=team:t-9"
    assert parse_owner(" User:abc ") == Owner("user", "abc")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("country:USA=user:u-1", "rule 'country:USA=user:u-1': 'USA' is not an ISO 3166 two-letter country code"),
        ("country:US=person:u-1", "'person:u-1' is not an owner: write user:<id> or team:<id>"),
        ("country:US=user:", "'user:' does not name a user id"),
        ("country:US=user:a b", "'user:a b' does not name a user id"),
        ("region:EU=team:t-1", "'region:EU' is not a condition"),
        ("country:US,=user:u-1", "'country:US,' lists an empty country"),
        ("*=team:t-1;country:US=user:u-1", "rule 'country:US=user:u-1' comes after '*=team:t-1'"),
        ("country:US=user:u-1;country:CA,us=team:t-1", "country us is routed by an earlier rule"),
    ],
    ids=["country", "owner-kind", "no-id", "id-with-space", "condition", "empty-value", "after-star", "routed-twice"],
)
def test_a_rule_that_cannot_work_is_named(text, message):
    with pytest.raises(ValueError) as caught:
        parse_routing(text)
    assert message in str(caught.value)


# -- the CRMs ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cast:
    """Owners of one CRM's emulator, as INBOUND_OWNER writes them (the emulators seed these users and teams)."""

    integration: str  # the user the connector signs in as: the CRM's default owner of what it creates
    us: str
    solution: str
    rest: str
    seller: str  # the one a seller reassigns an opportunity to
    missing: str  # well formed, but no such user

    @property
    def rules(self) -> str:
        return f"country:US={self.us};solution:{ROUTED_SOLUTION}={self.solution};*={self.rest}"


CASTS = {
    # Dynamics 365 routes to users and teams alike.
    "dynamics": Cast(
        integration=f"user:{INTEGRATION_USER_ID}",
        us=f"user:{US_SELLER_ID}",
        solution=f"team:{AMERICAS_TEAM_ID}",
        rest=f"team:{INBOUND_TEAM_ID}",
        seller=f"user:{EMEA_SELLER_ID}",
        missing="user:0f0f0f0f-0000-4000-8000-000000000000",
    ),
    # A Salesforce opportunity is owned by a User only.
    "salesforce": Cast(
        integration=f"user:{sf_schema.USER_ID}",
        us=f"user:{sf_schema.US_SELLER_ID}",
        solution=f"user:{sf_schema.APAC_SELLER_ID}",
        rest=f"user:{sf_schema.EMEA_SELLER_ID}",
        seller=f"user:{sf_schema.EMEA_SELLER_ID}",
        missing="user:0055g00000NoOneAAA",
    ),
}


# Dataverse's owner lookup: the table it points at, by kind of owner, and back.
DATAVERSE_SETS = {"user": "systemusers", "team": "teams"}
DATAVERSE_KINDS = {"systemuser": "user", "team": "team"}


class Owners:
    """Reads and changes opportunity owners over the CRM's own API, as a seller's CRM does."""

    def __init__(self, stack: Stack) -> None:
        self.crm = stack.crm_name
        emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
        if self.crm == "dynamics":
            self.base = f"{emulator.url}/api/data/v9.2"
            token = DV_TOKEN
        else:
            self.base = f"{emulator.url}/services/data/v62.0"
            token = emulator.issue_token(SELLER_USERNAME)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def of(self, crm_id: str) -> str:
        """The owner as ``user:<id>`` or ``team:<id>``."""
        if self.crm == "dynamics":
            row = self._get(
                f"opportunities({crm_id})",
                {"$select": "_ownerid_value"},
                {"Prefer": 'odata.include-annotations="*"'},
            )
            kind = DATAVERSE_KINDS[row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"]]
            return f"{kind}:{row['_ownerid_value']}"
        return f"user:{self._get(f'sobjects/Opportunity/{crm_id}', {'fields': 'OwnerId'})['OwnerId']}"

    def reassign(self, crm_id: str, owner: str) -> None:
        kind, _, owner_id = owner.partition(":")
        if self.crm == "dynamics":
            path, body = f"opportunities({crm_id})", {"ownerid@odata.bind": f"/{DATAVERSE_SETS[kind]}({owner_id})"}
        else:
            path, body = f"sobjects/Opportunity/{crm_id}", {"OwnerId": owner_id}
        response = requests.patch(f"{self.base}/{path}", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 204, response.text

    def _get(self, path: str, params: dict[str, str], headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = requests.get(
            f"{self.base}/{path}", params=params, headers={**self.headers, **(headers or {})}, timeout=10
        )
        assert response.status_code == 200, response.text
        return response.json()


def _crm_id(stack: Stack, referral_id: str) -> str:
    found = stack.crm().find_by_referral_id(referral_id)
    assert found is not None and found.crm_id is not None, f"no opportunity for referral {referral_id}"
    return found.crm_id


def _owner_fields_sent(stack: Stack, operation: str) -> list[list[str]]:
    """The owner fields each opportunity write of ``operation`` sent, in order (an empty list: none)."""
    emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
    if stack.crm_name == "dynamics":
        writes = [w for w in emulator.writes() if w["table"] == "opportunities" and w["operation"] == operation]
        return [[c for c in w["columns"] if c.startswith("ownerid")] for w in writes]
    writes = [w for w in emulator.writes() if w["object"] == "Opportunity" and w["operation"] == operation]
    return [[f for f in w["fields"] if f == "OwnerId"] for w in writes]


def _audit_messages(referral_id: str) -> list[str]:
    return [entry.message for entry in wiring.container().store.audit_trail(referral_id)]


def test_inbound_opportunities_land_with_the_owner_their_rule_names(make_stack, crm):
    cast = CASTS[crm]
    stack = make_stack(INBOUND_OWNER=cast.rules)
    us = stack.pc.seed_referral(kind="cosell")  # the sample customer is in the US
    by_solution = stack.pc.seed_referral(
        kind="cosell",
        customerProfile={"address": {"country": ELSEWHERE}},
        details={"requirements": {"solutions": [{"id": ROUTED_SOLUTION, "name": "Routed", "type": "Name"}]}},
    )
    elsewhere = stack.pc.seed_referral(kind="cosell", customerProfile={"address": {"country": ELSEWHERE}})
    stack.deliver_and_drain(3)

    owners = Owners(stack)
    assert owners.of(_crm_id(stack, us["id"])) == cast.us
    assert owners.of(_crm_id(stack, by_solution["id"])) == cast.solution
    assert owners.of(_crm_id(stack, elsewhere["id"])) == cast.rest
    # The owner travels in the create itself, so no later write has to move the record.
    assert _owner_fields_sent(stack, "create") == [["ownerid@odata.bind" if crm == "dynamics" else "OwnerId"]] * 3
    assert _owner_fields_sent(stack, "update") == [[]] * len(_owner_fields_sent(stack, "update"))
    assert f"routed to {cast.us} by INBOUND_OWNER rule 'country:US={cast.us}'" in _audit_messages(us["id"])[0]


def test_without_inbound_owner_the_integration_user_keeps_what_it_creates(make_stack, crm):
    stack = make_stack()
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)

    assert Owners(stack).of(_crm_id(stack, referral["id"])) == CASTS[crm].integration
    assert _owner_fields_sent(stack, "create") == [[]]  # no owner written: the CRM's default applies
    assert "routed" not in _audit_messages(referral["id"])[0]


def test_an_update_from_partner_center_keeps_the_owner_a_seller_chose(make_stack, crm):
    cast = CASTS[crm]
    stack = make_stack(INBOUND_OWNER=cast.rules)
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    crm_id = _crm_id(stack, referral["id"])
    owners = Owners(stack)
    assert owners.of(crm_id) == cast.us

    owners.reassign(crm_id, cast.seller)  # the US seller hands the deal to a colleague
    stack.pc.portal_update(referral["id"], {"details": {"dealValue": 410000, "notes": "Second site added"}})
    stack.deliver_and_drain(2)

    assert stack.opportunity(crm_id)["deal_value"] == 410000  # the update did reach the opportunity
    assert owners.of(crm_id) == cast.seller
    assert stack.audit_actions(referral["id"])[0] == "updated"


def test_a_create_that_finds_the_opportunity_there_leaves_its_owner(make_stack, crm):
    """A retried create (its first answer lost) or a record made meanwhile: the owner is given on create only, and
    Salesforce's upsert would update the record it finds, owner included, were the owner sent with it."""
    cast = CASTS[crm]
    stack = make_stack()
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    opportunity = referral_to_opportunity(Referral.model_validate(referral))
    adapter = stack.crm()
    first = adapter.create_opportunity(opportunity, parse_owner(cast.seller))
    assert first.crm_id is not None
    owners = Owners(stack)
    assert owners.of(first.crm_id) == cast.seller

    with pytest.raises(PreconditionFailed):  # found: nothing is sent; the engine reads it and merges with it
        adapter.create_opportunity(opportunity, parse_owner(cast.us))

    assert owners.of(first.crm_id) == cast.seller


def test_an_owner_that_does_not_exist_is_refused_by_the_crm(make_stack, crm):
    cast = CASTS[crm]
    stack = make_stack()
    referral = stack.pc.seed_referral(kind="cosell", raise_event=False)
    opportunity = referral_to_opportunity(Referral.model_validate(referral))
    missing = parse_owner(cast.missing)

    # Refused for good (not retried): the engine records the reason on the referral's audit trail.
    with pytest.raises((PermanentError, ValidationFailed)) as caught:
        stack.crm().create_opportunity(opportunity, missing)

    expected = {
        "dynamics": f"400: systemuser With Id = {missing.id} Does Not Exist",
        "salesforce": f"invalid cross reference id: {missing.id} (fields: OwnerId) (INVALID_CROSS_REFERENCE_KEY)",
    }[crm]
    assert expected in str(caught.value)
    assert stack.opportunities() == []


@pytest.mark.parametrize(
    ("crm", "value", "bad_part"),
    [
        ("dynamics", "country:US=user:5b0e6a52", "'user:5b0e6a52' is not a systemuser id (a GUID)"),
        ("dynamics", f"country:USA=user:{US_SELLER_ID}", "'USA' is not an ISO 3166 two-letter country code"),
        ("dynamics", f"*=team:{INBOUND_TEAM_ID};country:US=user:{US_SELLER_ID}", "comes after"),
        ("salesforce", "*=team:00G5g000000QueUEAA2", "'team:00G5g000000QueUEAA2': a Salesforce queue cannot own"),
        ("salesforce", f"country:US=user:{INTEGRATION_USER_ID}", "is not a User id (005..."),
    ],
    ids=["dv-not-a-guid", "dv-bad-country", "dv-rule-after-star", "sf-queue", "sf-not-a-user-id"],
)
def test_a_bad_inbound_owner_stops_start_up_with_a_readable_message(make_stack, crm, value, bad_part):
    with pytest.raises(SettingsError) as caught:
        make_stack(crm=crm, INBOUND_OWNER=value)  # the app's container is built at start-up
    message = str(caught.value)
    assert message.startswith("Invalid configuration: INBOUND_OWNER: ")
    assert bad_part in message
    assert "\n" not in message
