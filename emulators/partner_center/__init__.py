"""Partner Center Referrals and Webhooks API emulator: the emulator (``emulator``) and its parts: sample referrals
(``samples``), the JSON Patch and status rules (``rules``), OData queries (``odata``, ``query``), webhook
registration and signed deliveries (``registration``, ``dispatch``, ``pki``), injected faults (``faults``), the
control routes (``control``) and a webhook receiver for tests (``receiver``)."""

from .emulator import PartnerCenterEmulator

__all__ = ["PartnerCenterEmulator"]
