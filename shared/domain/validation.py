"""Checks a mapped opportunity must pass before the connector writes it anywhere."""

from __future__ import annotations

import re

from .current_fields import services_cosell_problems
from .errors import ValidationFailed
from .opportunity import Opportunity

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def problems_for_crm(opportunity: Opportunity) -> list[str]:
    """Reasons a referral cannot become a CRM opportunity, each one actionable."""
    problems: list[str] = []
    if not opportunity.name:
        problems.append("The referral has no name; give it a name in Partner Center.")
    if opportunity.deal_value is not None and opportunity.deal_value < 0:
        problems.append(f"Deal value {opportunity.deal_value} is negative; it must be zero or more.")
    if opportunity.currency is not None and not _CURRENCY.match(opportunity.currency):
        problems.append(f"Currency '{opportunity.currency}' is not a 3-letter ISO 4217 code.")
    country = opportunity.customer_address.country
    if country is not None and not _COUNTRY.match(country):
        problems.append(f"Customer country '{country}' is not a 2-letter ISO 3166 code.")
    if not opportunity.customer_name:
        problems.append("The referral has no customer name; the CRM needs one to find or create the account.")
    for contact in opportunity.customer_contacts:
        if contact.email and not _EMAIL.match(contact.email):
            problems.append(f"Customer contact e-mail '{contact.email}' is not a valid address.")
    return problems


def validate_for_crm(opportunity: Opportunity) -> None:
    problems = problems_for_crm(opportunity)
    if problems:
        raise ValidationFailed(problems)


def problems_for_partner_center(opportunity: Opportunity) -> list[str]:
    """Reasons a CRM opportunity cannot become (or update) a co-sell referral, each one actionable."""
    problems: list[str] = []
    if not opportunity.name:
        problems.append("Give the opportunity a name.")
    if not opportunity.customer_name:
        problems.append("Link the opportunity to a customer account with a name.")
    if not opportunity.solution_ids:
        problems.append("Add at least one co-sell solution id (for example SOL-12345-ABC) in Products.")
    country = opportunity.customer_address.country
    if not country or not _COUNTRY.match(country):
        shown = f"'{country}'" if country else "missing"
        problems.append(f"The customer account's country is {shown}; use a 2-letter ISO 3166 code such as US.")
    if not opportunity.currency:
        problems.append("Set the opportunity currency.")
    elif not _CURRENCY.match(opportunity.currency):
        problems.append(f"Currency '{opportunity.currency}' is not a 3-letter ISO 4217 code.")
    if opportunity.deal_value is None or opportunity.deal_value <= 0:
        problems.append("Set a deal value (estimated revenue) greater than zero.")
    if opportunity.help_code and not any(c.email for c in opportunity.customer_contacts):
        problems.append("Microsoft's help is requested: add a customer contact with an e-mail address.")
    problems.extend(services_cosell_problems(opportunity))
    for contact in opportunity.customer_contacts:
        if contact.email and not _EMAIL.match(contact.email):
            problems.append(f"Customer contact e-mail '{contact.email}' is not a valid address.")
    return problems
