"""Dynamics 365 adapter over the Dataverse Web API: tokens (``auth``), row-level calls (``webapi``), the
row <-> opportunity mapping (``mapping``, over ``mapping.toml``), accounts, contacts and currencies
(``customers``), the mapping checked against the organisation's metadata (``metadata``) and the
:class:`~shared.ports.Crm` implementation itself (``adapter``)."""

from .adapter import DataverseConfig, DataverseCrm

__all__ = ["DataverseConfig", "DataverseCrm"]
