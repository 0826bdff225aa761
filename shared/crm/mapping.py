"""The declarative field mapping both CRM adapters translate through, and its interpreter.

Each CRM ships its mapping as a TOML file next to its adapter (``dynamics/mapping.toml``,
``salesforce/mapping.toml``). For every neutral field of :class:`~shared.domain.opportunity.Opportunity` it
declares the CRM column, the field's type (which converter turns the value into the column's and back), which
way the field travels (``both``, ``pc->crm``, ``crm->pc``) and who wins when both sides changed it; the extra
columns a field is also copied to; and the CRM's status table. :func:`load` merges an override file over the
defaults key by key, then single overrides (the settings that name one column), and validates the result with
messages naming the file, the entry and the problem.

:class:`Converters` is the interpreter: one converter per type, driven by the entries, so an adapter has no
per-field code for plain columns. Status, the customer's account and the contacts stay in the adapters (a table
cannot say how to find an account); they use the mapping's status table.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..domain.errors import ValidationFailed
from ..domain.opportunity import MAPPED_FIELDS, MICROSOFT_SIDE_FIELDS, WRITABLE_FIELDS, Opportunity
from ..domain.policies import SUBSTATUS_OF
from .lead_mapping import LeadMapping

log = logging.getLogger(__name__)

COLUMN_TYPES = ("text", "memo", "list", "money", "date", "choice", "lookup", "boolean")
ADAPTER_TYPES = ("customer", "contacts", "status")  # written by adapter code, not one column
FIELD_TYPES = (*COLUMN_TYPES, *ADAPTER_TYPES)
DIRECTIONS = ("both", "pc->crm", "crm->pc")
OWNERS = ("pc", "crm")

# The types each neutral field can take: the value's shape decides which converters fit.
FIELD_KINDS: dict[str, tuple[str, ...]] = {
    "name": ("text",),
    "deal_value": ("money",),
    "currency": ("lookup",),
    "close_date": ("date",),
    "notes": ("memo", "text"),
    "help_code": ("choice",),
    "solution_ids": ("list",),
    "referral_id": ("text",),
    "referral_link": ("text",),
    "sync_enabled": ("boolean",),
    "audit": ("memo",),
    "customer_name": ("customer",),
    "customer_address": ("customer",),
    "customer_contacts": ("contacts",),
    "status": ("status",),
    "substatus": ("status",),
    "status_reason": ("choice",),
    # Partner Center's current co-sell fields (shared.domain.current_fields).
    "solution_area": ("text",),
    "solution_play": ("text",),
    "partner_role": ("text",),
    "purchase_intent": ("choice", "text"),
    # Microsoft's side of the engagement (shared.domain.microsoft_side); "" leaves one out.
    "microsoft_status": ("text",),
    "microsoft_seller_name": ("text",),
    "microsoft_seller_email": ("text",),
    "microsoft_crm_id": ("text",),
    "microsoft_notes": ("memo", "text"),
}
# The connector cannot key, find or report on a record without these columns.
REQUIRED_COLUMNS = ("name", "referral_id", "referral_link", "sync_enabled", "audit")
# Neutral fields the adapters write apart from the plain columns: the customer's account and the status.
CUSTOMER_FIELDS = frozenset({"customer_name", "customer_address"})
STATUS_FIELDS = frozenset({"status", "substatus"})
# Partner Center's own id and link: they only ever come from Partner Center.
PC_ONLY_FIELDS = ("referral_id", "referral_link")
BOOKKEEPING_FIELDS = tuple(sorted(WRITABLE_FIELDS - set(MAPPED_FIELDS) - set(MICROSOFT_SIDE_FIELDS)))
STATUSES = tuple(SUBSTATUS_OF)
# Choice fields whose codes come from Partner Center's free text (statusReason): a code without a CRM value is not
# an error, it leaves the column empty (the stored form predicts that, and the merge says so in the Audit column).
FREE_TEXT_CHOICES = frozenset({"status_reason"})
# What an open status reads back as when the table names no substatus.
OPEN_SUBSTATUS = {"New": "Pending", "Active": "Accepted"}

Path_ = tuple[str, ...]


class MappingError(ValueError):
    """The mapping cannot be used; the message names the file (or setting), the entry and the problem."""


def dotted(path: Sequence[object]) -> str:
    return ".".join(str(part) for part in path)


def _one_of(value: str | None, allowed: Sequence[str]) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(f"'{value}' is not one of {', '.join(allowed)}")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Entry(Strict):
    """One neutral field: the column holding it, its converter, which way it travels and who owns it."""

    type: str
    column: str = ""  # empty: the field is not synchronised with this CRM
    label: str = ""  # how users know the column, for messages
    direction: str | None = None  # both (the default), pc->crm or crm->pc
    owner: str | None = None  # pc or crm: who wins when both sides changed the field
    max_length: int | None = Field(None, ge=1)  # longer text is cut to this when written
    required: bool = False  # the CRM requires a value: an empty one is not written, the record keeps its own
    # The column may be missing from the org (added by a later version): then it is left out of the sync, and
    # reported, instead of failing every read (shared.crm.org_columns).
    optional: bool = False
    values: dict[str, Any] = Field(default_factory=dict)  # choice: neutral code -> the CRM's value
    target: str = ""  # lookup: the table the code is looked up in

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return str(_one_of(value, FIELD_TYPES))

    @field_validator("direction")
    @classmethod
    def _direction(cls, value: str | None) -> str | None:
        return _one_of(value, DIRECTIONS)

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        return _one_of(value, OWNERS)

    @property
    def travels(self) -> str:
        return self.direction or "both"


class Extra(Strict):
    """A neutral field also written, one way from Partner Center, to an additional column."""

    source: str
    column: str
    type: str
    max_length: int | None = Field(None, ge=1)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return str(_one_of(value, COLUMN_TYPES))


def parse_status_key(text: str) -> tuple[str, str | None]:
    """``"Closed/Won"`` -> ("Closed", "Won"), ``"New"`` -> ("New", None); ValueError when Partner Center has no
    such status or substatus."""
    status, _, substatus = text.partition("/")
    if status not in SUBSTATUS_OF:
        raise ValueError(f"'{status}' is not a Partner Center status ({', '.join(STATUSES)})")
    if substatus and substatus not in SUBSTATUS_OF[status]:
        allowed = ", ".join(sorted(SUBSTATUS_OF[status]))
        raise ValueError(f"'{substatus}' is not a substatus of {status} ({allowed})")
    return status, substatus or None


# The custom columns every CRM has a ``<PREFIX>_FIELD_<NAME>`` setting for, by neutral field.
FIELD_SETTINGS = {
    "SYNC": "sync_enabled",
    "REFERRAL_ID": "referral_id",
    "REFERRAL_LINK": "referral_link",
    "HELP": "help_code",
    "PRODUCTS": "solution_ids",
    "AUDIT": "audit",
}


@dataclass(frozen=True)
class CrmTerms:
    """What a CRM calls things and which values it takes, for the mapping's checks and messages."""

    product: str
    choice_word: str = "choice"  # its name for a column with a fixed list of values
    choice_value_type: type = str  # the type of the values a choice column stores
    lookup_targets: tuple[str, ...] = ()  # the tables a lookup entry may point at


