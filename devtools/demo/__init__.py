"""``make demo``: the connector's main job end to end against the local stack, with a short report.

``run`` is the entry point and steps 1-4 (Partner Center -> CRM), ``steps_crm`` steps 5-8 (CRM -> Partner
Center), ``steps_lifecycle`` steps 9-11 (the shared deal accepted, accepted by Microsoft, won), ``observe``
what the demo sees from outside the app, and ``crm`` the CRM side behind one interface (``dataverse`` for
Dynamics 365, ``salesforce``).
"""
