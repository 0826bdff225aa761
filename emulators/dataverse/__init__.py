"""Dataverse (Dynamics 365) Web API emulator: the emulator (``emulator``) and its parts: tables and value rules
(``schema``), the query language (``odata``), rows and write rules (``store``), the Web API operations (``webapi``)
and the control routes (``control``)."""

from .emulator import DataverseEmulator

__all__ = ["DataverseEmulator"]