def column_settings(prefix: str) -> dict[str, Path_]:
    """The column-override settings of one CRM (``DATAVERSE``, ``SALESFORCE``): setting name -> mapping path."""
    return {f"{prefix}_FIELD_{name}": ("fields", field, "column") for name, field in FIELD_SETTINGS.items()}


class CrmMapping(Strict):
    """The fields and extra columns every CRM declares; a CRM's subclass adds its status table."""

    fields: dict[str, Entry]
    extra: tuple[Extra, ...] = ()
    lead: LeadMapping = LeadMapping()  # Partner Center leads as CRM leads (SYNC_COSELL_ONLY=false)

    terms: ClassVar[CrmTerms] = CrmTerms(product="the CRM")
    # Settings that override one entry each: setting name -> the path it replaces.
    settings: ClassVar[Mapping[str, Path_]] = {}

    # -- reading the mapping ----------------------------------------------------------------------------------------
    def column(self, name: str) -> str:
        return self.fields[name].column

    def mapped(self) -> Iterator[tuple[str, Entry]]:
        """The fields that live in one column of the opportunity, in declaration order."""
        for name, entry in self.fields.items():
            if entry.type in COLUMN_TYPES and entry.column:
                yield name, entry

    def owners(self) -> dict[str, str]:
        return {name: entry.owner for name, entry in self.fields.items() if entry.owner}

    def directions(self) -> dict[str, str]:
        return {name: entry.travels for name, entry in self.fields.items() if name in MAPPED_FIELDS}

    def bounded(self, name: str, max_length: int) -> Self:
        """The same mapping with field ``name`` cut to at most ``max_length`` characters."""
        entry = self.fields[name]
        limit = min(entry.max_length or max_length, max_length)
        fields = {**self.fields, name: entry.model_copy(update={"max_length": limit})}
        return self.model_copy(update={"fields": fields})

    def setting_for(self, path: Path_) -> str | None:
        return next((name for name, target in self.settings.items() if target == path), None)

    def stored(self, opportunity: Opportunity) -> Opportunity:
        """The opportunity as the mapping lets it be stored: fields without a column empty, text cut to its
        ``max_length``, so that what is compared is what reads back."""
        update: dict[str, Any] = {}
        for name, entry in self.fields.items():
            value = getattr(opportunity, name)
            if entry.type in COLUMN_TYPES and not entry.column:
                update[name] = Opportunity.model_fields[name].get_default(call_default_factory=True)
            elif name in FREE_TEXT_CHOICES and value is not None and value not in entry.values:
                update[name] = None
            elif entry.max_length and isinstance(value, str) and len(value) > entry.max_length:
                update[name] = value[: entry.max_length]
        return opportunity.model_copy(update=update) if update else opportunity

    # -- validation -------------------------------------------------------------------------------------------------
    def problems(self) -> list[tuple[Path_, str]]:
        """Everything wrong with the mapping as a whole, each with the path of the entry at fault."""
        found: list[tuple[Path_, str]] = []
        for name in self.fields:
            if name not in FIELD_KINDS:
                found.append((("fields", name), f"is not a neutral field ({', '.join(FIELD_KINDS)})"))
        for name in FIELD_KINDS:
            if name not in self.fields:
                found.append((("fields", name), "is missing"))
        columns: dict[str, str] = {}
        for name, entry in self.fields.items():
            if name in FIELD_KINDS:
                found.extend(self._entry_problems(name, entry))
            if entry.column and entry.type in COLUMN_TYPES:
                if entry.column.casefold() in columns:
                    other = columns[entry.column.casefold()]
                    found.append((("fields", name, "column"), f"'{entry.column}' already holds {other}"))
                columns[entry.column.casefold()] = name
        for index, extra in enumerate(self.extra):
            found.extend(self._extra_problems(index, extra, columns))
        return found

    def _entry_problems(self, name: str, entry: Entry) -> list[tuple[Path_, str]]:
        at = ("fields", name)
        kinds = FIELD_KINDS[name]
        found: list[tuple[Path_, str]] = []
        if entry.type not in kinds:
            found.append(((*at, "type"), f"'{entry.type}' cannot hold {name}; it takes {' or '.join(kinds)}"))
            return found
        if entry.type in ADAPTER_TYPES and entry.column:
            found.append(((*at, "column"), f"{name} is written by the adapter, not to one column; leave it out"))
        if name in REQUIRED_COLUMNS and not entry.column:
            found.append(((*at, "column"), "is required: the connector cannot work without this column"))
        if entry.optional and (name in REQUIRED_COLUMNS or entry.type in ADAPTER_TYPES):
            why = "the connector cannot work without its column" if name in REQUIRED_COLUMNS else "it has no column"
            found.append(((*at, "optional"), f"{name} cannot be optional: {why}"))
        if name in BOOKKEEPING_FIELDS:
            for key in ("owner", "direction"):
                if getattr(entry, key) is not None:
                    found.append(((*at, key), f"{name} is the connector's own column; it has no {key}"))
        elif name in MICROSOFT_SIDE_FIELDS:
            found.extend(_microsoft_side_problems(at, name, entry))
        elif entry.owner is None:
            found.append(((*at, "owner"), "is required (pc or crm)"))
        if name in PC_ONLY_FIELDS and entry.travels == "crm->pc":
            found.append(((*at, "direction"), f"{name} only ever comes from Partner Center"))
        if entry.values and entry.type != "choice":
            found.append(((*at, "values"), "only a choice takes a value table"))
        if entry.type == "choice":
            found.extend(self._value_problems(at, entry))
        if entry.target and entry.type != "lookup":
            found.append(((*at, "target"), "only a lookup takes a target"))
        if entry.type == "lookup" and entry.target not in self.terms.lookup_targets:
            allowed = ", ".join(self.terms.lookup_targets) or "none"
            found.append(((*at, "target"), f"'{entry.target}' is not a lookup {self.terms.product} offers ({allowed})"))
        if entry.max_length and entry.type not in ("text", "memo"):
            found.append(((*at, "max_length"), "only text and memo take a max_length"))
        return found

    def _value_problems(self, at: Path_, entry: Entry) -> list[tuple[Path_, str]]:
        if not entry.values:
            return [((*at, "values"), "a choice needs its value table (neutral code = the CRM's value)")]
        wanted = self.terms.choice_value_type
        kind = "a whole number" if wanted is int else "text"
        return [
            ((*at, "values", code), f"{value!r} is not {kind}")
            for code, value in entry.values.items()
            if isinstance(value, bool) or not isinstance(value, wanted)
        ]

    def _extra_problems(self, index: int, extra: Extra, columns: Mapping[str, str]) -> list[tuple[Path_, str]]:
        at: Path_ = ("extra", str(index))
        if extra.source not in MAPPED_FIELDS or FIELD_KINDS[extra.source][0] in ADAPTER_TYPES:
            plain = [name for name in MAPPED_FIELDS if FIELD_KINDS[name][0] not in ADAPTER_TYPES]
            return [((*at, "source"), f"'{extra.source}' is not a field that can be copied ({', '.join(plain)})")]
        found: list[tuple[Path_, str]] = []
        if extra.type not in FIELD_KINDS[extra.source]:
            kinds = " or ".join(FIELD_KINDS[extra.source])
            found.append(((*at, "type"), f"'{extra.type}' cannot hold {extra.source}; it takes {kinds}"))
        if not extra.column:
            found.append(((*at, "column"), "is required"))
        elif extra.column.casefold() in columns:
            found.append(((*at, "column"), f"'{extra.column}' already holds {columns[extra.column.casefold()]}"))
        if extra.max_length and extra.type not in ("text", "memo"):
            found.append(((*at, "max_length"), "only text and memo take a max_length"))
        return found


