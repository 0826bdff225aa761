"""CRM adapters behind the :class:`shared.ports.Crm` port.

Adapters are imported from their own modules (``shared.crm.dynamics``) so that importing this package
stays cheap for the triggers that never talk to a CRM.
"""
