"""Who owns an opportunity made in the CRM from a Partner Center referral (the ``INBOUND_OWNER`` setting).

The setting is a list of rules separated by ``;``, each ``<condition>=<owner>``, tried in order; the first whose
condition the referral meets names the owner:

    country:US=user:<id>;country:CA,MX=team:<id>;solution:SOL-123=user:<id>;*=team:<id>

A condition is ``country:<ISO codes>`` (the customer's country), ``solution:<ids>`` (any of the referral's
solutions) or ``*`` (every referral); a lone owner (``user:<id>``) is the same as ``*=user:<id>``. A referral that
no rule matches, like every referral when the setting is empty, is owned by whoever the CRM makes the owner of
what the connector creates: its integration user.

Only the grammar is checked here. Which kinds of owner a CRM has, and what their ids look like, is the CRM's
business (the settings check them per CRM).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, cast, get_args

from .opportunity import Opportunity

OwnerKind = Literal["user", "team"]
OWNER_KINDS: tuple[OwnerKind, ...] = get_args(OwnerKind)
EVERY_REFERRAL = "*"

# Ids go into request paths and bodies (``/systemusers(<id>)``): letters, digits and hyphens cover every CRM's ids.
_OWNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_COUNTRY = re.compile(r"[A-Za-z]{2}")


@dataclass(frozen=True)
class Owner:
    """A CRM user or team (what a team is depends on the CRM) to own a new opportunity."""

    kind: OwnerKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def _country(opportunity: Opportunity) -> Iterable[str | None]:
    return (opportunity.customer_address.country,)


def _solutions(opportunity: Opportunity) -> Iterable[str | None]:
    return opportunity.solution_ids


def _country_code(value: str) -> str | None:
    """Why ``value`` cannot be a country of a rule, or None when it can."""
    return None if _COUNTRY.fullmatch(value) else f"'{value}' is not an ISO 3166 two-letter country code"


# What a condition can test: the referral's values it is matched against (as mapped: the customer's country is an
# upper-case ISO code), and what makes a value of the rule wrong.
@dataclass(frozen=True)
class _Attribute:
    values_of: Callable[[Opportunity], Iterable[str | None]]
    problem: Callable[[str], str | None]


ATTRIBUTES: dict[str, _Attribute] = {
    "country": _Attribute(_country, _country_code),
    "solution": _Attribute(_solutions, lambda value: None),
}


@dataclass(frozen=True)
class Rule:
    """``owner`` for referrals whose ``attribute`` has one of ``values`` (compared case-insensitively); every
    referral when ``attribute`` is None (``*``). ``text`` is the rule as the setting wrote it."""

    attribute: str | None
    values: frozenset[str]
    owner: Owner
    text: str

    def matches(self, opportunity: Opportunity) -> bool:
        if self.attribute is None:
            return True
        found = ATTRIBUTES[self.attribute].values_of(opportunity)
        return any(value.casefold() in self.values for value in found if value)


@dataclass(frozen=True)
class Routing:
    """The rules of ``INBOUND_OWNER`` in order; none: every new opportunity keeps the CRM's default owner."""

    rules: tuple[Rule, ...] = ()

    def rule_for(self, opportunity: Opportunity) -> Rule | None:
        """The first rule ``opportunity`` (a referral mapped to the CRM's terms) meets; None: the default owner."""
        return next((rule for rule in self.rules if rule.matches(opportunity)), None)

    def owners(self) -> tuple[Owner, ...]:
        return tuple(dict.fromkeys(rule.owner for rule in self.rules))


def parse_owner(text: str) -> Owner:
    kind, colon, owner_id = text.strip().partition(":")
    kind, owner_id = kind.strip().lower(), owner_id.strip()
    if not colon or kind not in OWNER_KINDS:
        raise ValueError(f"'{text.strip()}' is not an owner: write user:<id> or team:<id>")
    if not _OWNER_ID.fullmatch(owner_id):
        raise ValueError(f"'{text.strip()}' does not name a {kind} id (letters, digits and hyphens)")
    return Owner(cast(OwnerKind, kind), owner_id)


def _condition(text: str) -> tuple[str | None, tuple[str, ...]]:
    if text == EVERY_REFERRAL:
        return None, ()
    name, colon, listed = text.partition(":")
    name = name.strip().lower()
    attribute = ATTRIBUTES.get(name)
    if not colon or attribute is None:
        raise ValueError(f"'{text}' is not a condition: write {', '.join(f'{n}:<values>' for n in ATTRIBUTES)} or *")
    values = [value.strip() for value in listed.split(",")]
    if not all(values):
        raise ValueError(f"'{text}' lists an empty {name}")
    for value in values:
        problem = attribute.problem(value)
        if problem:
            raise ValueError(problem)
    return name, tuple(values)


def _rule(text: str) -> tuple[Rule, tuple[str, ...]]:
    """The rule and the values its condition lists, as written."""
    condition, equals, owner = text.partition("=")
    if not equals:
        return Rule(None, frozenset(), parse_owner(text), f"{EVERY_REFERRAL}={text}"), ()
    attribute, values = _condition(condition.strip())
    return Rule(attribute, frozenset(v.casefold() for v in values), parse_owner(owner), text), values


def parse_routing(text: str) -> Routing:
    """The rules of ``text``; ValueError naming the part that is wrong. Rules that could never match (after ``*``,
    or for a value an earlier rule already routes) are refused too: they are surely a mistake."""
    rules: list[Rule] = []
    routed: set[tuple[str, str]] = set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            rule, values = _rule(part)
        except ValueError as exc:
            raise ValueError(f"rule '{part}': {exc}") from None
        if rules and rules[-1].attribute is None:
            raise ValueError(f"rule '{part}' comes after '{rules[-1].text}', which routes every referral")
        taken = [value for value in values if (str(rule.attribute), value.casefold()) in routed]
        if taken:
            raise ValueError(f"rule '{part}': {rule.attribute} {', '.join(taken)} is routed by an earlier rule")
        routed.update((str(rule.attribute), value) for value in rule.values)
        rules.append(rule)
    return Routing(tuple(rules))
