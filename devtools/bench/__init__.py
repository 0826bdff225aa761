"""``make bench``: what one record costs the real app, path by path, in API calls and Table Storage operations.

    python -m devtools.bench [--records 1000] [--crm dynamics|salesforce] [--latency-ms 100] [--workers 4]
                             [--sample 200] [--latency-samples 40] [--dataverse-limit 6000/300|off]
                             [--output bench.json]

What runs, each in a process of its own (:mod:`devtools.chaos.services`): Azurite, the Partner Center
emulator, the CRM's emulator, ``--workers`` copies of the real ``function_app.py`` under the local runner
(:mod:`devtools.chaos.worker`, with host.json's queue settings and the app's default timings) and proxies in
front of Azurite's Table and Queue endpoints (:mod:`devtools.bench.storage_proxy`). Every emulator adds
``--latency-ms`` to each API call (a ``latency`` rule of ``POST /_faults``); the Dataverse emulator enforces
the service protection limit on requests (6000 in any 300 s, answered 429 with ``Retry-After``). Partner
Center delivers signed webhooks to the first worker's route; the bench runs the CRM poll on that worker
itself (``POST /admin/functions/poll_crm``, as its timer would) so that each phase starts and ends cleanly;
while a measured poll runs, the queue proxy keeps workers from taking jobs, so a poll paging through many
records cannot read the writes of the jobs it has just enqueued.

What is counted, never by instrumenting the app: Partner Center calls (the emulator's counters of the
Referrals and Webhooks APIs), CRM calls (every HTTP request the CRM's emulator received, those refused with
429 included), Table Storage operations (requests through the proxy; the bench's own reads go past it),
jobs (the workers' ``sync_worker`` invocations, from their logs) and each worker's peak RSS (``VmHWM``).
A phase's cost is the difference of the counters before and after it, less, for each poll the bench ran in
it, what the final unchanged poll cost (the timer runs the poll anyway; the bench runs it more often than that
to see each phase end), divided by the records in the phase:

1. latencies, first, on a quiet system with webhooks delivered as raised: a seller creates
   ``--latency-samples`` flagged opportunities through the CRM's API, one every half second, while the poll
   runs every second; ``flag_to_referral`` is the referral's ``createdDateTime`` minus the moment the
   flagged opportunity was saved. Then Partner Center's portal changes their deal values at the same pace;
   ``webhook_to_crm`` is the time until the CRM's control API shows the value (read every 0.1 s);
2. ``crm_to_pc_create`` (all N): N flagged opportunities, every other one asking for Microsoft's help (a
   second referral), entered with latency and limit off (the seller's typing is not measured); one poll,
   every job done. Partner Center holds the webhooks this raises (``dispatchMode: hold``);
3. ``echo``: the held webhooks released and the poll run until a round brings nothing: the jobs our own
   writes caused, on both sides (measured after every other path too);
4. ``pc_to_crm_create`` (all N): N referrals shared by Microsoft, their held webhooks released at once;
5. ``pc_update`` and ``crm_update`` (min(N, ``--sample``) linked records of both origins): a deal value
   changed in the portal (its webhook released), then in the CRM by the seller (through its API, before the
   poll; not counted);
6. ``unchanged_poll_requests``: once the poll's overlap window (10 s here; production default 300 s) has
   passed the last change, the CRM requests of one more poll.

Then every record is looked for on both sides (``missing``) and chaos's checks run (:mod:`devtools.chaos.verify`):
``duplicates`` over everything, field-by-field agreement on the timed and updated sample. Results go to
``bench.json`` and a table with the goals, pass or fail; the exit status is non-zero only when a record is
missing or duplicated (2 when the run itself could not be carried out).
"""
