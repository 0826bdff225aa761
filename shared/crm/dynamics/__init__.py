"""Dynamics 365 adapter over the Dataverse Web API: tokens (``auth``), row-level calls (``webapi``), the
row <-> opportunity mapping (``mapping``), accounts, contacts and currencies (``customers``) and the
:class:`~shared.ports.Crm` implementation itself (``adapter``)."""

from .adapter import DataverseCrm

__all__ = ["DataverseCrm"]
