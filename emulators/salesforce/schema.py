"""Salesforce emulator: the objects, their fields and the value rules the REST API enforces.

Field names are case-insensitive in Salesforce (in SOQL and in JSON bodies); results always use the
canonical API name, so :meth:`SObjectType.field` resolves any spelling to the canonical definition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ..package_mapping import CURRENT_AND_MICROSOFT_FIELDS, choice_values, column, entry, shipped_mapping

# Field types (a subset of Schema.DisplayType).
ID, STRING, TEXTAREA, BOOLEAN, CURRENCY, DOUBLE, PERCENT, DATE, DATETIME, PICKLIST, REFERENCE, URL, EMAIL, PHONE = (
    "id",
    "string",
    "textarea",
    "boolean",
    "currency",
    "double",
    "percent",
    "date",
    "datetime",
    "picklist",
    "reference",
    "url",
    "email",
    "phone",
)
TEXT_TYPES = frozenset({ID, STRING, TEXTAREA, PICKLIST, REFERENCE, URL, EMAIL, PHONE})
NUMBER_TYPES = frozenset({CURRENCY, DOUBLE, PERCENT})
FIELD_TYPES = TEXT_TYPES | NUMBER_TYPES | {BOOLEAN, DATE, DATETIME}

DEFAULT_STAGES: tuple[tuple[str, bool, bool], ...] = (  # name, closed, won (a standard org's stage list)
    ("Prospecting", False, False),
    ("Qualification", False, False),
    ("Needs Analysis", False, False),
    ("Value Proposition", False, False),
    ("Id. Decision Makers", False, False),
    ("Perception Analysis", False, False),
    ("Proposal/Price Quote", False, False),
    ("Negotiation/Review", False, False),
    ("Closed Won", True, True),
    ("Closed Lost", True, False),
)
DEFAULT_HELP_VALUES: tuple[str, ...] = choice_values("salesforce", "help_code")
DEFAULT_REASON_VALUES: tuple[str, ...] = choice_values("salesforce", "status_reason")  # the decline reasons
DEFAULT_CURRENCIES = ("USD", "EUR", "GBP", "JPY", "AUD", "CAD")
CURRENCY_RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "AUD": 1.52, "CAD": 1.36}
ORG_ID = "00D5g000000EmuLATR"
ORG_NAME = "Emulated Org"
USER_ID = "0055g000000EmuLATR"  # the integration user: every session acts as it, so it owns what is created
# Sellers an inbound opportunity can be routed to (seeded with the integration user by every reset).
US_SELLER_ID = "0055g00000SelUSAAZ"
EMEA_SELLER_ID = "0055g00000SelEUAAZ"
APAC_SELLER_ID = "0055g00000SelAPAAZ"
USERS = {  # Id -> (Name, Username)
    USER_ID: ("Co-sell Integration", "integration@emulator.example"),
    US_SELLER_ID: ("Dana Birch", "dana.birch@northwind.example"),
    EMEA_SELLER_ID: ("Lena Vogel", "lena.vogel@northwind.example"),
    APAC_SELLER_ID: ("Kenji Sato", "kenji.sato@northwind.example"),
}
# Multi-currency orgs have this field on every record that holds amounts (here Opportunity and Account).
CURRENCY_FIELD = "CurrencyIsoCode"
# The one currency of a single-currency org, on its Organization record.
ORG_CURRENCY_FIELD = "DefaultCurrencyIsoCode"

# The case-safe 3-character suffix of 18-character ids: one letter/digit per 5-character chunk.
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


class SalesforceError(Exception):
    """Answered as ``[{"message", "errorCode", "fields"}]`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, fields: Iterable[str] = (), headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, list(fields)
        self.headers = dict(headers or {})

    def item(self) -> dict[str, Any]:
        return {"message": self.message, "errorCode": self.code, "fields": self.fields}


def bad_request(code: str, message: str, fields: Iterable[str] = ()) -> SalesforceError:
    return SalesforceError(400, code, message, fields)


# ---------------------------------------------------------------------------------------------------------------
# Ids and datetimes
# ---------------------------------------------------------------------------------------------------------------
def id_suffix(id15: str) -> str:
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]) if "A" <= char <= "Z")
        suffix += _SUFFIX_ALPHABET[bits]
    return suffix


def make_id(prefix: str, number: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
    id15 = f"{prefix}5g00000{digits.rjust(5, '0')}"
    return id15 + id_suffix(id15)


def normalize_id(value: str) -> str | None:
    """The 18-character form of a 15- or 18-character id, or None when ``value`` is not an id."""
    if not _ID_RE.fullmatch(value):
        return None
    return value if len(value) == 18 else value + id_suffix(value)


def format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime:
    """ISO 8601 as clients send it: ``Z``, ``+hh:mm`` or Salesforce's own ``+0000``."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    value = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value)
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a datetime needs a time zone")
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------------------------------------------------
# Objects and fields
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    length: int | None = None
    required: bool = False  # must be present (non-null) after every write
    createable: bool = True
    updateable: bool = True
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    external_id: bool = False
    reference_to: str | None = None
    relationship: str | None = None  # parent relationship name for SOQL (AccountId -> Account)
    # The parent's name for the records pointing at it through this field, for SOQL subqueries
    # (OpportunityContactRole.OpportunityId -> Opportunity.OpportunityContactRoles).
    child_relationship: str | None = None
    default: Any = None
    label: str = ""

    @property
    def system(self) -> bool:
        return not self.createable and not self.updateable


@dataclass(frozen=True)
class ChildRelationship:
    """A parent-to-child relationship: ``name`` (``OpportunityContactRoles``) lists the ``child`` records whose
    ``field`` points at the parent."""

    name: str
    child: str
    field: FieldDef


@dataclass
class SObjectType:
    name: str
    key_prefix: str
    fields: dict[str, FieldDef]
    # Only read through the API (query, retrieve, describe), as Organization: no create, update or delete.
    read_only: bool = False
    _by_lower: dict[str, FieldDef] = field(default_factory=dict, repr=False)
    _relationships: dict[str, FieldDef] = field(default_factory=dict, repr=False)
    _children: dict[str, ChildRelationship] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_lower = {name.lower(): definition for name, definition in self.fields.items()}
        self._relationships = {d.relationship.lower(): d for d in self.fields.values() if d.relationship}

    def field(self, name: str) -> FieldDef | None:
        return self._by_lower.get(name.lower())

    def add(self, definition: FieldDef) -> None:
        """A custom field added to the object, as an admin adds one in Setup."""
        if definition.name.lower() in self._by_lower:
            raise bad_request("DUPLICATE_DEVELOPER_NAME", f"{self.name} already has a field {definition.name}")
        self.fields[definition.name] = definition
        self._by_lower[definition.name.lower()] = definition
        if definition.relationship:
            self._relationships[definition.relationship.lower()] = definition

    def remove(self, name: str) -> FieldDef | None:
        """Take a field off the object (the org's currency setting changed); None when it has no such field."""
        definition = self._by_lower.pop(name.lower(), None)
        if definition is not None:
            del self.fields[definition.name]
            if definition.relationship:
                self._relationships.pop(definition.relationship.lower(), None)
        return definition

    def relationship(self, name: str) -> FieldDef | None:
        return self._relationships.get(name.lower())

    def add_child(self, relation: ChildRelationship) -> None:
        self._children[relation.name.lower()] = relation

    def child(self, name: str) -> ChildRelationship | None:
        """The parent-to-child relationship of that name (case-insensitive), as a subquery's FROM names it."""
        return self._children.get(name.lower())

    @property
    def children(self) -> list[ChildRelationship]:
        return list(self._children.values())

    @property
    def external_ids(self) -> list[FieldDef]:
        return [d for d in self.fields.values() if d.external_id]


@dataclass(frozen=True)
class CustomFields:
    """API names of the connector's custom Opportunity fields (defaults: the connector's shipped mapping)."""

    sync: str = column("salesforce", "sync_enabled")
    referral_id: str = column("salesforce", "referral_id")
    referral_link: str = column("salesforce", "referral_link")
    help: str = column("salesforce", "help_code")
    products: str = column("salesforce", "solution_ids")
    audit: str = column("salesforce", "audit")
    decline_reason: str = column("salesforce", "status_reason")
    # The Lead field holding the referral id of a Partner Center lead (an external id, as on Opportunity).
    lead_referral_id: str = str(shipped_mapping("salesforce")["lead"]["referral_id"])


def _current_and_microsoft_fields() -> list[FieldDef]:
    """Partner Center's current co-sell fields and Microsoft's side, with the shipped mapping's names."""
    fields = []
    for name in CURRENT_AND_MICROSOFT_FIELDS:
        spec = entry("salesforce", name)
        label = str(spec.get("label", ""))
        if spec["type"] == "choice":
            values = tuple(str(v) for v in spec["values"].values())
            fields.append(FieldDef(str(spec["column"]), PICKLIST, 255, picklist=values, restricted=True, label=label))
        else:
            kind = TEXTAREA if spec["type"] == "memo" else STRING
            fields.append(FieldDef(str(spec["column"]), kind, int(spec.get("max_length", 255)), label=label))
    return fields


def _system_fields() -> list[FieldDef]:
    readonly = {"createable": False, "updateable": False}
    return [
        FieldDef("Id", ID, 18, **readonly),
        FieldDef("IsDeleted", BOOLEAN, default=False, **readonly),
        FieldDef("CreatedDate", DATETIME, **readonly),
        FieldDef("CreatedById", REFERENCE, 18, **readonly),
        FieldDef("LastModifiedDate", DATETIME, **readonly),
        FieldDef("LastModifiedById", REFERENCE, 18, **readonly),
        FieldDef("SystemModstamp", DATETIME, **readonly),
    ]


def _object(name: str, prefix: str, fields: list[FieldDef], read_only: bool = False) -> SObjectType:
    return SObjectType(name, prefix, {d.name: d for d in [*_system_fields(), *fields]}, read_only)


def org_currency_field(currencies: Iterable[str]) -> FieldDef:
    """``Organization.DefaultCurrencyIsoCode``: the org's currency. The emulator offers it only in a single-currency
    org, the one kind of org the connector reads it in (a multi-currency org's corporate currency is the
    ``CurrencyType`` row with ``IsCorporate``)."""
    return FieldDef(
        ORG_CURRENCY_FIELD,
        PICKLIST,
        3,
        createable=False,
        updateable=False,
        picklist=tuple(currencies),
        restricted=True,
        label="Currency",
    )


def custom_field_defs(custom: CustomFields, help_values: Iterable[str]) -> list[FieldDef]:
    """The connector's custom Opportunity fields, as an org set up for it has them (``custom_fields=False`` in the
    emulator: an org without them, which ``setup-crm`` sets up through the Tooling API)."""
    return [
        FieldDef(custom.sync, BOOLEAN, default=False, label="Sync with Partner Center"),
        FieldDef(custom.referral_id, STRING, 100, external_id=True, label="Referral Identifier"),
        FieldDef(custom.referral_link, URL, 255, label="Referral Link"),
        FieldDef(
            custom.help,
            PICKLIST,
            255,
            picklist=tuple(help_values),
            restricted=True,
            label="How can Microsoft help?",
        ),
        FieldDef(custom.products, STRING, 255, label="Products"),
        FieldDef(custom.audit, TEXTAREA, 100000, label="Audit"),
        FieldDef(
            custom.decline_reason,
            PICKLIST,
            255,
            picklist=DEFAULT_REASON_VALUES,
            restricted=True,
            label="Decline Reason",
        ),
        *_current_and_microsoft_fields(),
    ]


def lead_custom_field_defs(custom: CustomFields) -> list[FieldDef]:
    """The connector's custom Lead fields, as an org set up for it has them."""
    return [FieldDef(custom.lead_referral_id, STRING, 100, external_id=True, label="Referral Identifier")]


# A stock org's lead statuses (LeadStatus): value -> whether it is the status of a converted lead.
LEAD_STATUSES = {
    "Open - Not Contacted": False,
    "Working - Contacted": False,
    "Closed - Converted": True,
    "Closed - Not Converted": False,
}
DEFAULT_LEAD_STATUS = "Open - Not Contacted"


def lead_object(custom: CustomFields | None) -> SObjectType:
    """Lead: a seller works it, then converts it (an account, a contact and an opportunity are made from it) or
    closes it unconverted. The ``Converted*`` fields are set by conversion only; a converted lead is read-only."""
    derived = {"createable": False, "updateable": False}
    return _object(
        "Lead",
        "00Q",
        [
            FieldDef("FirstName", STRING, 40),
            FieldDef("LastName", STRING, 80, required=True),
            FieldDef("Name", STRING, 121, **derived),
            FieldDef("Company", STRING, 255, required=True),
            FieldDef("Title", STRING, 128),
            FieldDef("Email", EMAIL, 80),
            FieldDef("Phone", PHONE, 40),
            FieldDef("Street", TEXTAREA, 255),
            FieldDef("City", STRING, 40),
            FieldDef("State", STRING, 80),
            FieldDef("PostalCode", STRING, 20),
            FieldDef("Country", STRING, 80),
            FieldDef("Description", TEXTAREA, 32000),
            FieldDef("LeadSource", PICKLIST, 255, picklist=("Web", "Phone Inquiry", "Partner Referral", "Other")),
            FieldDef(
                "Status", PICKLIST, 255, required=True, picklist=tuple(LEAD_STATUSES), default=DEFAULT_LEAD_STATUS
            ),
            FieldDef("IsConverted", BOOLEAN, default=False, **derived),
            FieldDef("ConvertedDate", DATE, **derived),
            FieldDef("ConvertedAccountId", REFERENCE, 18, reference_to="Account", **derived),
            FieldDef("ConvertedContactId", REFERENCE, 18, reference_to="Contact", **derived),
            FieldDef("ConvertedOpportunityId", REFERENCE, 18, reference_to="Opportunity", **derived),
            FieldDef("OwnerId", REFERENCE, 18, reference_to="User", relationship="Owner", default=USER_ID),
            *(lead_custom_field_defs(custom) if custom else []),
        ],
    )


def permission_objects() -> list[SObjectType]:
    """Permission sets, what they grant on objects and fields, and who holds them (setup data written by admins)."""
    parent = {"reference_to": "PermissionSet", "relationship": "Parent", "required": True, "updateable": False}
    grants = ("Read", "Create", "Edit", "Delete", "ViewAllRecords", "ModifyAllRecords")
    return [
        _object(
            "PermissionSet",
            "0PS",
            [
                FieldDef("Name", STRING, 80, required=True),
                FieldDef("Label", STRING, 80, required=True),
                FieldDef("Description", TEXTAREA, 255),
                FieldDef("IsOwnedByProfile", BOOLEAN, default=False, createable=False, updateable=False),
            ],
        ),
        _object(
            "ObjectPermissions",
            "110",
            [
                FieldDef("ParentId", REFERENCE, 18, **parent),
                FieldDef("SobjectType", STRING, 255, required=True, updateable=False),
                *(FieldDef(f"Permissions{grant}", BOOLEAN, default=False) for grant in grants),
            ],
        ),
        _object(
            "FieldPermissions",
            "01k",
            [
                FieldDef("ParentId", REFERENCE, 18, **parent),
                FieldDef("SobjectType", STRING, 255, required=True, updateable=False),
                FieldDef("Field", STRING, 255, required=True, updateable=False),
                FieldDef("PermissionsRead", BOOLEAN, default=False),
                FieldDef("PermissionsEdit", BOOLEAN, default=False),
            ],
        ),
        _object(
            "PermissionSetAssignment",
            "0Pa",
            [
                FieldDef("AssigneeId", REFERENCE, 18, reference_to="User", required=True, updateable=False),
                FieldDef(
                    "PermissionSetId", REFERENCE, 18, reference_to="PermissionSet", required=True, updateable=False
                ),
            ],
        ),
    ]


def build_objects(
    custom: CustomFields | None,
    stages: Iterable[str],
    help_values: Iterable[str],
    currencies: Iterable[str],
) -> dict[str, SObjectType]:
    currency = FieldDef(CURRENCY_FIELD, PICKLIST, 3, picklist=tuple(currencies), restricted=True, default="USD")
    derived = {"createable": False, "updateable": False}
    opportunity = _object(
        "Opportunity",
        "006",
        [
            FieldDef("Name", STRING, 120, required=True),
            FieldDef("StageName", PICKLIST, 255, required=True, picklist=tuple(stages), restricted=True),
            FieldDef("CloseDate", DATE, required=True),
            FieldDef("Amount", CURRENCY),
            FieldDef("Probability", PERCENT),
            FieldDef("Description", TEXTAREA, 32000),
            FieldDef(
                "AccountId",
                REFERENCE,
                18,
                reference_to="Account",
                relationship="Account",
                child_relationship="Opportunities",
            ),
            FieldDef("IsClosed", BOOLEAN, default=False, **derived),
            FieldDef("IsWon", BOOLEAN, default=False, **derived),
            FieldDef("Type", PICKLIST, 255, picklist=("Existing Business", "New Business")),
            FieldDef("LeadSource", PICKLIST, 255, picklist=("Web", "Phone Inquiry", "Partner Referral", "Other")),
            FieldDef("NextStep", STRING, 255),
            # Only a User owns an opportunity (queues own leads, cases and custom objects); by default the creator.
            FieldDef("OwnerId", REFERENCE, 18, reference_to="User", relationship="Owner", default=USER_ID),
            currency,
            *(custom_field_defs(custom, help_values) if custom else []),
        ],
    )
    account = _object(
        "Account",
        "001",
        [
            FieldDef("Name", STRING, 255, required=True),
            FieldDef("BillingStreet", TEXTAREA, 255),
            FieldDef("BillingCity", STRING, 40),
            FieldDef("BillingState", STRING, 80),
            FieldDef("BillingPostalCode", STRING, 20),
            FieldDef("BillingCountry", STRING, 80),
            currency,
        ],
    )
    contact = _object(
        "Contact",
        "003",
        [
            FieldDef("FirstName", STRING, 40),
            FieldDef("LastName", STRING, 80, required=True),
            FieldDef("Name", STRING, 121, **derived),
            FieldDef("Email", EMAIL, 80),
            FieldDef("Phone", PHONE, 40),
            FieldDef("Title", STRING, 128),
            FieldDef(
                "AccountId",
                REFERENCE,
                18,
                reference_to="Account",
                relationship="Account",
                child_relationship="Contacts",
            ),
        ],
    )
    role = _object(
        "OpportunityContactRole",
        "00K",
        [
            FieldDef(
                "OpportunityId",
                REFERENCE,
                18,
                required=True,
                updateable=False,
                reference_to="Opportunity",
                relationship="Opportunity",
                child_relationship="OpportunityContactRoles",
            ),
            FieldDef(
                "ContactId",
                REFERENCE,
                18,
                required=True,
                reference_to="Contact",
                relationship="Contact",
                child_relationship="OpportunityContactRoles",
            ),
            FieldDef("IsPrimary", BOOLEAN, default=False),
            FieldDef("Role", PICKLIST, 255, picklist=("Business User", "Decision Maker", "Economic Buyer", "Other")),
        ],
    )
    # Multi-currency orgs list their currencies here; the emulator picks "02U" as its key prefix.
    currency_type = _object(
        "CurrencyType",
        "02U",
        [
            FieldDef("IsoCode", STRING, 3, required=True, updateable=False),
            FieldDef("ConversionRate", DOUBLE),
            FieldDef("DecimalPlaces", DOUBLE),
            FieldDef("IsActive", BOOLEAN, default=True),
            FieldDef("IsCorporate", BOOLEAN, default=False),
        ],
    )
    # The org itself: one record, read-only through the API. Its currency field is added in single-currency orgs
    # (see org_currency_field); the emulator builds every org multi-currency first.
    organization = _object(
        "Organization", "00D", [FieldDef("Name", STRING, 80, createable=False, updateable=False)], read_only=True
    )
    # The org's users: the integration user and sellers, set up by an admin, only read through the API here.
    user = _object(
        "User",
        "005",
        [
            FieldDef("Name", STRING, 121, required=True),
            FieldDef("Username", STRING, 80, required=True),
            FieldDef("IsActive", BOOLEAN, default=True),
        ],
        read_only=True,
    )
    objects = {
        o.name: o
        for o in (
            opportunity,
            account,
            contact,
            role,
            currency_type,
            organization,
            user,
            lead_object(custom),
            *permission_objects(),
        )
    }
    for sobject in objects.values():
        for definition in sobject.fields.values():
            if definition.reference_to in objects and definition.child_relationship:
                relation = ChildRelationship(definition.child_relationship, sobject.name, definition)
                objects[definition.reference_to].add_child(relation)
    return objects


# ---------------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------------
def _type_error(definition: FieldDef, value: Any) -> SalesforceError:
    return bad_request(
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {definition.type} from {type(value).__name__} value {value!r} "
        f"for field {definition.name}",
        [definition.name],
    )


def coerce(definition: FieldDef, value: Any, picklist: tuple[str, ...] | None = None) -> Any:
    """The stored form of a JSON value written to ``definition``; raises the error the API answers with."""
    if value is None:
        return False if definition.type == BOOLEAN else None  # a checkbox cannot be null
    kind = definition.type
    if kind == BOOLEAN:
        if not isinstance(value, bool):
            raise _type_error(definition, value)
        return value
    if kind in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(definition, value)
        return value
    if not isinstance(value, str):
        raise _type_error(definition, value)
    if kind == DATE:
        if not _DATE_RE.fullmatch(value):
            raise _type_error(definition, value)
        return date.fromisoformat(value)
    if kind == DATETIME:
        try:
            return parse_datetime(value)
        except ValueError:
            raise _type_error(definition, value) from None
    if kind in (REFERENCE, ID):
        normalized = normalize_id(value)
        if normalized is None:
            raise bad_request(
                "MALFORMED_ID", f"{definition.name}: id value of incorrect type: {value}", [definition.name]
            )
        return normalized
    if definition.length is not None and len(value) > definition.length:
        raise bad_request(
            "STRING_TOO_LONG",
            f"{definition.label or definition.name}: data value too large: {value[:40]}... "
            f"(max length={definition.length})",
            [definition.name],
        )
    if kind == EMAIL and value and not _EMAIL_RE.fullmatch(value):
        raise bad_request("INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {value}", [definition.name])
    if kind == PICKLIST and definition.restricted:
        allowed = picklist if picklist is not None else definition.picklist
        if value not in allowed:
            raise bad_request(
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"{definition.label or definition.name}: bad value for restricted picklist field: {value}",
                [definition.name],
            )
    return value


def render_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def stage_table(
    stages: Iterable[tuple[str, bool, bool]] | Mapping[str, tuple[bool, bool]],
) -> dict[str, tuple[bool, bool]]:
    if isinstance(stages, Mapping):
        return {name: (bool(c), bool(w)) for name, (c, w) in stages.items()}
    return {name: (bool(c), bool(w)) for name, c, w in stages}
