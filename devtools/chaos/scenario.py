"""The records of a chaos run, the edits made to them, and what each edited field may end as.

Every value an edit sets is new (a counter runs through them), so the final value of a field says which
edit won. A field ends correctly when both sides hold the same value and that value is

* the last edit made to it on either side (the initial value counts as an edit made at creation), or
* the last edit its owner side made since creation (the CRM mapping's ``owner``: when both sides changed a
  field before the connector saw either change, the owner wins, and the other side's edit is rightly gone).

An edit takes effect somewhere between the moment it was sent and the moment it was answered, so "last"
means "possibly last": any edit answered after the latest start among the others qualifies.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from shared.crm.dynamics.mapping import default_mapping as dataverse_mapping
from shared.crm.salesforce.mapping import default_mapping as salesforce_mapping

from .actors import NewOpportunity, canonical

CRM, PC = "crm", "pc"
ACCEPTED, PENDING = "Active/Accepted", "New/Pending"
HELP_CODES = ("ProofOfConceptOrDemo", "CustomerTechnicalArchitecture", "GeneralOrOther")
SOLUTION = "SOL-34104-EBB"
BASE_DATE = date(2027, 1, 1)


# A chaos run uses the shipped mapping, whose owners are the same for both CRMs.
OWNERS = dataverse_mapping().owners()
assert OWNERS == salesforce_mapping().owners(), "the shipped mappings disagree on who owns a field"


def owner(name: str) -> str:
    """The side whose edit wins when both sides changed the field before the connector saw either change."""
    return OWNERS.get(name, "pc")


@dataclass(frozen=True)
class Edit:
    side: str
    value: str | None
    started: float
    answered: float
    initial: bool = False


@dataclass
class Record:
    index: int
    origin: str  # CRM or PC: where the record was first entered
    valid: bool
    customer: str
    email: str
    help_code: str | None
    crm_id: str | None = None
    referral_id: str | None = None
    created: bool = False
    closed: bool = False
    edits: dict[str, list[Edit]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What the record is known by on its own side (the id it was created with)."""
        return (self.crm_id if self.origin == CRM else self.referral_id) or f"#{self.index}"

    def label(self) -> str:
        return f"record {self.index} ({'CRM' if self.origin == CRM else 'Partner Center'}-born, {self.key})"

    def log(self, name: str, edit: Edit) -> None:
        self.edits.setdefault(name, []).append(edit)

    def current(self, name: str) -> str | None:
        """The value of the most recent edit (what a person would think the field holds)."""
        edits = self.edits.get(name, [])
        return max(edits, key=lambda e: e.answered).value if edits else None

    def allowed(self, name: str) -> set[str | None]:
        """The values the field may end as (see the module docstring)."""
        edits = self.edits.get(name, [])
        if not edits:
            return set()
        allowed = {e.value for e in _possibly_last(edits)}
        later = [e for e in edits if not e.initial and e.side == owner(name)]
        if later:
            allowed |= {e.value for e in _possibly_last(later)}
        return allowed


def _possibly_last(edits: list[Edit]) -> list[Edit]:
    found = []
    for edit in edits:
        others = [e.started for e in edits if e is not edit]
        if not others or edit.answered >= max(others):
            found.append(edit)
    return found


class Plan:
    """The seeded plan: which records exist, in what order they are created, and the values of edits."""

    def __init__(self, seed: int, count: int, edits_per_record: float) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        invalid_per_side = max(1, count // 25)
        valid = max(0, count - 2 * invalid_per_side)
        origins = [CRM] * (valid - valid // 2) + [PC] * (valid // 2)
        self.records: list[Record] = []
        for index, origin in enumerate(origins + [CRM] * invalid_per_side + [PC] * invalid_per_side):
            self.records.append(
                Record(
                    index=index,
                    origin=origin,
                    valid=index < valid,
                    customer=f"Chaos Customer {seed}-{index:04d}",
                    email=f"buyer{index}@customer-{seed}-{index}.example",
                    help_code=self.rng.choice(HELP_CODES) if origin == PC or self.rng.random() < 0.35 else None,
                )
            )
        self.rng.shuffle(self.records)
        self.edit_count = round(valid * edits_per_record)
        self._counter = 0
        self._lock = threading.Lock()

    @property
    def valid(self) -> list[Record]:
        return [r for r in self.records if r.valid]

    @property
    def invalid(self) -> list[Record]:
        return [r for r in self.records if not r.valid]

    def next_number(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def new_value(self, name: str, record: Record) -> str:
        n = self.next_number()
        if name == "name":
            return f"Chaos deal {record.index:04d} v{n}"
        if name == "deal_value":
            return str(100000 + n)
        if name == "notes":
            return f"Notes {record.index:04d} v{n}"
        return (BASE_DATE + timedelta(days=n % 3000)).isoformat()

    # -- what each record is created with -------------------------------------------------------------
    def initial(self, record: Record) -> dict[str, str | None]:
        value = 1000 + record.index * 10
        return {
            "name": f"Chaos deal {record.index:04d}",
            "deal_value": str(-value if (record.origin == PC and not record.valid) else value),
            "notes": f"Notes {record.index:04d}",
            "close_date": (BASE_DATE + timedelta(days=record.index % 365)).isoformat(),
            "status": PENDING if record.origin == PC else ACCEPTED,
        }

    def new_opportunity(self, record: Record) -> NewOpportunity:
        values = self.initial(record)
        return NewOpportunity(
            name=str(values["name"]),
            customer=record.customer,
            postal_code=f"{98000 + record.index % 999}",
            email=record.email,
            first_name="Pat",
            last_name=f"Buyer{record.index}",
            deal_value=int(str(values["deal_value"])),
            notes=str(values["notes"]),
            close_date=str(values["close_date"]),
            products=SOLUTION if record.valid else None,  # invalid: no co-sell solution id
            help_code=record.help_code,
        )

    def referral_overrides(self, record: Record) -> dict[str, object]:
        values = self.initial(record)
        return {
            "name": values["name"],
            "customerProfile": {
                "name": record.customer,
                "address": {"postalCode": f"{98000 + record.index % 999}", "country": "US"},
                "team": [
                    {
                        "firstName": "Avery",
                        "lastName": f"Buyer{record.index}",
                        "email": record.email,
                        "phoneNumber": "+1 425 555 0100",
                        "title": "CIO",
                    }
                ],
            },
            "details": {
                "dealValue": float(str(values["deal_value"])),
                "notes": values["notes"],
                "closingDateTime": f"{values['close_date']}T00:00:00Z",
                "currency": "USD",
            },
            "inviteContext": {"assistanceRequestCode": record.help_code or "Unknown"},
        }

    def log_creation(self, record: Record, started: float) -> None:
        answered = time.monotonic()
        for name, value in self.initial(record).items():
            record.log(name, Edit(record.origin, canonical(name, value), started, answered, True))
        record.created = True