def _microsoft_side_problems(at: Path_, name: str, entry: Entry) -> list[tuple[Path_, str]]:
    """Microsoft's side is Microsoft's: it only ever travels from Partner Center, so nobody else can own it."""
    found: list[tuple[Path_, str]] = []
    if entry.direction != "pc->crm":
        found.append(((*at, "direction"), f'{name} is Microsoft\'s side of the engagement; it must be "pc->crm"'))
    if entry.owner is not None:
        found.append(((*at, "owner"), f"{name} only comes from Partner Center; it has no owner"))
    return found


M = TypeVar("M", bound=CrmMapping)


# -- loading ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    """One value set from outside the files (a setting), replacing whatever is at ``path``."""

    path: Path_
    value: Any
    source: str


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """The effective mapping, the merged data it was validated from, and where each overridden value came from
    (a path absent from ``sources`` has its shipped default)."""

    mapping: M
    data: dict[str, Any]
    sources: dict[Path_, str]
    default_file: str


def read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise MappingError(f"{label}: the file does not exist") from None
    except OSError as exc:
        raise MappingError(f"{label}: the file cannot be read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{label}: not valid TOML: {exc}") from None


def merge(base: dict[str, Any], changes: Mapping[str, Any], sources: dict[Path_, str], source: str) -> None:
    """Merge ``changes`` into ``base`` table by table: an admin writes only what differs. Lists and single
    values are replaced whole."""

    def walk(target: dict[str, Any], update: Mapping[str, Any], path: Path_) -> None:
        for key, value in update.items():
            here = (*path, key)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                walk(target[key], value, here)
            else:
                target[key] = copy.deepcopy(value)
                _forget_below(sources, here)
                sources[here] = source

    walk(base, changes, ())


