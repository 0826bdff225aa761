"""Salesforce adapter over the REST API: tokens (``auth``), the REST layer (``api``), the record <-> opportunity
mapping (``mapping``), accounts, contacts, contact roles and currencies (``customers``) and the
:class:`~shared.ports.Crm` implementation itself (``adapter``)."""

from .adapter import SalesforceCrm

__all__ = ["SalesforceCrm"]
