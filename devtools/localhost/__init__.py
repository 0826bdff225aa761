"""The app on this machine without Azure: the local Functions host and the services it needs.

``run`` is ``make run`` (``func start`` or the local runner, plus whatever ``stack`` must start). The local
runner (``runner``) loads the app (``appload``) and serves its triggers (``http_host``, ``queue_listener``,
``timer_listener`` with ``shared.schedule``) under host.json (``hostconfig``) and local settings
(``settings_loader``). ``stack`` starts Azurite (``azurite``) and the emulators for endpoints the settings
leave unset; ``guard`` keeps child processes from outliving their parent.
"""
