"""Salesforce adapter over the REST API: tokens (``auth``), the REST layer (``api``), the record <-> opportunity
mapping (``mapping``, over ``mapping.toml``), accounts, contacts, contact roles and currencies (``customers``),
the mapping checked against the org's describe (``metadata``) and the :class:`~shared.ports.Crm`
implementation itself (``adapter``)."""

from .adapter import SalesforceConfig, SalesforceCrm

__all__ = ["SalesforceConfig", "SalesforceCrm"]
