"""Partner Center adapter: token providers (``auth``, ``login``, ``keyvault``, ``token_file``), the Referrals
API client (``client``, the :class:`shared.ports.PartnerCenter` of the services) and its request bodies
(``bodies``), webhook registration (``registration``) and webhook signature verification
(``signature``).

Nothing is imported here: callers import the module they need, so the webhook trigger does not pay for the
HTTP client and the client does not pay for X.509 verification.
"""