def _forget_below(sources: dict[Path_, str], path: Path_) -> None:
    for known in [p for p in sources if p[: len(path)] == path]:
        del sources[known]


def _set(data: dict[str, Any], path: Path_, value: Any) -> None:
    target = data
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = copy.deepcopy(value)


def origin(loc: Sequence[object], sources: Mapping[Path_, str], default: str) -> str:
    """Where the value at ``loc`` (or the nearest table around it) came from."""
    path = tuple(str(part) for part in loc)
    for end in range(len(path), 0, -1):
        if path[:end] in sources:
            return sources[path[:end]]
    below = [source for known, source in sources.items() if known[: len(path)] == path]
    return below[0] if path and len(set(below)) == 1 else default


def _validation_messages(exc: ValidationError) -> list[tuple[Path_, str]]:
    messages = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(str(part) for part in error.get("loc", ()))
        if error["type"] == "extra_forbidden":
            text = "is not a key of this table"
        elif error["type"] == "missing":
            text = "is required"
        else:
            text = str(error["msg"]).removeprefix("Value error, ")
        messages.append((loc, text))
    return messages


def load(kind: type[M], default_file: Path, file: Path | None, overrides: Sequence[Override] = ()) -> Loaded[M]:
    """The shipped mapping, ``file`` merged over it, then ``overrides``; raises MappingError naming the file
    (or setting), the entry and the problem."""
    default_label = f"{default_file.parent.name}/{default_file.name}"
    data = read_toml(default_file, default_label)
    sources: dict[Path_, str] = {}
    if file is not None:
        merge(data, read_toml(file, str(file)), sources, str(file))
    for override in overrides:
        _set(data, override.path, override.value)
        _forget_below(sources, override.path)
        sources[override.path] = override.source
    try:
        mapping = kind.model_validate(data)
    except ValidationError as exc:
        problems = _validation_messages(exc)
    else:
        problems = mapping.problems()
    if problems:
        lines = [f"{origin(path, sources, default_label)}: {dotted(path)}: {text}" for path, text in problems]
        raise MappingError("; ".join(lines))
    return Loaded(mapping, data, sources, default_label)


