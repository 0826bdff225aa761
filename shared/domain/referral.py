"""Pydantic models of the Partner Center Referral resource.

JSON is camelCase; unknown fields are preserved (``extra="allow"``) so a read-modify-write never
drops data the service added after these models were written.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class PcModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_json_dict(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


INCOMING = "Incoming"  # ``direction`` of a referral shared with the partner (by Microsoft or another partner)
OUTGOING = "Outgoing"  # ``direction`` of a referral the partner created (accepted from the start)


class ReferralStatus(StrEnum):
    NONE = "None"
    NEW = "New"
    ACTIVE = "Active"
    CLOSED = "Closed"


class ReferralSubstatus(StrEnum):
    NONE = "None"
    PENDING = "Pending"
    RECEIVED = "Received"
    ACCEPTED = "Accepted"
    WON = "Won"
    LOST = "Lost"
    DECLINED = "Declined"
    EXPIRED = "Expired"


class AssistanceRequestCode(StrEnum):
    """``inviteContext.assistanceRequestCode``: the "How can Microsoft help?" picklist."""

    UNKNOWN = "Unknown"
    GENERAL_OR_OTHER = "GeneralOrOther"
    CUSTOMER_TECHNICAL_ARCHITECTURE = "CustomerTechnicalArchitecture"
    PROOF_OF_CONCEPT_OR_DEMO = "ProofOfConceptOrDemo"
    QUOTES_OR_LICENSING = "QuotesOrLicensing"
    POST_SALES_CUSTOMER_SUCCESS = "PostSalesCustomerSuccess"
    WORKLOAD_SPECIFIC_VALUE_PROPOSITION = "WorkloadSpecificValueProposition"


class Address(PcModel):
    address_line1: str | None = None
    address_line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    region: str | None = None


class ContactPreference(PcModel):
    locale: str | None = None
    disable_notifications: bool | None = None


class Member(PcModel):
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    email: str | None = None
    title: str | None = None
    contact_preference: ContactPreference | None = None


class CustomerProfile(PcModel):
    name: str | None = None
    address: Address | None = None
    size: str | None = None
    team: list[Member] = Field(default_factory=list)
    ids: list[dict] | None = None


class Consent(PcModel):
    # The service's real field name has a doubled "To".
    consent_to_to_share_info_with_others: bool | None = Field(default=None, alias="consentToToShareInfoWithOthers")
    consent_to_contact: bool | None = None
    consent_to_share_referral_with_microsoft_sellers: bool | None = None
    consent_to_microsoft_to_contact_specific_partners: bool | None = None


class Solution(PcModel):
    id: str
    name: str | None = None
    type: str | None = None


class Requirements(PcModel):
    industries: list[dict] | None = None
    products: list[dict] | None = None
    services: list[dict] | None = None
    solutions: list[Solution] = Field(default_factory=list)
    additional_requirements: dict | None = None  # attributes such as the marketplace purchase intent


class Details(PcModel):
    notes: str | None = None
    deal_value: Decimal | None = None
    currency: str | None = None
    closing_date_time: str | None = None
    customer_requested_contact: bool | None = None
    requirements: Requirements | None = None


class InvitedBy(PcModel):
    organization_id: str | None = None
    organization_name: str | None = None


class InviteContext(PcModel):
    notes: str | None = None
    invited_by: InvitedBy | None = None
    invited_mpn_id: str | None = None
    assistance_request_code: str | None = None


class TrackingInfo(PcModel):
    microsoft_msx_id: str | None = None  # the Microsoft CRM (MSX) id, filled when Microsoft works the deal


class Target(PcModel):
    type: str
    id: str


class Referral(PcModel):
    id: str | None = None
    engagement_id: str | None = None
    name: str | None = None
    organization_id: str | None = None
    organization_name: str | None = None
    external_reference_id: str | None = None
    created_date_time: str | None = None
    updated_date_time: str | None = None
    status: str | None = None
    substatus: str | None = None
    status_reason: str | None = None
    type: str | None = None
    qualification: str | None = None
    direction: str | None = None
    customer_profile: CustomerProfile | None = None
    consent: Consent | None = None
    details: Details | None = None
    team: list[Member] = Field(default_factory=list)
    invite_context: InviteContext | None = None
    target: list[Target] = Field(default_factory=list)
    tracking_info: TrackingInfo | None = None
    e_tag: str | None = Field(default=None, alias="eTag")

    def updated_at(self) -> datetime | None:
        """``updatedDateTime`` as a moment; None when it is missing or unreadable."""
        if not self.updated_date_time:
            return None
        try:
            return datetime.fromisoformat(self.updated_date_time.replace("Z", "+00:00"))
        except ValueError:
            return None
