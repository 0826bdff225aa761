"""Salesforce REST API emulator: the emulator (``emulator``) and its parts: objects and fields (``schema``), SOQL
(``soql``), the org's records (``store``), the REST resources (``rest``), sObject Collections
(``sobject_collections``), composite calls (``composite``), the token endpoint (``oauth``), injected faults
(``faults``) and the control routes (``control``)."""

from .emulator import SalesforceEmulator

__all__ = ["SalesforceEmulator"]
