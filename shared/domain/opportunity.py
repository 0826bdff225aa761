"""The CRM-neutral opportunity the engine reasons about; adapters translate it to each CRM."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class Contact(BaseModel):
    model_config = ConfigDict(frozen=True)

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    title: str | None = None


class CustomerAddress(BaseModel):
    model_config = ConfigDict(frozen=True)

    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None  # ISO 3166 alpha-2


class Opportunity(BaseModel):
    """Fields in :data:`MAPPED_FIELDS` are synchronised; the rest is bookkeeping."""

    crm_id: str | None = None
    name: str | None = None
    deal_value: Decimal | None = None
    currency: str | None = None
    close_date: date | None = None
    notes: str | None = None
    customer_name: str | None = None
    customer_address: CustomerAddress = Field(default_factory=CustomerAddress)
    customer_contacts: tuple[Contact, ...] = ()
    help_code: str | None = None  # an AssistanceRequestCode value, None when no help is requested
    solution_ids: tuple[str, ...] = ()
    status: str | None = None
    substatus: str | None = None
    status_reason: str | None = None  # Partner Center's statusReason: why the deal was declined or lost
    referral_id: str | None = None
    referral_link: str | None = None
    # Partner Center's current co-sell fields (shared.domain.current_fields): free text passed through as
    # Partner Center names it, and the marketplace purchase intent code.
    solution_area: str | None = None
    solution_play: str | None = None
    partner_role: str | None = None
    purchase_intent: str | None = None
    # Microsoft's side of the engagement, written only from Microsoft's referral (shared.domain.microsoft_side).
    microsoft_status: str | None = None
    microsoft_seller_name: str | None = None
    microsoft_seller_email: str | None = None
    microsoft_crm_id: str | None = None
    microsoft_notes: str | None = None
    sync_enabled: bool = False
    audit: str | None = None
    etag: str | None = None
    modified_at: datetime | None = None  # CRM change timestamp (Dataverse modifiedon, Salesforce SystemModstamp)
    # Choice values the CRM holds that the mapping has no code for: (neutral field, message naming the value).
    unmapped: tuple[tuple[str, str], ...] = ()


MAPPED_FIELDS: tuple[str, ...] = (
    "name",
    "deal_value",
    "currency",
    "close_date",
    "notes",
    "customer_name",
    "customer_address",
    "customer_contacts",
    "help_code",
    "solution_ids",
    "status",
    "substatus",
    "status_reason",
    "referral_id",
    "referral_link",
    "solution_area",
    "solution_play",
    "partner_role",
    "purchase_intent",
)

# Microsoft's side of a co-sell engagement: read from Microsoft's referral, written to the CRM only, never part
# of the pair's fingerprint or merge (the partner's referral does not hold them).
MICROSOFT_SIDE_FIELDS: tuple[str, ...] = (
    "microsoft_status",
    "microsoft_seller_name",
    "microsoft_seller_email",
    "microsoft_crm_id",
    "microsoft_notes",
)

# What a CRM adapter may be asked to write: the synchronised fields, Microsoft's side and the connector's own
# bookkeeping.
WRITABLE_FIELDS: frozenset[str] = frozenset({*MAPPED_FIELDS, *MICROSOFT_SIDE_FIELDS, "sync_enabled", "audit"})
