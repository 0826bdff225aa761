"""How an :class:`~shared.domain.opportunity.Opportunity` maps onto Dataverse rows, without any I/O.

The configured column names, the referral status <-> (statecode, statuscode) mapping, OData literals,
the column sets each read selects, the referral-id key check, and the conversions between rows and
opportunities. Kept apart from the adapter so the mapping can be read (and changed) without the HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...domain.errors import ValidationFailed
from ...domain.opportunity import Contact, CustomerAddress, Opportunity
from ...settings import DEFAULT_DATAVERSE_HELP_OPTIONS, Settings
from ..common import custom_field_values, split_products, to_date, to_decimal

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


@dataclass(frozen=True)
class DataverseColumns:
    """Logical names of the connector's custom columns (settings ``DATAVERSE_FIELD_*``)."""

    sync: str = "new_syncwithpartnercenter"
    referral_id: str = "new_referralidentifier"
    referral_link: str = "new_referrallink"
    help: str = "new_howcanmicrosofthelp"
    products: str = "new_products"
    audit: str = "new_audit"
    account_country: str = "address1_country"
    help_options: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_DATAVERSE_HELP_OPTIONS))

    @classmethod
    def from_settings(cls, settings: Settings) -> DataverseColumns:
        return cls(
            settings.dataverse_field_sync,
            settings.dataverse_field_referral_id,
            settings.dataverse_field_referral_link,
            settings.dataverse_field_help,
            settings.dataverse_field_products,
            settings.dataverse_field_audit,
            settings.dataverse_account_country_field,
            dict(settings.dataverse_help_option_values),
        )


# -- column sets --------------------------------------------------------------------------------------------------
def opportunity_select(columns: DataverseColumns) -> str:
    c = columns
    return ",".join(
        [
            "opportunityid",
            "name",
            "estimatedvalue",
            "estimatedclosedate",
            "description",
            "statecode",
            "statuscode",
            "_customerid_value",
            "_parentcontactid_value",
            "_transactioncurrencyid_value",
            "modifiedon",
            c.sync,
            c.referral_id,
            c.referral_link,
            c.help,
            c.products,
            c.audit,
        ]
    )


def account_select(columns: DataverseColumns) -> str:
    return ",".join(["accountid", "name", *(col for _, col in ACCOUNT_ADDRESS), columns.account_country])


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


# -- status ---------------------------------------------------------------------------------------------------------
def status_target(status: str | None, substatus: str | None) -> tuple[int, int] | None:
    """(statecode, statuscode) for a referral status, or None when the status says nothing."""
    if status == "New":
        return (OPEN, 2)  # On Hold: the referral is not accepted yet
    if status == "Active":
        return (OPEN, 1)
    if status == "Closed":
        if substatus == "Won":
            return (WON, 3)
        if substatus == "Lost":
            return (LOST, 5)
        return (LOST, 4)  # declined, expired or closed without a reason: Canceled
    return None


def status_read(statecode: int | None, statuscode: int | None) -> tuple[str, str]:
    if statecode == WON:
        return ("Closed", "Won")
    if statecode == LOST:
        return ("Closed", "Declined" if statuscode == 4 else "Lost")
    if statuscode == 2:
        return ("New", "Pending")
    return ("Active", "Accepted")


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


def help_value(columns: DataverseColumns, code: str | None) -> int | None:
    if code is None:
        return None
    value = columns.help_options.get(code)
    if value is None:
        raise ValidationFailed(
            [
                f"'How can Microsoft help?' value '{code}' has no Dynamics 365 choice value; "
                "add it to DATAVERSE_HELP_OPTION_VALUES"
            ]
        )
    return value


# -- rows <-> opportunities -----------------------------------------------------------------------------------------
def opportunity_columns(
    columns: DataverseColumns,
    opportunity: Opportunity,
    fields: Iterable[str],
    currency_id: Callable[[str], str],
    audit_max_chars: int,
) -> dict[str, Any]:
    """Columns behind the given plain fields (customer, contacts and status are handled by the caller)."""
    c, o, wanted = columns, opportunity, set(fields)
    body: dict[str, Any] = {}
    if "name" in wanted:
        body["name"] = o.name
    if "deal_value" in wanted:
        body["estimatedvalue"] = float(o.deal_value) if o.deal_value is not None else None
    if "currency" in wanted and o.currency:
        body["transactioncurrencyid@odata.bind"] = f"/transactioncurrencies({currency_id(o.currency)})"
    if "close_date" in wanted:
        body["estimatedclosedate"] = o.close_date.isoformat() if o.close_date else None
    if "notes" in wanted:
        body["description"] = o.notes
    body.update(custom_field_values(c, o, wanted, lambda code: help_value(c, code), check_referral_id, audit_max_chars))
    return body


def row_to_opportunity(
    row: dict[str, Any],
    account: dict[str, Any] | None,
    contact: dict[str, Any] | None,
    currency: str | None,
    columns: DataverseColumns,
    help_codes: Mapping[int, str],
) -> Opportunity:
    """The opportunity a row reads as, with its customer account, primary contact and currency code."""
    c = columns
    status, substatus = status_read(row.get("statecode"), row.get("statuscode"))
    help_choice = row.get(c.help)
    return Opportunity(
        crm_id=row.get("opportunityid"),
        name=row.get("name"),
        deal_value=to_decimal(row.get("estimatedvalue")),
        currency=currency,
        close_date=to_date(row.get("estimatedclosedate")),
        notes=row.get("description"),
        customer_name=account.get("name") if account else None,
        customer_address=CustomerAddress(
            **{attr: account.get(col) for attr, col in ACCOUNT_ADDRESS},
            country=account.get(c.account_country),
        )
        if account
        else CustomerAddress(),
        customer_contacts=(Contact(**{attr: contact.get(col) for attr, col in CONTACT_COLUMNS}),) if contact else (),
        help_code=help_codes.get(help_choice) if help_choice is not None else None,
        solution_ids=split_products(row.get(c.products)),
        status=status,
        substatus=substatus,
        referral_id=row.get(c.referral_id),
        referral_link=row.get(c.referral_link),
        sync_enabled=bool(row.get(c.sync)),
        audit=row.get(c.audit),
        etag=row.get("@odata.etag"),
        modified_at=parse_datetime(row.get("modifiedon")),
    )
