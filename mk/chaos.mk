# `make chaos`: a fault-injection run of the real app that checks exactly-once (issue 9). Included by the root Makefile.
#
#   make chaos  drives CHAOS_RECORDS records (default 200) through the real app, both directions, with the
#               emulators out of process injecting seeded network faults (CHAOS_SEED, default 1), several
#               workers (one killed mid-job), webhooks on and the timers firing; then checks duplicates, lost
#               updates, stuck records and poison. CRM=dynamics (default) or CRM=salesforce picks the CRM;
#               CHAOS_ARGS passes other options (python -m devtools.chaos --help). The last line is
#               "chaos: N records, duplicates=D, lost_updates=L, stuck=S, poisoned_transient=P"; exit 0 only
#               when all four are 0. `make chaos CHAOS_RECORDS=1000` is the full run.
CHAOS_RECORDS ?= 200
CHAOS_SEED ?= 1
CHAOS_ARGS ?=

.PHONY: chaos

chaos: $(VENV_STAMP) $(NODE_STAMP)
	$(PY) -m devtools.chaos --crm $(or $(CRM),dynamics) --records $(CHAOS_RECORDS) --seed $(CHAOS_SEED) $(CHAOS_ARGS)
