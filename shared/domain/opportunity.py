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
    referral_id: str | None = None
    referral_link: str | None = None
    sync_enabled: bool = False
    audit: str | None = None
    etag: str | None = None
    modified_at: datetime | None = None  # CRM change timestamp (Dataverse modifiedon, Salesforce SystemModstamp)


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
    "referral_id",
    "referral_link",
)

# What a CRM adapter may be asked to write: the synchronised fields plus the connector's own bookkeeping.
WRITABLE_FIELDS: frozenset[str] = frozenset({*MAPPED_FIELDS, "sync_enabled", "audit"})
