"""``make chaos``: a fault-injection run of the real app that checks every record is synchronised exactly once.

The pieces:

* :mod:`devtools.chaos.services`  Azurite, the emulators and the app's workers as separate processes;
* :mod:`devtools.chaos.worker`    one worker process: the real ``function_app.py`` under the local runner;
* :mod:`devtools.chaos.actors`    the people: a seller in the CRM (its public API) and Partner Center's portal;
* :mod:`devtools.chaos.scenario`  the seeded plan of records and edits, and what each field should end as;
* :mod:`devtools.chaos.verify`    the final checks (duplicates, lost updates, stuck records, poison);
* :mod:`devtools.chaos.run`       the run itself and its command line (``python -m devtools.chaos``).
"""
