"""The Salesforce adapter in a single-currency org (issue 11): such an org has no ``CurrencyType`` object and no
``Opportunity.CurrencyIsoCode`` field, and every amount is in the org's one currency
(``Organization.DefaultCurrencyIsoCode``). The adapter learns the org's kind from one describe of Opportunity,
never names either in a query or a write, and reads every opportunity's currency as the org's, so that Partner
Center gets a currency and what the stored form predicts is what reads back."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from emulators.salesforce.emulator import SalesforceEmulator
from shared.crm.salesforce import SalesforceCrm
from shared.domain.errors import PreconditionFailed, ValidationFailed
from shared.domain.mapping import mapped_values
from shared.domain.validation import problems_for_partner_center
from shared.wiring import load_crm_mapping
from tests.test_salesforce_adapter import CLOCK, TODAY, _no_sleep, from_settings, full_opportunity, settings

SYNC = "Sync_with_Partner_Center__c"
CURRENCY_NAMES = re.compile(r"\b(CurrencyIsoCode|CurrencyType)\b")  # not Organization.DefaultCurrencyIsoCode


SALESFORCE_EMULATOR_OPTIONS = {"clock": CLOCK, "multi_currency": False}


@pytest.fixture
def emu(salesforce_server: SalesforceEmulator) -> SalesforceEmulator:
    server = salesforce_server
    server.reset()  # a single-currency org again, as constructed
    return server


@pytest.fixture
def crm(emu: SalesforceEmulator) -> SalesforceCrm:
    return from_settings(settings(emu), sleep=_no_sleep, today=lambda: TODAY)


def _api_calls(emu: SalesforceEmulator, start: int = 0) -> list[str]:
    """REST API requests from ``start`` on: ``METHOD resource``, followed by the statement of a query."""
    seen = []
    for method, raw in emu.request_log[start:]:
        url = urlsplit(raw)
        if "/services/data/" not in url.path:
            continue
        query = parse_qs(url.query).get("q")
        seen.append(f"{method} {url.path.split('/services/data/', 1)[1]}" + (f" {query[0]}" if query else ""))
    return seen


def _assert_no_currency_field_or_object(emu: SalesforceEmulator, start: int = 0) -> None:
    """Neither is named in a query or written (the emulator refuses both in a single-currency org anyway, so a
    composite call naming one in a subrequest fails as a whole)."""
    calls = _api_calls(emu, start)
    assert calls, "the adapter made no request at all"
    for call in calls:
        assert not CURRENCY_NAMES.search(call), call
    for write in emu.writes():
        assert "CurrencyIsoCode" not in write["fields"], write


def _seller_opportunity(emu: SalesforceEmulator, **fields: Any) -> str:
    """An opportunity a seller entered in the org (no currency: the org has only one)."""
    account = emu.seed("Account", {"Name": "Northwind", "BillingCountry": "US", "BillingPostalCode": "98101"})[0]
    values = {
        "Name": "Northwind - data platform",
        "StageName": "Qualification",
        "CloseDate": "2025-09-30",
        "Amount": 250000.0,
        "AccountId": account["Id"],
        SYNC: True,
        "Products__c": "SOL-34104-EBB",
        **fields,
    }
    return str(emu.seed("Opportunity", values)[0]["Id"])


def test_a_seller_opportunity_reads_in_the_org_currency_and_passes_validation(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    crm_id = _seller_opportunity(emu)
    read = crm.get_opportunity(crm_id)
    assert read is not None
    assert read.currency == "USD"  # Organization.DefaultCurrencyIsoCode
    assert read.deal_value == Decimal("250000.0")
    assert "Set the opportunity currency." not in problems_for_partner_center(read)
    assert crm.find_by_referral_id("nothing-yet") is None
    assert [c.record_id for c in crm.changes_since(None)] == [crm_id]
    _assert_no_currency_field_or_object(emu)


def test_the_org_currency_comes_from_the_organization_record() -> None:
    single_eur = SalesforceEmulator(clock=CLOCK, multi_currency=False, currencies=("EUR",)).start()
    try:
        crm = from_settings(settings(single_eur), sleep=_no_sleep, today=lambda: TODAY)
        created = crm.create_opportunity(full_opportunity(currency="EUR"))
        assert created.currency == "EUR"
        with pytest.raises(ValidationFailed, match=r"single currency \(EUR\)"):
            crm.create_opportunity(full_opportunity("ref-usd", currency="USD"))
    finally:
        single_eur.stop()


def test_create_and_update_never_touch_the_currency_field(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    desired = full_opportunity(currency="usd")
    created = crm.create_opportunity(desired)
    assert created.currency == "USD"
    assert mapped_values(created) == mapped_values(crm.stored_form(desired))  # what the merge compares

    moved = created.model_copy(update={"deal_value": Decimal("99.5"), "currency": "USD", "notes": "moved"})
    updated = crm.update_opportunity(created, moved, ["deal_value", "currency", "notes"])
    assert (updated.deal_value, updated.currency, updated.notes) == (Decimal("99.5"), "USD", "moved")
    assert mapped_values(updated) == mapped_values(crm.stored_form(moved))
    assert crm.get_opportunity(created.crm_id or "") == updated
    with pytest.raises(PreconditionFailed):  # a retried create finds the record; the engine merges with it
        crm.create_opportunity(desired)
    _assert_no_currency_field_or_object(emu)


def test_a_referral_without_a_currency_reads_back_in_the_org_currency(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    desired = full_opportunity(currency=None)
    stored = crm.stored_form(desired)
    assert stored.currency == "USD"  # what reading it back returns: no change to send either way
    created = crm.create_opportunity(desired)
    assert mapped_values(created) == mapped_values(stored)
    _assert_no_currency_field_or_object(emu)


def test_another_currency_is_refused_before_anything_is_written(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    # Amounts are in the org's currency: an amount in another one would read back as a different deal value.
    with pytest.raises(ValidationFailed, match=r"Currency 'EUR' .*single currency \(USD\)"):
        crm.create_opportunity(full_opportunity(currency="EUR"))
    assert emu.writes() == []
    assert crm.stored_form(full_opportunity(currency="eur")).currency == "EUR"  # the difference stays visible
    created = crm.create_opportunity(full_opportunity(currency="USD"))
    with pytest.raises(ValidationFailed, match="Currency 'GBP'"):
        crm.update_opportunity(created, created.model_copy(update={"currency": "GBP"}), ["currency"])
    assert crm.get_opportunity(created.crm_id or "") == created


def test_the_org_kind_is_learned_once_per_adapter(emu: SalesforceEmulator, crm: SalesforceCrm) -> None:
    crm_id = _seller_opportunity(emu)
    for _ in range(3):
        crm.get_opportunity(crm_id)
    crm.create_opportunity(full_opportunity(currency="USD"))
    calls = _api_calls(emu)
    assert calls.count("GET v62.0/sobjects/Opportunity/describe") == 1
    assert sum(1 for c in calls if "FROM Organization" in c) == 1


def test_a_multi_currency_org_is_unchanged(emu: SalesforceEmulator) -> None:
    emu.configure(multi_currency=True)
    crm = from_settings(settings(emu), sleep=_no_sleep, today=lambda: TODAY)
    created = crm.create_opportunity(full_opportunity(currency="EUR"))
    record = emu.record("Opportunity", created.crm_id or "")
    assert created.currency == "EUR" and record is not None and record["CurrencyIsoCode"] == "EUR"
    assert crm.stored_form(full_opportunity(currency=None)).currency is None  # the org fills in the user's currency
    assert not any("FROM Organization" in c for c in _api_calls(emu))


def test_no_currency_field_in_a_single_currency_org_reads_the_org_currency(emu: SalesforceEmulator) -> None:
    crm = from_settings(settings(emu, salesforce_currency_field=""), sleep=_no_sleep, today=lambda: TODAY)
    assert crm.mapping.column("currency") == ""
    created = crm.create_opportunity(full_opportunity(currency="USD"))
    assert created.currency == "USD"
    assert mapped_values(created) == mapped_values(crm.stored_form(full_opportunity(currency="USD")))
    _assert_no_currency_field_or_object(emu)


def test_no_currency_field_in_a_multi_currency_org_touches_no_currency(emu: SalesforceEmulator) -> None:
    emu.configure(multi_currency=True)
    crm = from_settings(settings(emu, salesforce_currency_field=""), sleep=_no_sleep, today=lambda: TODAY)
    desired = full_opportunity(currency="XYZ")  # not even checked: the currency is not synchronised
    created = crm.create_opportunity(desired)
    assert created.currency is None
    assert mapped_values(created) == mapped_values(crm.stored_form(desired))
    _assert_no_currency_field_or_object(emu)


def test_an_empty_currency_setting_names_no_currency_field(emu: SalesforceEmulator, monkeypatch) -> None:
    """``SALESFORCE_CURRENCY_FIELD=""`` in the app settings means "no currency field", not "the default"."""
    monkeypatch.setenv("SALESFORCE_CURRENCY_FIELD", "")
    assert load_crm_mapping(settings(emu)).mapping.column("currency") == ""


def test_the_mapping_check_accepts_the_currency_field_a_single_currency_org_lacks(
    emu: SalesforceEmulator, crm: SalesforceCrm
) -> None:
    assert crm.check_mapping() == []
    if emu.org.sobject("Opportunity").field("Deal_Currency__c") is None:  # fields outlive reset, as in Setup
        emu.add_field("Opportunity", "Deal_Currency__c", "picklist", picklist=["USD"])
    custom = from_settings(settings(emu, salesforce_currency_field="Deal_Currency__c"), sleep=_no_sleep)
    assert custom.check_mapping() == [
        "fields.currency.column: 'Deal_Currency__c' is not used: this org has a single currency, which is the "
        "currency of every opportunity"
    ]