# -- showing ----------------------------------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(loaded: Loaded[Any]) -> str:
    """The effective mapping as TOML, each value that is not the shipped default marked with where it came from."""
    lines: list[str] = [f"# The effective mapping: {loaded.default_file}, then overrides (marked where they came from)"]

    def note(path: Path_) -> str:
        return f"  # from {loaded.sources[path]}" if path in loaded.sources else ""

    def table(path: Path_, items: Mapping[str, Any], header: str | None) -> None:
        plain = [(k, v) for k, v in items.items() if not isinstance(v, dict) and not _is_table_list(v)]
        if header is not None and (plain or not items):
            lines.extend(["", header + note(path)])
        for key, value in plain:
            lines.append(f"{_key(key)} = {_value(value)}{note((*path, key))}")
        for key, value in items.items():
            here = (*path, key)
            if isinstance(value, dict):
                table(here, value, f"[{'.'.join(_key(p) for p in here)}]")
            elif _is_table_list(value):
                for item in value:
                    lines.extend(["", f"[[{'.'.join(_key(p) for p in here)}]]{note(here)}"])
                    for item_key, item_value in item.items():
                        lines.append(f"{_key(item_key)} = {_value(item_value)}")

    table((), loaded.data, None)
    return "\n".join(lines) + "\n"


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


# -- converting -------------------------------------------------------------------------------------------------------
def writable(fields: Sequence[str], adapter: str) -> set[str]:
    """The fields a caller asks an adapter to write, refused as a programming error when one is not writable."""
    wanted = set(fields)
    unknown = wanted - WRITABLE_FIELDS
    if unknown:
        raise ValueError(f"fields not written by the {adapter} adapter: {', '.join(sorted(unknown))}")
    return wanted


def to_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def to_date(value: Any) -> date | None:
    return None if not value else date.fromisoformat(str(value)[:10])


def split_list(value: Any) -> tuple[str, ...]:
    """Items of a comma-separated text column (solution ids)."""
    return tuple(part.strip() for part in str(value or "").split(",") if part.strip())


