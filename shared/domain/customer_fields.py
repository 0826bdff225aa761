"""Which field of a Partner Center address or team member is which field of the neutral customer: declared once,
read both ways (a referral into an opportunity, and an opportunity into the referral Partner Center makes of it)."""

from __future__ import annotations

from .opportunity import Contact, CustomerAddress
from .referral import Address, Member

# Partner Center's name -> the neutral name.
ADDRESS_FIELDS = {
    "address_line1": "line1",
    "address_line2": "line2",
    "city": "city",
    "state": "state",
    "postal_code": "postal_code",
    "country": "country",
}
MEMBER_FIELDS = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone_number": "phone",
    "title": "title",
}


def customer_address(address: Address) -> CustomerAddress:
    return CustomerAddress(**{ours: getattr(address, theirs) for theirs, ours in ADDRESS_FIELDS.items()})


def referral_address(address: CustomerAddress) -> Address:
    return Address(**{theirs: getattr(address, ours) for theirs, ours in ADDRESS_FIELDS.items()})


def contact(member: Member) -> Contact:
    return Contact(**{ours: getattr(member, theirs) for theirs, ours in MEMBER_FIELDS.items()})


def member(contact: Contact) -> Member:
    return Member(**{theirs: getattr(contact, ours) for theirs, ours in MEMBER_FIELDS.items()})
