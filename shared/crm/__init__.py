"""CRM adapters behind the :class:`shared.ports.Crm` port: one package per CRM (``shared.crm.dynamics``,
``shared.crm.salesforce``) and the field rules they share (``shared.crm.common``).

Nothing is imported here, so that importing this package stays cheap for the triggers that never talk to a CRM.
"""
