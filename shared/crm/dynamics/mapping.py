"""How an :class:`~shared.domain.opportunity.Opportunity` maps onto Dataverse rows, without any I/O.

The mapping itself is data (``mapping.toml`` next to this module, read through :mod:`shared.crm.mapping`);
this module adds what is particular to Dataverse: the status table (referral status <-> statecode/statuscode,
both ways), the account column holding the country, the column sets each read selects, OData literals, the
referral-id key check, and the assembly of an opportunity from a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache, cached_property
from pathlib import Path
from typing import Any, ClassVar

from ...domain.errors import ValidationFailed
from ...domain.opportunity import Contact, CustomerAddress, Opportunity
from ..mapping import CrmMapping, CrmTerms, Loaded, Override, Path_, Strict, column_settings, load, parse_status_key

DEFAULT_FILE = Path(__file__).with_name("mapping.toml")

# Characters that break GET/PATCH by alternate key, per the Dataverse documentation.
KEY_BREAKING_CHARACTERS = frozenset("/<>*%&:\\?+")

ACCOUNT_ADDRESS = (
    ("line1", "address1_line1"),
    ("line2", "address1_line2"),
    ("city", "address1_city"),
    ("state", "address1_stateorprovince"),
    ("postal_code", "address1_postalcode"),
)
CONTACT_COLUMNS = (
    ("first_name", "firstname"),
    ("last_name", "lastname"),
    ("email", "emailaddress1"),
    ("phone", "telephone1"),
    ("title", "jobtitle"),
)
OPEN, WON, LOST = 0, 1, 2
STATECODES = (OPEN, WON, LOST)
ANY_STATE = "*"


def _codes(text: str) -> tuple[int, int | None]:
    state, _, status = text.partition("/")
    try:
        return int(state), int(status) if status else None
    except ValueError:
        raise ValueError(f"'{text}' is not statecode/statuscode numbers") from None


class DataverseStatus(Strict):
    """Referral status <-> (statecode, statuscode): the write table and the read table."""

    write: dict[str, str]  # "Status" or "Status/Substatus" -> "statecode/statuscode"
    read: dict[str, str]  # "statecode/statuscode", "statecode" or "*" -> "Status/Substatus"

    @cached_property
    def _targets(self) -> dict[tuple[str, str | None], tuple[int, int]]:
        parsed = {}
        for key, value in self.write.items():
            state, status = _codes(value)
            assert status is not None  # problems() refuses a row without one
            parsed[parse_status_key(key)] = (state, status)
        return parsed

    @cached_property
    def _reads(self) -> dict[str, tuple[str, str]]:
        parsed = {}
        for key, value in self.read.items():
            status, substatus = parse_status_key(value)
            assert substatus is not None  # problems() refuses a row without one
            parsed[key] = (status, substatus)
        return parsed

    def target(self, status: str | None, substatus: str | None) -> tuple[int, int] | None:
        """(statecode, statuscode) for a referral status, or None when the status says nothing."""
        if status is None:
            return None
        return self._targets.get((status, substatus)) or self._targets.get((status, None))

    def status_of(self, statecode: int | None, statuscode: int | None) -> tuple[str, str]:
        reads = self._reads
        return reads.get(f"{statecode}/{statuscode}") or reads.get(str(statecode)) or reads[ANY_STATE]

    def problems(self) -> list[tuple[Path_, str]]:
        found: list[tuple[Path_, str]] = []
        for key, value in self.write.items():
            at = ("status", "write", key)
            try:
                parse_status_key(key)
                state, status = _codes(value)
            except ValueError as exc:
                found.append((at, str(exc)))
                continue
            if state not in STATECODES or status is None:
                found.append((at, f"'{value}' must be statecode/statuscode, statecode 0 (open), 1 (won) or 2 (lost)"))
        for status in ("New", "Active", "Closed"):
            if status not in self.write:
                found.append((("status", "write"), f"needs a row for {status}"))
        for key, value in self.read.items():
            at = ("status", "read", key)
            try:
                if key != ANY_STATE:
                    _codes(key)
                if "/" not in value:
                    raise ValueError(f"'{value}' must be status/substatus")
                parse_status_key(value)
            except ValueError as exc:
                found.append((at, str(exc)))
        if ANY_STATE not in self.read:
            found.append((("status", "read"), f"needs a '{ANY_STATE}' row for any other state"))
        return found


class DataverseCustomer(Strict):
    account_country: str  # the account column holding the customer's 2-letter country code


class DataverseMapping(CrmMapping):
    customer: DataverseCustomer
    status: DataverseStatus

    terms: ClassVar[CrmTerms] = CrmTerms(
        product="Dynamics 365", choice_word="choice", choice_value_type=int, lookup_targets=("transactioncurrencies",)
    )
    settings: ClassVar[Mapping[str, Path_]] = {
        **column_settings("DATAVERSE"),
        "DATAVERSE_HELP_OPTION_VALUES": ("fields", "help_code", "values"),
        "DATAVERSE_ACCOUNT_COUNTRY_FIELD": ("customer", "account_country"),
    }

    def problems(self) -> list[tuple[Path_, str]]:
        found = [*super().problems(), *self.status.problems()]
        if not self.customer.account_country:
            found.append((("customer", "account_country"), "is required"))
        return found


def load_mapping(file: Path | None = None, overrides: Sequence[Override] = ()) -> Loaded[DataverseMapping]:
    return load(DataverseMapping, DEFAULT_FILE, file, overrides)


@cache
def default_mapping() -> DataverseMapping:
    """The shipped mapping, unchanged."""
    return load_mapping().mapping


# -- column sets --------------------------------------------------------------------------------------------------
# What a write needs to know of the row: its state, its customer and contact lookups, its close details.
STATE_COLUMNS = (
    "statecode",
    "statuscode",
    "_customerid_value",
    "_parentcontactid_value",
    "actualclosedate",
    "actualvalue",
)
OPPORTUNITY_COLUMNS = ("opportunityid", *STATE_COLUMNS, "modifiedon")


def account_select(mapping: DataverseMapping) -> str:
    return ",".join(["accountid", "name", *(col for _, col in ACCOUNT_ADDRESS), mapping.customer.account_country])


def contact_select() -> str:
    return ",".join(["contactid", "_parentcustomerid_value", *(col for _, col in CONTACT_COLUMNS)])


# -- literals and values ------------------------------------------------------------------------------------------
def odata_string(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def odata_datetime(moment: datetime) -> str:
    # Whole seconds, rounded down: modifiedon has second precision and 'ge' must not skip a row.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- validation -----------------------------------------------------------------------------------------------------
def check_referral_id(referral_id: str | None) -> str:
    if not referral_id:
        raise ValidationFailed(["A referral id is required to key the Dynamics 365 opportunity"])
    bad = sorted(set(referral_id) & KEY_BREAKING_CHARACTERS)
    if bad:
        raise ValidationFailed(
            [f"Referral id '{referral_id}' contains characters a Dataverse alternate key cannot hold: {' '.join(bad)}"]
        )
    return referral_id


# -- rows -> opportunities ------------------------------------------------------------------------------------------
def row_to_opportunity(
    row: dict[str, Any],
    values: dict[str, Any],
    account: dict[str, Any] | None,
    contact: dict[str, Any] | None,
    mapping: DataverseMapping,
) -> Opportunity:
    """The opportunity a row reads as: ``values`` are its mapped columns (from the mapping's converters), with
    its customer account, primary contact and status."""
    status, substatus = mapping.status.status_of(row.get("statecode"), row.get("statuscode"))
    address = CustomerAddress()
    if account:
        address = CustomerAddress(
            **{attr: account.get(col) for attr, col in ACCOUNT_ADDRESS},
            country=account.get(mapping.customer.account_country),
        )
    return Opportunity(
        **values,
        crm_id=row.get("opportunityid"),
        customer_name=account.get("name") if account else None,
        customer_address=address,
        customer_contacts=(Contact(**{attr: contact.get(col) for attr, col in CONTACT_COLUMNS}),) if contact else (),
        status=status,
        substatus=substatus,
        etag=row.get("@odata.etag"),
        modified_at=parse_datetime(row.get("modifiedon")),
    )