class Lookups(Protocol):
    """How one CRM stores a ``lookup`` entry: a code kept in another table."""

    def select(self, entry: Entry) -> str:
        """The name a read selects for the entry's column."""
        ...

    def write(self, entry: Entry, code: str) -> dict[str, Any]:
        """The body items that set the column to ``code`` (raises ValidationFailed for an unknown code)."""
        ...

    def read(self, entry: Entry, row: Mapping[str, Any]) -> str | None: ...


class Converters:
    """Neutral values <-> column values, one converter per type, driven by the mapping's entries."""

    def __init__(self, mapping: CrmMapping, lookups: Lookups) -> None:
        self.mapping = mapping
        self.lookups = lookups
        self._codes = {
            name: {value: code for code, value in entry.values.items()}
            for name, entry in mapping.fields.items()
            if entry.type == "choice"
        }

    def select(self) -> list[str]:
        """The opportunity columns a read selects for the mapped fields."""
        return [self.lookups.select(e) if e.type == "lookup" else e.column for _, e in self.mapping.mapped()]

    def columns(self, opportunity: Opportunity, fields: Iterable[str]) -> dict[str, Any]:
        """The body items for ``fields`` of ``opportunity`` (fields without a column, and those written by
        adapter code, are left out), plus the extra columns copying any of them."""
        wanted = set(fields)
        body: dict[str, Any] = {}
        for name, entry in self.mapping.mapped():
            if name in wanted:
                body.update(self._write(name, entry, getattr(opportunity, name)))
        for extra in self.mapping.extra:
            if extra.source in wanted:
                source = self.mapping.fields[extra.source]
                entry = source.model_copy(
                    update={"column": extra.column, "type": extra.type, "max_length": extra.max_length}
                )
                body.update(self._write(extra.source, entry, getattr(opportunity, extra.source)))
        return body

    def values(self, row: Mapping[str, Any], record_id: object = None) -> dict[str, Any]:
        """The neutral values of the mapped fields in a row (fields without a column are left out)."""
        values = {name: self._read(name, entry, row, record_id) for name, entry in self.mapping.mapped()}
        unmapped = tuple(
            (name, f"{entry.label or entry.column} value '{row.get(entry.column)}'")
            for name, entry in self.mapping.mapped()
            if name in FREE_TEXT_CHOICES and values[name] is None and row.get(entry.column) is not None
        )
        return {**values, "unmapped": unmapped} if unmapped else values

    def _write(self, name: str, entry: Entry, value: Any) -> dict[str, Any]:
        kind = entry.type
        if kind == "lookup":
            return self.lookups.write(entry, value) if value else {}
        if kind in ("text", "memo"):
            written = value[: entry.max_length] if entry.max_length and isinstance(value, str) else value
        elif kind == "list":
            written = ", ".join(value) or None
        elif kind == "money":
            written = float(value) if value is not None else None
        elif kind == "date":
            written = value.isoformat() if value else None
        elif kind == "choice":
            written = self._choice(name, entry, value)
        else:
            written = bool(value)
        if written is None and entry.required:
            return {}
        return {entry.column: written}

    def _choice(self, name: str, entry: Entry, code: str | None) -> Any:
        if code is None:
            return None
        if code not in entry.values:
            if name in FREE_TEXT_CHOICES:
                return None
            label = f"'{entry.label}'" if entry.label else name
            setting = self.mapping.setting_for(("fields", name, "values"))
            where = f"fields.{name}.values in the mapping" + (f" or {setting}" if setting else "")
            terms = self.mapping.terms
            raise ValidationFailed(
                [f"{label} value '{code}' has no {terms.product} {terms.choice_word} value; add it to {where}"]
            )
        return entry.values[code]

    def _read(self, name: str, entry: Entry, row: Mapping[str, Any], record_id: object) -> Any:
        kind = entry.type
        if kind == "lookup":
            return self.lookups.read(entry, row)
        raw = row.get(entry.column)
        if kind == "list":
            return split_list(raw)
        if kind == "money":
            return to_decimal(raw)
        if kind == "date":
            return to_date(raw)
        if kind == "boolean":
            return bool(raw)
        if kind == "choice":
            if raw is None:
                return None
            code = self._codes[name].get(raw)
            if code is None:
                log.warning(
                    "opportunity %s: %s value %r of %s is not in fields.%s.values",
                    record_id,
                    name,
                    raw,
                    entry.column,
                    name,
                )
            return code
        return raw
