"""CRM adapters behind the :class:`shared.ports.Crm` port: one package per CRM (``shared.crm.dynamics``,
``shared.crm.salesforce``), each with its field mapping file, and the mapping's schema, loader and converters
they share (``shared.crm.mapping``).

Nothing is imported here, so that importing this package stays cheap for the triggers that never talk to a CRM.
"""
