"""The one declaration of which Partner Center address and team-member field is which neutral customer field,
read both ways: what a referral's customer becomes in an opportunity is what an opportunity's customer becomes in
the referral made from it, every field carried and none dropped."""

from __future__ import annotations

from shared.domain.customer_fields import (
    ADDRESS_FIELDS,
    MEMBER_FIELDS,
    contact,
    customer_address,
    member,
    referral_address,
)
from shared.domain.opportunity import Contact, CustomerAddress
from shared.domain.referral import Address, Member


def test_every_neutral_customer_field_has_its_partner_center_field() -> None:
    assert set(ADDRESS_FIELDS.values()) == set(CustomerAddress.model_fields)
    assert set(MEMBER_FIELDS.values()) == set(Contact.model_fields)
    assert set(ADDRESS_FIELDS) <= set(Address.model_fields) and set(MEMBER_FIELDS) <= set(Member.model_fields)


def test_an_address_and_a_contact_read_both_ways_come_back_unchanged() -> None:
    address = CustomerAddress(line1="1 Main St", line2="Floor 2", city="Seattle", state="WA", postal_code="98052")
    person = Contact(first_name="Ada", last_name="Lovelace", email="ada@example.com", phone="+1 555", title="CTO")

    sent = referral_address(address)
    assert (sent.address_line1, sent.address_line2, sent.postal_code) == ("1 Main St", "Floor 2", "98052")
    assert customer_address(sent) == address
    as_member = member(person)
    assert (as_member.phone_number, as_member.email) == ("+1 555", "ada@example.com")
    assert contact(as_member) == person
