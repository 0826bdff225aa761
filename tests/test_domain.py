"""Pure domain: referral parsing, mapping of every field, classification, marks, fingerprints, validation."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal

import pytest

from shared.domain.audit_text import audit_line, prepend
from shared.domain.checkmark import CHECK, CROSS, mark, strip_marks
from shared.domain.classification import ReferralCategory, classify, should_sync_to_crm
from shared.domain.mapping import changed_fields, fingerprint, referral_to_opportunity
from shared.domain.opportunity import Contact, CustomerAddress
from shared.domain.referral import Referral
from shared.domain.validation import problems_for_crm

REFERRAL = {
    "id": "4f2a6d1e-8b7c-4e39-9a51-1c2d3e4f5a6b",
    "engagementId": "9e8d7c6b-5a49-4837-8261-504f3e2d1c0b",
    "name": "Contoso cloud migration",
    "status": "Active",
    "substatus": "Accepted",
    "type": "Shared",
    "qualification": "SalesQualified",
    "customerProfile": {
        "name": "Contoso Ltd",
        "address": {
            "addressLine1": "1 Main St",
            "city": "Redmond",
            "state": "WA",
            "postalCode": "98052",
            "country": "us",
        },
        "team": [
            {
                "firstName": "Ada",
                "lastName": "Lovelace",
                "email": "Ada@Contoso.com",
                "phoneNumber": "555-0100",
                "title": "CTO",
            }
        ],
    },
    "details": {
        "notes": "Needs a landing zone",
        "dealValue": 125000.5,
        "currency": "usd",
        "closingDateTime": "2026-12-31T00:00:00Z",
        "requirements": {"solutions": [{"id": "SOL-12345-ABC", "name": "Migration Factory"}]},
    },
    "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo", "invitedBy": {"organizationId": "msft"}},
    "futureField": {"kept": True},
}


def test_referral_keeps_unknown_fields_and_round_trips_camel_case():
    referral = Referral.model_validate(REFERRAL)
    dumped = referral.to_json_dict()
    assert dumped["futureField"] == {"kept": True}
    assert dumped["customerProfile"]["address"]["postalCode"] == "98052"
    assert dumped["inviteContext"]["assistanceRequestCode"] == "ProofOfConceptOrDemo"


def test_mapping_covers_every_field():
    opp = referral_to_opportunity(Referral.model_validate(REFERRAL), "https://pc.example/r/{referral_id}")
    assert opp.name == "Contoso cloud migration"
    assert opp.deal_value == Decimal("125000.5")
    assert opp.currency == "USD"
    assert opp.close_date == date(2026, 12, 31)
    assert opp.notes == "Needs a landing zone"
    assert opp.customer_name == "Contoso Ltd"
    assert opp.customer_address == CustomerAddress(
        line1="1 Main St", city="Redmond", state="WA", postal_code="98052", country="US"
    )
    assert opp.customer_contacts == (
        Contact(first_name="Ada", last_name="Lovelace", email="ada@contoso.com", phone="555-0100", title="CTO"),
    )
    assert opp.help_code == "ProofOfConceptOrDemo"
    assert opp.solution_ids == ("SOL-12345-ABC",)
    assert (opp.status, opp.substatus) == ("Active", "Accepted")
    assert opp.referral_id == REFERRAL["id"]
    assert opp.referral_link == f"https://pc.example/r/{REFERRAL['id']}"
    assert opp.sync_enabled is True


def test_unknown_assistance_code_means_no_help_requested():
    data = copy.deepcopy(REFERRAL)
    data["inviteContext"]["assistanceRequestCode"] = "Unknown"
    assert referral_to_opportunity(Referral.model_validate(data)).help_code is None


def test_fingerprint_is_stable_and_sensitive_to_mapped_fields_only():
    base = referral_to_opportunity(Referral.model_validate(REFERRAL))
    same = referral_to_opportunity(Referral.model_validate(copy.deepcopy(REFERRAL)))
    assert fingerprint(base) == fingerprint(same)
    assert fingerprint(base) == fingerprint(base.model_copy(update={"name": mark(base.name or "", True)}))
    assert fingerprint(base) == fingerprint(base.model_copy(update={"audit": "x", "etag": "W/1", "crm_id": "c"}))
    changed = base.model_copy(update={"deal_value": Decimal("125000.50")})
    assert fingerprint(base) == fingerprint(changed)  # same amount, other scale
    assert fingerprint(base) != fingerprint(base.model_copy(update={"deal_value": Decimal("1")}))
    assert changed_fields(base, base.model_copy(update={"notes": "new"})) == ["notes"]


@pytest.mark.parametrize(
    ("type_", "qualification", "invited_by", "expected"),
    [
        ("Independent", "Direct", "msft", ReferralCategory.MARKETPLACE_LEAD),
        ("Independent", "Direct", None, ReferralCategory.MARKETPLACE_LEAD),
        ("Independent", "SalesQualified", "msft", ReferralCategory.QUALIFIED_LEAD),
        ("Independent", "MarketingQualified", "msft", ReferralCategory.QUALIFIED_LEAD),
        ("Independent", "SalesQualified", "partner-org", ReferralCategory.COSELL_OPPORTUNITY),
        ("Independent", "None", "partner-org", ReferralCategory.COSELL_OPPORTUNITY),
        ("Shared", "SalesQualified", "msft", ReferralCategory.COSELL_OPPORTUNITY),
        ("Shared", "None", None, ReferralCategory.COSELL_OPPORTUNITY),
    ],
)
def test_classification_follows_the_published_table(type_, qualification, invited_by, expected):
    data = {
        "type": type_,
        "qualification": qualification,
        "inviteContext": {"invitedBy": {"organizationId": invited_by}} if invited_by else None,
    }
    assert classify(Referral.model_validate(data)) is expected


def test_cosell_only_rule():
    lead = Referral.model_validate({"type": "Independent", "qualification": "Direct"})
    cosell = Referral.model_validate({"type": "Shared", "qualification": "SalesQualified"})
    assert should_sync_to_crm(lead, cosell_only=True) is False
    assert should_sync_to_crm(lead, cosell_only=False) is True
    assert should_sync_to_crm(cosell, cosell_only=True) is True


def test_marks_never_stack():
    assert mark("Deal", True) == f"Deal {CHECK}"
    assert mark(f"Deal {CHECK}", False) == f"Deal {CROSS}"
    assert mark(f"Deal {CHECK} {CROSS} {CHECK}", True) == f"Deal {CHECK}"
    assert strip_marks(f"Deal {CROSS}  ") == "Deal"
    assert mark(mark("Deal", False), False).count(CROSS) == 1


def test_validation_gives_actionable_reasons():
    opp = referral_to_opportunity(Referral.model_validate(REFERRAL))
    assert problems_for_crm(opp) == []
    bad = opp.model_copy(
        update={"deal_value": Decimal(-1), "currency": "DOLLARS", "customer_address": CustomerAddress(country="USA")}
    )
    reasons = problems_for_crm(bad)
    assert any("negative" in r for r in reasons)
    assert any("DOLLARS" in r and "ISO 4217" in r for r in reasons)
    assert any("'USA'" in r and "2-letter" in r for r in reasons)


def test_audit_text_is_newest_first_and_bounded():
    from datetime import UTC, datetime

    at = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    text = None
    for i in range(50):
        text = prepend(text, audit_line(at, i % 2 == 0, f"sync {i}"), 200)
    assert text is not None and len(text) <= 200
    assert text.splitlines()[0].endswith("sync 49")
    assert all(line.startswith("2026-11-21 12:00:00Z") for line in text.splitlines())
